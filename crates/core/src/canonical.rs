//! Canonical JSON as TUF signs it, and a strict JSON reader.
//!
//! TUF signs the OLPC canonical form of the `signed` object. The reference implementation
//! (securesystemslib's `encode_canonical`, used by python-tuf) defines the bytes we must
//! reproduce exactly:
//!
//! * objects: keys sorted by Unicode code point, no whitespace;
//! * strings: only `\` and `"` are escaped (as `\\` and `\"`); everything else, control
//!   characters included, is written as raw UTF-8, with no Unicode normalisation;
//! * integers as decimal; `true`, `false`, `null`; floating-point numbers are refused.
//!
//! We do not use the `olpc-cjson` crate: it NFC-normalises strings and sorts keys by their
//! *serialised* bytes (closing quote included), so `{"a":…,"a!":…}` comes out in a different
//! order than securesystemslib writes it, and a signature made by python-tuf over such a
//! document would not verify. The tests at the bottom pin both differences.
//!
//! The reader refuses duplicate object keys: two parsers that disagree on which duplicate wins
//! is a classic signature-bypass (the signer sees one value, the verifier acts on another).

use std::fmt;

use serde::de::{self, Deserialize, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use crate::error::{Error, Result};

/// Serialises a JSON value to its canonical form.
///
/// Fails with [`Error::Malformed`] on floating-point numbers, which canonical JSON cannot hold.
pub fn to_canonical(value: &Value) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(256);
    write_value(value, &mut out)?;
    Ok(out)
}

/// Serialises any serde value to canonical JSON (through [`serde_json::Value`]).
pub fn to_canonical_from<T: serde::Serialize>(value: &T) -> Result<Vec<u8>> {
    let value = serde_json::to_value(value).map_err(|e| Error::malformed("canonical JSON", e))?;
    to_canonical(&value)
}

fn write_value(value: &Value, out: &mut Vec<u8>) -> Result<()> {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => write_number(n, out)?,
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(item, out)?;
            }
            out.push(b']');
        }
        Value::Object(map) => {
            // `String`'s `Ord` compares UTF-8 bytes, which orders exactly as code points do,
            // which is how Python sorts `str` keys. serde_json's map is a `BTreeMap` (already
            // in that order) unless a crate turns on its `preserve_order` feature.
            out.push(b'{');
            if map.keys().is_sorted() {
                write_members(map.iter(), out)?;
            } else {
                let mut entries: Vec<(&String, &Value)> = map.iter().collect();
                entries.sort_by(|a, b| a.0.cmp(b.0));
                write_members(entries.into_iter(), out)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

fn write_members<'a>(
    members: impl Iterator<Item = (&'a String, &'a Value)>,
    out: &mut Vec<u8>,
) -> Result<()> {
    for (i, (key, item)) in members.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_string(key, out);
        out.push(b':');
        write_value(item, out)?;
    }
    Ok(())
}

fn write_number(n: &Number, out: &mut Vec<u8>) -> Result<()> {
    use std::io::Write as _;
    // Writing into a `Vec` cannot fail; no temporary `String` per number.
    if let Some(i) = n.as_i64() {
        let _ = write!(out, "{i}");
    } else if let Some(u) = n.as_u64() {
        let _ = write!(out, "{u}");
    } else {
        return Err(Error::malformed(
            "canonical JSON",
            format!("floating-point number {n} cannot be canonicalised"),
        ));
    }
    Ok(())
}

fn write_string(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    // Copy runs of bytes that need no escape at once.
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, byte) in bytes.iter().enumerate() {
        let escaped: &[u8] = match byte {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            _ => continue,
        };
        out.extend_from_slice(bytes.get(start..i).unwrap_or_default());
        out.extend_from_slice(escaped);
        start = i + 1;
    }
    out.extend_from_slice(bytes.get(start..).unwrap_or_default());
    out.push(b'"');
}

/// Parses JSON bytes into a [`Value`], refusing duplicate object keys, trailing data and
/// floating-point numbers (none of which a TUF document may contain).
pub fn parse_strict(bytes: &[u8], what: &str) -> Result<Value> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = StrictValue::deserialize(&mut de)
        .map_err(|e| Error::malformed(what, e))?
        .0;
    de.end().map_err(|e| Error::malformed(what, e))?;
    Ok(value)
}

