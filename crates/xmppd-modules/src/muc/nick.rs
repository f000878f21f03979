//! Room nicknames after the PRECIS Nickname profile (RFC 8266), as far as it goes without
//! the full PRECIS tables: the mapping rules of §2.2 and the comparison of §2.4.

use unicode_normalization::UnicodeNormalization;

/// The nick to use for `requested` and whether it differs from what was asked (status 210),
/// or `None` when it cannot be a nickname. §2.2: non-ASCII spaces become ASCII spaces,
/// leading and trailing spaces go, inner runs collapse to one; NFKC (which also maps
/// fullwidth and halfwidth forms); no control characters; not empty; at most `max_chars`.
pub fn prepare(requested: &str, max_chars: usize) -> Option<(String, bool)> {
    let spaced: String = requested
        .chars()
        .map(|c| if c.is_whitespace() { ' ' } else { c })
        .collect();
    let nick = spaced
        .split(' ')
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
        .nfkc()
        .collect::<String>();
    if nick.is_empty()
        || nick.chars().count() > max_chars
        || nick
            .chars()
            .any(|c| c.is_control() || is_unassigned_or_private(c))
    {
        return None;
    }
    let modified = nick != requested;
    Some((nick, modified))
}

/// §2.4: two nicks are the same when their prepared forms match after case mapping.
pub fn key(nick: &str) -> String {
    nick.nfkc().flat_map(char::to_lowercase).collect()
}

/// Private-use and noncharacter code points, which the profile disallows.
fn is_unassigned_or_private(c: char) -> bool {
    let u = c as u32;
    (0xE000..=0xF8FF).contains(&u)
        || (0xF0000..).contains(&u)
        || (0xFDD0..=0xFDEF).contains(&u)
        || u & 0xFFFE == 0xFFFE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nicks_are_mapped_and_compared_as_rfc_8266_says() {
        assert_eq!(
            prepare("thirdwitch", 20),
            Some(("thirdwitch".into(), false))
        );
        assert_eq!(
            prepare("  third \u{3000} witch ", 20),
            Some(("third witch".into(), true))
        );
        // Fullwidth letters map to their ASCII forms.
        assert_eq!(prepare("\u{FF21}lice", 20), Some(("Alice".into(), true)));
        assert_eq!(key("Alice"), key("aLICE"));
        assert_eq!(key("\u{FF21}LICE"), key("alice"));
        assert_ne!(key("alice"), key("alice2"));
    }

    #[test]
    fn empty_long_and_control_nicks_are_refused() {
        assert_eq!(prepare("   ", 20), None);
        assert_eq!(prepare("a\u{7}b", 20), None);
        assert_eq!(prepare("\u{E000}", 20), None);
        assert_eq!(prepare(&"x".repeat(21), 20), None);
        assert!(prepare(&"x".repeat(20), 20).is_some());
    }
}
