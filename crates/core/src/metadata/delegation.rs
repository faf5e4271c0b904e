//! Which delegated role may sign for which target path (TUF 4.5, 5.6.7).

use super::SuccinctRoles;
use crate::hash;

/// Whether a delegation with these `paths` / `path_hash_prefixes` covers `target_path`.
///
/// Path patterns follow python-tuf: pattern and path must have the same number of
/// `/`-separated parts, and each part matches shell-style (`*`, `?`, `[seq]`, `[!seq]`), so
/// `*` never crosses a `/`.
pub fn is_delegated_path(
    paths: Option<&[String]>,
    path_hash_prefixes: Option<&[String]>,
    target_path: &str,
) -> bool {
    if let Some(patterns) = paths {
        return patterns.iter().any(|p| path_matches(p, target_path));
    }
    if let Some(prefixes) = path_hash_prefixes {
        let digest = hex::encode(hash::sha256(target_path.as_bytes()));
        return prefixes.iter().any(|p| digest.starts_with(p.as_str()));
    }
    false
}

/// The hash-bin role that holds `target_path` (TAP 15).
pub fn succinct_role_for(roles: &SuccinctRoles, target_path: &str) -> String {
    let digest = hash::sha256(target_path.as_bytes());
    let first = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]);
    let bits = roles.bit_length.clamp(1, 32);
    let bin = u64::from(first) >> (32 - bits);
    let width = bits.div_ceil(4) as usize;
    format!("{}-{:0width$x}", roles.name_prefix, bin, width = width)
}

fn path_matches(pattern: &str, path: &str) -> bool {
    let pattern_parts: Vec<&str> = pattern.split('/').collect();
    let path_parts: Vec<&str> = path.split('/').collect();
    pattern_parts.len() == path_parts.len()
        && pattern_parts.iter().zip(&path_parts).all(|(p, s)| {
            glob_part(
                &p.chars().collect::<Vec<_>>(),
                &s.chars().collect::<Vec<_>>(),
            )
        })
}

/// fnmatch on one path part, iterative with single-star backtracking (linear-ish, no
/// exponential blow-up on hostile patterns).
fn glob_part(pattern: &[char], text: &[char]) -> bool {
    let (mut p, mut t) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        let here = text.get(t).copied();
        match pattern.get(p).copied() {
            Some('*') => {
                star = Some((p, t));
                p += 1;
                continue;
            }
            Some('?') => {
                p += 1;
                t += 1;
                continue;
            }
            Some('[') => match class_match(pattern, p) {
                Some((member, next)) if here.is_some_and(&member) => {
                    p = next;
                    t += 1;
                    continue;
                }
                Some(_) => {}
                // An unclosed '[' is a literal, as in fnmatch.
                None if here == Some('[') => {
                    p += 1;
                    t += 1;
                    continue;
                }
                None => {}
            },
            Some(c) if Some(c) == here => {
                p += 1;
                t += 1;
                continue;
            }
            _ => {}
        }
        match star {
            Some((sp, st)) => {
                p = sp + 1;
                t = st + 1;
                star = Some((sp, st + 1));
            }
            None => return false,
        }
    }
    pattern
        .get(p..)
        .is_some_and(|rest| rest.iter().all(|&c| c == '*'))
}

/// Parses the `[...]` class starting at `pattern[start]`: a predicate and the index after `]`.
#[allow(clippy::type_complexity)]
fn class_match(pattern: &[char], start: usize) -> Option<(Box<dyn Fn(char) -> bool + '_>, usize)> {
    let mut i = start + 1;
    let negate = matches!(pattern.get(i), Some('!'));
    if negate {
        i += 1;
    }
    let body_start = i;
    // A ']' right after '[' or '[!' is a literal member.
    if pattern.get(i) == Some(&']') {
        i += 1;
    }
    while pattern.get(i).is_some_and(|&c| c != ']') {
        i += 1;
    }
    pattern.get(i)?; // unclosed
    let body = pattern.get(body_start..i)?;
    let pred = move |c: char| {
        let mut j = 0;
        let mut hit = false;
        while let Some(&lo) = body.get(j) {
            if body.get(j + 1) == Some(&'-') && body.get(j + 2).is_some() {
                let hi = body.get(j + 2).copied().unwrap_or(lo);
                hit |= lo <= c && c <= hi;
                j += 3;
            } else {
                hit |= lo == c;
                j += 1;
            }
        }
        hit != negate
    };
    Some((Box::new(pred), i + 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn m(p: &str, s: &str) -> bool {
        path_matches(p, s)
    }

    #[test]
    fn star_does_not_cross_directories() {
        assert!(m("firmware/*", "firmware/ecu.bin"));
        assert!(!m("firmware/*", "firmware/a/ecu.bin"));
        assert!(!m("*", "a/b"));
        assert!(m("*/*.bin", "a/b.bin"));
        assert!(m("*", ""));
    }

    #[test]
    fn question_mark_and_classes_match_one_character() {
        assert!(m("file?.txt", "file1.txt"));
        assert!(!m("file?.txt", "file12.txt"));
        assert!(m("v[0-9].bin", "v7.bin"));
        assert!(!m("v[!0-9].bin", "v7.bin"));
        assert!(m("v[!0-9].bin", "vx.bin"));
        assert!(m("a[]]b", "a]b"));
        assert!(m("a[b", "a[b"));
    }

    #[test]
    fn stars_backtrack() {
        assert!(m("*a*b*c", "xxaxxbxxc"));
        assert!(!m("*a*b*c", "xxaxxcxxb"));
        assert!(m("a*", "a"));
        // A hostile pattern must not blow up.
        assert!(!m(
            &"*a".repeat(200),
            &"a".repeat(5000).replace("aaaa", "aab")
        ));
        assert!(!m("*a*a*a*a*a*a*a*c", &"a".repeat(5000)));
    }

    #[test]
    fn hash_prefixes_match_sha256_of_the_path() {
        let digest = hex::encode(hash::sha256(b"images/ecu.bin"));
        let prefix = vec![digest[..2].to_string()];
        assert!(is_delegated_path(None, Some(&prefix), "images/ecu.bin"));
        let other = vec![if &digest[..2] == "00" {
            "01".into()
        } else {
            "00".into()
        }];
        assert!(!is_delegated_path(None, Some(&other), "images/ecu.bin"));
        assert!(!is_delegated_path(None, None, "images/ecu.bin"));
    }

    #[test]
    fn succinct_bins_follow_the_first_hash_bits() {
        let roles = SuccinctRoles {
            keyids: vec![],
            threshold: 1,
            bit_length: 8,
            name_prefix: "bin".into(),
            unrecognized: BTreeMap::new(),
        };
        let digest = hash::sha256(b"t.txt");
        assert_eq!(
            succinct_role_for(&roles, "t.txt"),
            format!("bin-{:02x}", digest[0])
        );
        assert!(roles.is_bin(&succinct_role_for(&roles, "t.txt")));
        assert!(!roles.is_bin("bin-100"));
        assert!(!roles.is_bin("other-00"));
    }
}