/// A [`Value`] whose deserialiser rejects duplicate keys and floats.
struct StrictValue(Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> std::result::Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> std::result::Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> std::result::Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> std::result::Result<Value, E> {
        // serde_json also lands here for integers beyond the 64-bit range. We refuse both
        // rather than lose precision (python-tuf would accept a 2**64 in `custom`).
        Err(E::custom(format_args!(
            "number {v} is not an integer within the 64-bit range (floats and larger integers are refused in signed metadata)"
        )))
    }
    fn visit_str<E>(self, v: &str) -> std::result::Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> std::result::Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> std::result::Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> std::result::Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Value, D::Error> {
        StrictValue::deserialize(d).map(|v| v.0)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(StrictValue(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let StrictValue(item) = map.next_value_seed(StrictSeed)?;
            match out.entry(key) {
                serde_json::map::Entry::Vacant(slot) => {
                    slot.insert(item);
                }
                serde_json::map::Entry::Occupied(slot) => {
                    return Err(de::Error::custom(format_args!(
                        "duplicate key {:?} in JSON object",
                        slot.key()
                    )));
                }
            }
        }
        Ok(Value::Object(out))
    }
}

struct StrictSeed;

impl<'de> DeserializeSeed<'de> for StrictSeed {
    type Value = StrictValue;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<StrictValue, D::Error> {
        StrictValue::deserialize(d)
    }
}

/// What [`canonicalize_sorted_envelope`] found: the canonical bytes of the top-level
/// `signed` object, its `_type` (if a string), and the whole document in canonical form.
pub(crate) struct SortedEnvelope {
    /// Canonical form of the whole document.
    pub document: Vec<u8>,
    /// Where `signed` is inside `document`.
    pub signed: std::ops::Range<usize>,
    /// Where `signatures` is inside `document`.
    pub signatures: std::ops::Range<usize>,
    /// `signed._type`, when present and a string.
    pub type_field: Option<String>,
}

/// The fast path of [`crate::metadata::Envelope::parse`]: writes the canonical form of a
/// document *while parsing it*, without building a [`Value`] tree, for documents whose object
/// keys are already in canonical order at every level — which is how python-tuf
/// (`sort_keys=True`), securesystemslib, tough and Rampart itself write metadata.
///
/// Returns `None` for anything else: keys out of order, and therefore also duplicate keys
/// (a duplicate is never *strictly* after its twin), floats, integers beyond 64 bits, invalid
/// JSON, trailing data, a top level that is not an object. The caller then takes the tree path
/// ([`parse_strict`] + [`to_canonical`]), which sorts what needs sorting and names the error,
/// so both paths accept and refuse exactly the same documents and produce the same bytes.
pub(crate) fn canonicalize_sorted_envelope(bytes: &[u8]) -> Option<SortedEnvelope> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let mut out = Vec::with_capacity(bytes.len());
    let mut found = Found::default();
    let seed = SortedWriter {
        out: &mut out,
        place: Place::Top,
        found: &mut found,
    };
    seed.deserialize(&mut de).ok()?;
    de.end().ok()?;
    Some(SortedEnvelope {
        document: out,
        signed: found.signed?,
        signatures: found.signatures?,
        type_field: found.type_field,
    })
}

#[derive(Default)]
struct Found {
    signed: Option<std::ops::Range<usize>>,
    signatures: Option<std::ops::Range<usize>>,
    type_field: Option<String>,
}

/// Where in the document a value sits: only two places matter.
#[derive(Clone, Copy, PartialEq)]
enum Place {
    Top,
    Signed,
    Inside,
}

struct SortedWriter<'o> {
    out: &'o mut Vec<u8>,
    place: Place,
    found: &'o mut Found,
}

impl<'de> DeserializeSeed<'de> for SortedWriter<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

/// An object key, borrowed from the input when it has no escapes.
pub(crate) struct Key<'de>(pub(crate) std::borrow::Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> std::result::Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> std::result::Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> std::result::Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Owned(v)))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

