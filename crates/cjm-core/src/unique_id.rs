//! The unambiguous, file-name-safe plugin id (`<category>.<name>`, each part escaped).
//!
//! # The rule
//!
//! A unique id is `escape(category) + "." + escape(name)`, where `escape` keeps the bytes
//! `A-Z a-z 0-9 -` as they are, writes every other byte of the UTF-8 text (including `_` and `.`)
//! as `_` followed by two lowercase hex digits, and writes the empty string as a lone `_`.
//!
//! Consequences:
//! - The id contains only `A-Z a-z 0-9 - _ .`, exactly one `.`, never starts with `.`, and is
//!   never `.` or `..`: it is safe as a file name on every platform and cannot traverse paths.
//! - It is injective: [`parse_unique_id`] recovers `(category, name)`, so two different pairs
//!   never share an id (the original's `category + "_" + name` made `("a_b", "c")` and
//!   `("a", "b_c")` collide).
//! - Typical ids stay readable: `("transcription", "whisper-large")` → `transcription.whisper-large`.
//!
//! Ids differ only by letter case when the inputs do; on a case-insensitive file system keep
//! names distinct beyond case.

/// The unique id of a plugin `name` in `category`. See the [module docs](self) for the rule.
pub fn unique_id(category: &str, name: &str) -> String {
    let mut out = String::with_capacity(category.len() + name.len() + 1);
    escape_into(category, &mut out);
    out.push('.');
    escape_into(name, &mut out);
    out
}

/// Recovers `(category, name)` from an id made by [`unique_id`]; `None` if `id` is not one.
pub fn parse_unique_id(id: &str) -> Option<(String, String)> {
    let (cat, name) = id.split_once('.')?;
    Some((unescape(cat)?, unescape(name)?))
}

fn escape_into(part: &str, out: &mut String) {
    if part.is_empty() {
        out.push('_');
        return;
    }
    for &b in part.as_bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' {
            out.push(b as char);
        } else {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.push('_');
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 0xf) as usize] as char);
        }
    }
}

fn unescape(part: &str) -> Option<String> {
    if part == "_" {
        return Some(String::new());
    }
    if part.is_empty() {
        return None;
    }
    let bytes = part.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'_' {
            let hex = part.get(i + 1..i + 3)?;
            if hex.bytes().any(|c| c.is_ascii_uppercase()) {
                return None;
            }
            let byte = u8::from_str_radix(hex, 16).ok()?;
            if byte.is_ascii_alphanumeric() || byte == b'-' {
                return None; // would have been written plainly: not a canonical id
            }
            out.push(byte);
            i += 3;
        } else if b.is_ascii_alphanumeric() || b == b'-' {
            out.push(b);
            i += 1;
        } else {
            return None;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readable_for_ordinary_names() {
        assert_eq!(
            unique_id("transcription", "whisper-large"),
            "transcription.whisper-large"
        );
    }

    #[test]
    fn the_originals_collision_does_not_happen() {
        let a = unique_id("a_b", "c");
        let b = unique_id("a", "b_c");
        assert_ne!(a, b);
        assert_eq!(a, "a_5fb.c");
        assert_eq!(b, "a.b_5fc");
        // Dots are escaped too, so the one separator stays unambiguous.
        assert_ne!(unique_id("a.b", "c"), unique_id("a", "b.c"));
        assert_ne!(unique_id("", "x"), unique_id("x", ""));
    }

    #[test]
    fn safe_as_a_file_name() {
        let hostile = [
            ("..", ".."),
            ("/etc", "passwd"),
            ("a\0b", "c\\d"),
            ("", ""),
            (".", "."),
            ("ünï", "名前"),
            ("C:", "con"),
        ];
        for (c, n) in hostile {
            let id = unique_id(c, n);
            assert!(
                id.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)),
                "{id:?}"
            );
            assert_eq!(id.matches('.').count(), 1, "{id:?}");
            assert!(!id.starts_with('.'), "{id:?}");
            assert_ne!(id, "..");
            assert_eq!(parse_unique_id(&id), Some((c.to_owned(), n.to_owned())));
        }
    }

    #[test]
    fn round_trip_is_injective_over_many_pairs() {
        let parts = ["", "_", "a", "a_b", "b_c", "a.b", "a-b", "_5f", "x y", "é"];
        let mut seen = std::collections::HashMap::new();
        for c in parts {
            for n in parts {
                let id = unique_id(c, n);
                assert_eq!(parse_unique_id(&id), Some((c.to_owned(), n.to_owned())));
                if let Some(prev) = seen.insert(id.clone(), (c, n)) {
                    panic!("{id} produced by {prev:?} and {:?}", (c, n));
                }
            }
        }
    }

    #[test]
    fn non_canonical_ids_are_rejected() {
        for bad in [
            "noseparator",
            ".x",
            "x.",
            "a_5F.b",
            "a_61.b",
            "a_zz.b",
            "a/b.c",
            "a_5.b",
        ] {
            assert_eq!(parse_unique_id(bad), None, "{bad}");
        }
    }
}
