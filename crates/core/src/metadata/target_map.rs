//! The `targets` object of a targets role: target path → [`TargetFile`].
//!
//! A repository's targets role can list tens of thousands of images while a vehicle looks up
//! a handful of them (one per ECU). Turning every entry into a [`TargetFile`] — a path, a
//! map of hashes, a `custom` tree — and dropping them all again cost more than the
//! signature and hash checks of the whole refresh (BENCHMARKS.md, refresh). So a map read from
//! a document keeps the signed text of the object and an index of its entries, checks every
//! entry's shape once (a length, at least one hash: what [`TargetFile`] requires, without
//! building it), and builds an entry only when it is looked up or iterated. A map built in
//! code (the repository's own, tests) is an ordinary sorted map; changing a map read from a
//! document first builds every entry.
//!
//! Both kinds behave as one `BTreeMap<String, TargetFile>`: the same order (paths sorted by
//! bytes, each once), equality by content, and the same JSON when serialised.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, OnceLock};

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::targets::TargetFile;
use crate::canonical::Key;

/// Target path → description, sorted by path.
#[derive(Clone, Default)]
pub struct TargetMap {
    /// Read from a document (entries built on first use); `built` is then empty.
    read: Option<Arc<Read>>,
    /// Built in code, or changed after reading.
    built: BTreeMap<String, TargetFile>,
}

/// A `targets` object as read: its text, and where each entry is in it.
struct Read {
    /// The object's JSON text.
    text: Box<RawValue>,
    /// Target paths (unescaped), one after another; [`Entry::key`] indexes into it.
    keys: String,
    /// One per target, sorted by path, no path twice.
    entries: Vec<Entry>,
    /// Each entry's [`TargetFile`], once built.
    built: Box<[OnceLock<Box<TargetFile>>]>,
}

/// Byte ranges of one entry: its path in [`Read::keys`], its value in [`Read::text`].
#[derive(Clone, Copy)]
struct Entry {
    key: (usize, usize),
    value: (usize, usize),
}

impl Read {
    fn key(&self, e: &Entry) -> &str {
        self.keys.get(e.key.0..e.key.1).unwrap_or_default()
    }

    /// Entry `i`, built on first use. `None` only if its text does not deserialise, which
    /// the shape check at reading rules out; a missing target fails closed.
    fn file(&self, i: usize) -> Option<&TargetFile> {
        let slot = self.built.get(i)?;
        if let Some(f) = slot.get() {
            return Some(f);
        }
        let e = self.entries.get(i)?;
        let text = self.text.get().get(e.value.0..e.value.1)?;
        let file: TargetFile = serde_json::from_str(text).ok()?;
        // Another thread may have built it first; either copy is the same.
        let _ = slot.set(Box::new(file));
        slot.get().map(|b| &**b)
    }

    fn find(&self, path: &str) -> Option<usize> {
        self.entries
            .binary_search_by(|e| self.key(e).cmp(path))
            .ok()
    }

    fn iter(&self) -> Iter<'_> {
        Iter(IterRepr::Read {
            read: self,
            next: 0,
        })
    }

    /// Indexes an object's text: every entry's path and value, each value's shape checked.
    fn index(text: Box<RawValue>) -> Result<Self, String> {
        let mut index = Indexer {
            base: text.get(),
            keys: String::new(),
            entries: Vec::new(),
        };
        let mut de = serde_json::Deserializer::from_str(text.get());
        de.deserialize_map(&mut index).map_err(|e| e.to_string())?;
        let Indexer {
            keys, mut entries, ..
        } = index;
        let key = |e: &Entry| keys.get(e.key.0..e.key.1).unwrap_or_default();
        if !entries.windows(2).all(|w| match w {
            [a, b] => key(a) < key(b),
            _ => true,
        }) {
            entries.sort_by(|a, b| key(a).cmp(key(b)));
            if let Some(w) = entries.windows(2).find(|w| match w {
                [a, b] => key(a) == key(b),
                _ => false,
            }) {
                let name = w.first().map(key).unwrap_or_default();
                return Err(format!("target {name:?} is listed twice"));
            }
        }
        let built = entries.iter().map(|_| OnceLock::new()).collect();
        Ok(Read {
            text,
            keys,
            entries,
            built,
        })
    }
}