impl<'de> Visitor<'de> for SortedWriter<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> std::result::Result<(), E> {
        self.top_must_be_object()?;
        self.out
            .extend_from_slice(if v { b"true" } else { b"false" });
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> std::result::Result<(), E> {
        use std::io::Write as _;
        self.top_must_be_object()?;
        let _ = write!(self.out, "{v}");
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> std::result::Result<(), E> {
        use std::io::Write as _;
        self.top_must_be_object()?;
        let _ = write!(self.out, "{v}");
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, _v: f64) -> std::result::Result<(), E> {
        Err(E::custom("float or integer beyond 64 bits"))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<(), E> {
        self.top_must_be_object()?;
        write_string(v, self.out);
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> std::result::Result<(), E> {
        self.top_must_be_object()?;
        self.out.extend_from_slice(b"null");
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> std::result::Result<(), A::Error> {
        self.top_must_be_object()?;
        self.out.push(b'[');
        let mut first = true;
        loop {
            let mark = self.out.len();
            if !first {
                self.out.push(b',');
            }
            if seq.next_element_seed(self.child(Place::Inside))?.is_none() {
                self.out.truncate(mark);
                break;
            }
            first = false;
        }
        self.out.push(b']');
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> std::result::Result<(), A::Error> {
        self.out.push(b'{');
        let mut previous: Option<Key<'de>> = None;
        while let Some(key) = map.next_key::<Key<'de>>()? {
            // Strictly increasing by code point (= UTF-8 byte order): sorted, no duplicates.
            if previous.as_ref().is_some_and(|p| p.0 >= key.0) {
                return Err(de::Error::custom("keys not in canonical order"));
            }
            if previous.is_some() {
                self.out.push(b',');
            }
            write_string(&key.0, self.out);
            self.out.push(b':');
            let child = match (self.place, key.0.as_ref()) {
                (Place::Top, "signed") => Place::Signed,
                _ => Place::Inside,
            };
            let start = self.out.len();
            map.next_value_seed(self.child(child))?;
            let span = start..self.out.len();
            match (self.place, key.0.as_ref()) {
                (Place::Top, "signed") => self.found.signed = Some(span),
                (Place::Top, "signatures") => self.found.signatures = Some(span),
                (Place::Signed, "_type") => {
                    self.found.type_field = self.out.get(span).and_then(canonical_str)
                }
                _ => {}
            }
            previous = Some(key);
        }
        self.out.push(b'}');
        Ok(())
    }
}

impl SortedWriter<'_> {
    /// A writer for a value nested in this one, at `place`.
    fn child(&mut self, place: Place) -> SortedWriter<'_> {
        SortedWriter {
            out: &mut *self.out,
            place,
            found: &mut *self.found,
        }
    }

    fn top_must_be_object<E: de::Error>(&self) -> std::result::Result<(), E> {
        if self.place == Place::Top {
            return Err(E::custom("top level is not an object"));
        }
        Ok(())
    }
}

/// The text of a string as the canonical writer wrote it (`"…"`, with only `"` and `\`
/// escaped); `None` if `written` is not a string.
fn canonical_str(written: &[u8]) -> Option<String> {
    let inner = written.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
    let mut text = Vec::with_capacity(inner.len());
    let mut escaped = false;
    for &b in inner {
        if b == b'\\' && !escaped {
            escaped = true;
            continue;
        }
        escaped = false;
        text.push(b);
    }
    String::from_utf8(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn canon(v: Value) -> String {
        String::from_utf8(to_canonical(&v).unwrap()).unwrap()
    }

    #[test]
    fn sorts_keys_by_code_point_and_drops_whitespace() {
        assert_eq!(
            canon(json!({"b": 1, "a": [true, false, null], "B": "x"})),
            r#"{"B":"x","a":[true,false,null],"b":1}"#
        );
    }

    #[test]
    fn sorts_a_key_before_its_extensions_like_securesystemslib() {
        // olpc-cjson would put "a!" first (it compares `"a"` with `"a!"` byte-wise, quote
        // included); Python's sorted() puts the prefix first.
        assert_eq!(canon(json!({"a!": 1, "a": 2})), r#"{"a":2,"a!":1}"#);
    }

    #[test]
    fn escapes_only_quote_and_backslash() {
        assert_eq!(canon(json!("a\"b\\c\nd\u{1}")), "\"a\\\"b\\\\c\nd\u{1}\"");
    }

    #[test]
    fn does_not_normalise_unicode() {
        // "e" + COMBINING ACUTE ACCENT stays decomposed (NFC would make it U+00E9).
        assert_eq!(canon(json!("e\u{301}")), "\"e\u{301}\"");
    }

    #[test]
    fn writes_negative_and_large_integers() {
        assert_eq!(
            canon(json!([-5, u64::MAX, 0])),
            format!("[-5,{},0]", u64::MAX)
        );
    }

    #[test]
    fn refuses_floats() {
        assert!(to_canonical(&json!({"x": 1.5})).is_err());
        assert!(parse_strict(br#"{"x": 1.5}"#, "test").is_err());
    }

    #[test]
    fn strict_parse_rejects_duplicate_keys() {
        let err = parse_strict(br#"{"a": 1, "a": 2}"#, "test").unwrap_err();
        assert!(err.to_string().contains("duplicate key"), "{err}");
        let nested = parse_strict(br#"{"x": [{"k": 1, "k": 1}]}"#, "test");
        assert!(nested.is_err());
    }

    #[test]
    fn strict_parse_rejects_trailing_data_and_garbage() {
        assert!(parse_strict(br#"{"a": 1} {"#, "test").is_err());
        assert!(parse_strict(b"\xff\xfe", "test").is_err());
        assert!(parse_strict(b"", "test").is_err());
    }

    #[test]
    fn strict_parse_survives_deep_nesting_without_overflow() {
        let deep = "[".repeat(100_000);
        assert!(parse_strict(deep.as_bytes(), "test").is_err());
    }

    #[test]
    fn strict_parse_keeps_every_field() {
        let v = parse_strict(br#"{"z": {"y": [1, "two"]}, "a": null}"#, "test").unwrap();
        assert_eq!(v, json!({"z": {"y": [1, "two"]}, "a": null}));
    }
}
