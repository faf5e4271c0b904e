//! Offline bundles (issue 18): what a workshop laptop or a USB stick carries to a vehicle out
//! of coverage — the director's metadata signed for that vehicle, the image repository's
//! metadata and the images — as one archive whose places mirror the server's URLs, so the
//! primary verifies it exactly as it verifies the network: nothing in it is trusted for
//! being in the file. The rules here are what the file itself may hold: which names, how
//! deep, how large. Every name is checked before anything is written; one bad entry refuses
//! the whole bundle.
//!
//! ```text
//! bundle.json                                  what it is for (format, VINs, expiry), for people
//! director/VIN/metadata/N.root.json            the director's root chain
//! director/VIN/metadata/timestamp.json         … and its documents signed for VIN
//! director/VIN/metadata/V.snapshot.json
//! director/VIN/metadata/V.targets.json
//! image/metadata/FILE                          the image repository's metadata
//! image/targets/PATH                           the images (or their per-ECU ciphertext)
//! ```

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The format named in `bundle.json`.
pub const FORMAT: &str = "rampart-offline-bundle/1";

/// The name of the description.
pub const DESCRIPTION: &str = "bundle.json";

/// Most path segments an entry may have.
pub const MAX_DEPTH: usize = 16;

/// Longest entry name.
pub const MAX_NAME: usize = 1024;

/// What a bundle says of itself (for people and logs; no decision rests on it — the signed
/// metadata inside decides).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Description {
    /// [`FORMAT`].
    pub format: String,
    /// The vehicles it carries director metadata for.
    pub vins: Vec<String>,
    /// When it was made (RFC 3339).
    pub created: String,
    /// When its first signed document expires (RFC 3339): the bundle is useless after.
    pub expires: String,
    /// Image files it carries.
    pub images: u64,
    /// Bytes of those images.
    pub image_bytes: u64,
}

/// Where an entry goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// `bundle.json`.
    Description,
    /// A director metadata file of one vehicle.
    Director {
        /// The VIN.
        vin: String,
        /// The file name.
        file: String,
    },
    /// An image repository metadata file.
    ImageMetadata {
        /// The file name.
        file: String,
    },
    /// An image (or its ciphertext), by target path.
    Image {
        /// The path under `image/targets/`.
        path: String,
    },
}

fn refuse(name: &str, reason: impl Into<String>) -> Error {
    Error::BundleEntry {
        name: name.to_owned(),
        reason: reason.into(),
    }
}

/// A file name of metadata: letters, digits, `.`, `-`, `_`; not `.` or `..`.
fn metadata_file(name: &str, file: &str) -> Result<String> {
    if file.is_empty()
        || file == "."
        || file == ".."
        || !file
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    {
        return Err(refuse(name, "not a metadata file name"));
    }
    Ok(file.to_owned())
}

/// Decides where the entry `name` goes, or refuses it (path traversal, absolute paths,
/// backslashes, control characters, empty or dot segments, unknown places, too deep or long).
pub fn check_entry(name: &str) -> Result<Entry> {
    if name.len() > MAX_NAME {
        return Err(refuse(name, format!("longer than {MAX_NAME} bytes")));
    }
    if name.starts_with('/') {
        return Err(refuse(name, "an absolute path"));
    }
    if name.chars().any(|c| c.is_control() || c == '\\') {
        return Err(refuse(name, "a control character or a backslash"));
    }
    let parts: Vec<&str> = name.split('/').collect();
    if parts.len() > MAX_DEPTH {
        return Err(refuse(name, format!("deeper than {MAX_DEPTH} levels")));
    }
    if let Some(bad) = parts
        .iter()
        .find(|p| p.is_empty() || **p == "." || **p == "..")
    {
        return Err(refuse(
            name,
            if *bad == ".." {
                "a path traversal (..)"
            } else {
                "an empty or `.` segment"
            },
        ));
    }
    match parts.as_slice() {
        [d] if *d == DESCRIPTION => Ok(Entry::Description),
        ["director", vin, "metadata", file] => {
            if vin.is_empty() || !vin.chars().all(|c| c.is_ascii_alphanumeric()) {
                return Err(refuse(name, "not a VIN"));
            }
            Ok(Entry::Director {
                vin: (*vin).to_owned(),
                file: metadata_file(name, file)?,
            })
        }
        ["image", "metadata", file] => Ok(Entry::ImageMetadata {
            file: metadata_file(name, file)?,
        }),
        ["image", "targets", rest @ ..] if !rest.is_empty() => Ok(Entry::Image {
            path: rest.join("/"),
        }),
        _ => Err(refuse(name, "not a place a bundle holds files")),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_places_of_a_bundle_are_accepted() {
        assert_eq!(check_entry("bundle.json").unwrap(), Entry::Description);
        assert_eq!(
            check_entry("director/WVW00000000000001/metadata/2.root.json").unwrap(),
            Entry::Director {
                vin: "WVW00000000000001".into(),
                file: "2.root.json".into()
            }
        );
        assert!(matches!(
            check_entry("image/metadata/3.acme.json").unwrap(),
            Entry::ImageMetadata { .. }
        ));
        assert_eq!(
            check_entry("image/targets/ivi/abc.nav-3.1.bin.enc").unwrap(),
            Entry::Image {
                path: "ivi/abc.nav-3.1.bin.enc".into()
            }
        );
    }

    #[test]
    fn traversal_and_strange_names_are_refused() {
        for name in [
            "../etc/passwd",
            "image/targets/../../etc/passwd",
            "image/targets/ivi/../../../x",
            "/etc/passwd",
            "image/targets//x",
            "image/targets/./x",
            "image/targets/a\\..\\b",
            "image/targets/a\nb",
            "director/../metadata/x.json",
            "director/WVW1/metadata/../x",
            "director/WVW 1/metadata/x.json",
            "image/metadata/sub/x.json",
            "image/targets",
            "other/file",
            "",
        ] {
            let err = check_entry(name).unwrap_err();
            assert_eq!(err.rule(), crate::rule::Rule::BundleEntry, "{name:?}");
        }
        let deep = format!("image/targets/{}", vec!["d"; 20].join("/"));
        assert!(check_entry(&deep).is_err());
    }
}