/// Walks the object once: each path unescaped into `keys`, each value borrowed as raw text
/// (its position found from the borrowed slice) and its shape checked.
struct Indexer<'a> {
    base: &'a str,
    keys: String,
    entries: Vec<Entry>,
}

impl<'de> Visitor<'de> for &mut Indexer<'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object of target paths")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(Key(path)) = map.next_key::<Key<'de>>()? {
            let value: &'de RawValue = map.next_value()?;
            let raw = value.get();
            let start = (raw.as_ptr() as usize).wrapping_sub(self.base.as_ptr() as usize);
            let end = start.wrapping_add(raw.len());
            // The slice is borrowed from `base`; anything else is a bug, refused rather than
            // read from the wrong place.
            if self
                .base
                .get(start..end)
                .is_none_or(|s| !std::ptr::eq(s.as_ptr(), raw.as_ptr()))
            {
                return Err(de::Error::custom("target entry not within the document"));
            }
            serde_json::from_str::<Shape>(raw)
                .map_err(|e| de::Error::custom(format!("target {path:?}: {e}")))?;
            let key_start = self.keys.len();
            self.keys.push_str(&path);
            self.entries.push(Entry {
                key: (key_start, self.keys.len()),
                value: (start, end),
            });
        }
        Ok(())
    }
}

/// What deserialising a [`TargetFile`] requires of an entry, checked without building one:
/// an object (not an array) with one `length` (an unsigned integer) and one `hashes` (a map of
/// strings, at least one); `custom` and any other field may hold any JSON, kept verbatim by
/// [`TargetFile`].
struct Shape;

impl<'de> Deserialize<'de> for Shape {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Shape;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a target description")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Shape, A::Error> {
                let (mut length, mut hashes, mut custom) = (false, false, false);
                while let Some(Key(field)) = map.next_key::<Key<'de>>()? {
                    let seen = match field.as_ref() {
                        "length" => {
                            map.next_value::<u64>()?;
                            std::mem::replace(&mut length, true)
                        }
                        "hashes" => {
                            map.next_value::<HashesShape>()?;
                            std::mem::replace(&mut hashes, true)
                        }
                        "custom" => {
                            map.next_value::<IgnoredAny>()?;
                            std::mem::replace(&mut custom, true)
                        }
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                            false
                        }
                    };
                    if seen {
                        return Err(de::Error::custom(format!("duplicate field `{field}`")));
                    }
                }
                if !length {
                    return Err(de::Error::missing_field("length"));
                }
                if !hashes {
                    return Err(de::Error::missing_field("hashes"));
                }
                Ok(Shape)
            }
        }
        d.deserialize_map(V)
    }
}

struct HashesShape;

impl<'de> Deserialize<'de> for HashesShape {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = HashesShape;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of hash algorithm to hex digest")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<HashesShape, A::Error> {
                let mut n = 0usize;
                while map.next_entry::<StrShape, StrShape>()?.is_some() {
                    n += 1;
                }
                if n == 0 {
                    return Err(de::Error::custom("no hashes"));
                }
                Ok(HashesShape)
            }
        }
        d.deserialize_map(V)
    }
}

/// A string, not kept.
struct StrShape;

impl<'de> Deserialize<'de> for StrShape {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = StrShape;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E>(self, _: &str) -> Result<StrShape, E> {
                Ok(StrShape)
            }
        }
        d.deserialize_str(V)
    }
}

impl TargetMap {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of targets.
    pub fn len(&self) -> usize {
        match &self.read {
            None => self.built.len(),
            Some(r) => r.entries.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The description of `path`, built on first use for a map read from a document.
    pub fn get(&self, path: &str) -> Option<&TargetFile> {
        match &self.read {
            None => self.built.get(path),
            Some(r) => r.file(r.find(path)?),
        }
    }

    /// Whether `path` is listed.
    pub fn contains_key(&self, path: &str) -> bool {
        match &self.read {
            None => self.built.contains_key(path),
            Some(r) => r.find(path).is_some(),
        }
    }

    /// Targets in path order.
    pub fn iter(&self) -> Iter<'_> {
        match &self.read {
            None => Iter(IterRepr::Built(self.built.iter())),
            Some(r) => r.iter(),
        }
    }

    /// Paths in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.iter().map(|(k, _)| k)
    }

    /// Descriptions in path order.
    pub fn values(&self) -> impl Iterator<Item = &TargetFile> {
        self.iter().map(|(_, v)| v)
    }

    /// The map as a built one, to change it (a map read from a document builds every entry).
    pub fn as_built_mut(&mut self) -> &mut BTreeMap<String, TargetFile> {
        if let Some(r) = self.read.take() {
            self.built = r.iter().map(|(k, v)| (k.to_owned(), v.clone())).collect();
        }
        &mut self.built
    }

    /// Adds or replaces a target; the previous description, if any.
    pub fn insert(&mut self, path: String, file: TargetFile) -> Option<TargetFile> {
        self.as_built_mut().insert(path, file)
    }

    /// The description of `path`, to change it.
    pub fn get_mut(&mut self, path: &str) -> Option<&mut TargetFile> {
        self.as_built_mut().get_mut(path)
    }

    /// Removes every target.
    pub fn clear(&mut self) {
        self.read = None;
        self.built.clear();
    }

    /// Removes a target.
    pub fn remove(&mut self, path: &str) -> Option<TargetFile> {
        self.as_built_mut().remove(path)
    }

    /// Targets in path order, to change them.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&String, &mut TargetFile)> {
        self.as_built_mut().iter_mut()
    }

    /// Descriptions in path order, to change them.
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut TargetFile> {
        self.as_built_mut().values_mut()
    }

    /// Whether entries are built only when used (a map read from a document).
    pub fn is_lazy(&self) -> bool {
        self.read.is_some()
    }

    /// The first target without any hash, if built in code (read maps were checked when
    /// read).
    pub(crate) fn first_without_hashes(&self) -> Option<&str> {
        self.built
            .iter()
            .find(|(_, t)| t.hashes.is_empty())
            .map(|(k, _)| k.as_str())
    }
}

/// Iterator over `(path, description)` in path order.
pub struct Iter<'a>(IterRepr<'a>);

enum IterRepr<'a> {
    Built(std::collections::btree_map::Iter<'a, String, TargetFile>),
    Read { read: &'a Read, next: usize },
}

impl<'a> Iterator for Iter<'a> {
    type Item = (&'a str, &'a TargetFile);
    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.0 {
            IterRepr::Built(it) => it.next().map(|(k, v)| (k.as_str(), v)),
            IterRepr::Read { read, next } => {
                let read: &'a Read = read;
                while let Some(e) = read.entries.get(*next) {
                    let i = *next;
                    *next += 1;
                    if let Some(f) = read.file(i) {
                        return Some((read.key(e), f));
                    }
                }
                None
            }
        }
    }
}

impl<'a> IntoIterator for &'a TargetMap {
    type Item = (&'a str, &'a TargetFile);
    type IntoIter = Iter<'a>;
    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

impl From<BTreeMap<String, TargetFile>> for TargetMap {
    fn from(m: BTreeMap<String, TargetFile>) -> Self {
        TargetMap {
            read: None,
            built: m,
        }
    }
}

impl FromIterator<(String, TargetFile)> for TargetMap {
    fn from_iter<I: IntoIterator<Item = (String, TargetFile)>>(iter: I) -> Self {
        Self::from(iter.into_iter().collect::<BTreeMap<_, _>>())
    }
}

impl PartialEq for TargetMap {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl fmt::Debug for TargetMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl Serialize for TargetMap {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.len()))?;
        for (k, v) in self {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for TargetMap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = Box::<RawValue>::deserialize(d)?;
        let read = Read::index(text).map_err(de::Error::custom)?;
        Ok(TargetMap {
            read: Some(Arc::new(read)),
            built: BTreeMap::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn file(n: u64) -> TargetFile {
        TargetFile {
            length: n,
            hashes: BTreeMap::from([("sha256".to_owned(), format!("{n:064x}"))]),
            custom: Some(json!({ "hardwareIds": ["hw"], "n": n })),
            unrecognized: BTreeMap::new(),
        }
    }

    fn built(names: &[&str]) -> TargetMap {
        names
            .iter()
            .enumerate()
            .map(|(i, n)| ((*n).to_owned(), file(i as u64)))
            .collect()
    }

    #[test]
    fn a_read_map_is_the_built_one_and_serialises_the_same() {
        let b = built(&["a/b.bin", "é.bin", "z", "\"q\\uote\".bin", "\u{1}ctl"]);
        let text = serde_json::to_string(&b).unwrap();
        let r: TargetMap = serde_json::from_str(&text).unwrap();
        assert!(r.is_lazy());
        assert_eq!(r, b);
        assert_eq!(serde_json::to_string(&r).unwrap(), text);
        assert_eq!(r.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
        for (k, v) in &b {
            assert_eq!(r.get(k), Some(v), "{k}");
            assert!(r.contains_key(k));
        }
        assert_eq!(r.get("missing"), None);
        assert!(!r.contains_key("missing"));
    }

    #[test]
    fn entries_are_built_only_when_used() {
        let r: TargetMap =
            serde_json::from_str(&serde_json::to_string(&built(&["a", "b", "c"])).unwrap())
                .unwrap();
        let read = r.read.as_ref().unwrap();
        assert_eq!(read.built.iter().filter(|b| b.get().is_some()).count(), 0);
        r.get("b").unwrap();
        assert_eq!(read.built.iter().filter(|b| b.get().is_some()).count(), 1);
    }

    #[test]
    fn read_from_a_tree_and_out_of_order_text() {
        let v = json!({ "b": file(2), "a": file(1) });
        let from_tree = TargetMap::deserialize(&v).unwrap();
        assert_eq!(from_tree.keys().collect::<Vec<_>>(), ["a", "b"]);
        let unsorted = format!(
            r#"{{"b":{},"a":{}}}"#,
            serde_json::to_string(&file(2)).unwrap(),
            serde_json::to_string(&file(1)).unwrap()
        );
        let r: TargetMap = serde_json::from_str(&unsorted).unwrap();
        assert_eq!(r, from_tree);
        assert_eq!(r.get("a"), Some(&file(1)));
    }

    #[test]
    fn every_entry_is_checked_when_read() {
        let good = serde_json::to_string(&file(1)).unwrap();
        for (bad, why) in [
            (r#"{"length":1,"hashes":{}}"#.to_owned(), "no hashes"),
            (
                r#"{"length":-1,"hashes":{"sha256":"00"}}"#.to_owned(),
                "invalid value",
            ),
            (
                r#"{"hashes":{"sha256":"00"}}"#.to_owned(),
                "missing field `length`",
            ),
            (
                r#"{"length":1,"hashes":{"sha256":1}}"#.to_owned(),
                "invalid type",
            ),
            (
                r#"{"length":1,"length":2,"hashes":{"sha256":"00"}}"#.to_owned(),
                "duplicate field",
            ),
            (r#"[]"#.to_owned(), "invalid type"),
        ] {
            let text = format!(r#"{{"a":{good},"b":{bad},"c":{good}}}"#);
            let e = serde_json::from_str::<TargetMap>(&text)
                .unwrap_err()
                .to_string();
            assert!(e.contains("target \"b\"") && e.contains(why), "{bad}: {e}");
        }
        let twice = format!(r#"{{"b":{good},"a":{good},"b":{good}}}"#);
        let e = serde_json::from_str::<TargetMap>(&twice)
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"b\" is listed twice"), "{e}");
        assert!(serde_json::from_str::<TargetMap>("[]").is_err());
    }

    #[test]
    fn changing_a_read_map_builds_it() {
        let mut r: TargetMap =
            serde_json::from_str(&serde_json::to_string(&built(&["a", "b"])).unwrap()).unwrap();
        r.get_mut("a").unwrap().length = 99;
        assert!(!r.is_lazy());
        r.insert("c".into(), file(3));
        assert_eq!(r.remove("b"), Some(file(1)));
        assert_eq!(r.keys().collect::<Vec<_>>(), ["a", "c"]);
        assert_eq!(r.get("a").map(|f| f.length), Some(99));
    }
}
