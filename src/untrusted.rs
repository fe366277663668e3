//! Text from parties the gate distrusts (registries, token services, RegistryX's REST API, anything a
//! redirect leads to), made safe to show: bounded, stripped of what could read as the tool's own words,
//! and never quoted whole.
//!
//! A refusal is shown to whoever created the pod, kept in caches, logged and written into Events. A
//! registry that answers with megabytes, with JSON whose parse error quotes a string, or with a bidi
//! override must reach none of those with more than a short, marked excerpt of its *structured* error.
//! Every path from foreign bytes to a message goes through this module, and the admission response
//! bounds what it sends once more ([`bound`]), so that a path missed here still cannot grow a response.

use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

/// The most characters of a registry's own error message shown in a refusal.
pub const EXCERPT_CHARS: usize = 200;

/// `text` with every control and format character (C0/C1 controls, bidi overrides and isolates,
/// zero-width joiners, the BOM, tag characters) and every line or paragraph separator removed, runs of
/// white space folded to one space, and at most `max_chars` characters kept (an ellipsis marks a cut).
pub fn excerpt(text: &str, max_chars: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max_chars * 4));
    let mut kept = 0;
    let mut space = false;
    for c in text.chars() {
        if c.is_whitespace() {
            space = !out.is_empty();
            continue;
        }
        if is_hidden(c) {
            continue;
        }
        if kept >= max_chars {
            out.push('…');
            return out;
        }
        if space {
            out.push(' ');
            kept += 1;
            space = false;
        }
        out.push(c);
        kept += 1;
    }
    out
}

/// A character that changes how the text around it is shown, or is not shown at all.
fn is_hidden(c: char) -> bool {
    matches!(
        c.general_category(),
        GeneralCategory::Control
            | GeneralCategory::Format
            | GeneralCategory::LineSeparator
            | GeneralCategory::ParagraphSeparator
            | GeneralCategory::PrivateUse
            | GeneralCategory::Surrogate
            | GeneralCategory::Unassigned
    )
}

/// A registry's own words (the message of its structured error), marked as such so that a reader can
/// tell them from the tool's: `the registry says "…"`.
pub fn their_words(speaker: &str, text: &str) -> String {
    let text = excerpt(text, EXCERPT_CHARS);
    if text.is_empty() {
        format!("{speaker} gave no message")
    } else {
        format!("{speaker} says \"{}\"", text.replace('"', "'"))
    }
}

/// A short foreign value (a media type, a field of a signed payload, a certificate's subject) quoted in
/// a message: at most [`QUOTE_CHARS`] characters, cleaned as [`excerpt`], its own quotes made single so
/// that it cannot close the quote and continue as the tool's words.
pub fn quote(text: &str) -> String {
    format!("\"{}\"", excerpt(text, QUOTE_CHARS).replace('"', "'"))
}

/// The most characters of a foreign value [`quote`] shows.
pub const QUOTE_CHARS: usize = 100;

/// At most `max` items of a foreign list, then how many more there were.
pub fn first_few(items: impl IntoIterator<Item = String>, max: usize) -> String {
    let mut shown = Vec::new();
    let mut more = 0usize;
    for item in items {
        if shown.len() < max {
            shown.push(item);
        } else {
            more += 1;
        }
    }
    let mut text = shown.join(", ");
    if more > 0 {
        text.push_str(&format!(" and {more} more"));
    }
    text
}

/// Why foreign bytes are not the JSON they should be, without a word of their content: serde's messages
/// quote the strings and field names they met (`invalid type: string "<3.5 MB>"`), which would make a
/// refusal carry whatever a registry, or the internal service a redirect led to, put in its answer.
pub fn json_error(error: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let what = match error.classify() {
        Category::Io => "could not be read",
        Category::Syntax => "is not JSON",
        Category::Data => "is JSON of another shape",
        Category::Eof => "ends before the JSON does",
    };
    format!(
        "{what} (at line {}, column {})",
        error.line(),
        error.column()
    )
}

/// `text` cut to at most `max_bytes` bytes on a character boundary, with a note of how much was left
/// out: the last bound on what one message may carry, whatever built it.
pub fn bound(text: &str, max_bytes: usize) -> String {
    let clean: String = text
        .chars()
        .filter(|c| *c == '\n' || !is_hidden(*c))
        .collect();
    if clean.len() <= max_bytes {
        return clean;
    }
    // The note takes at most 40 bytes (a 20-digit count): kept out of the budget before cutting.
    let keep = clean.floor_char_boundary(max_bytes.saturating_sub(40));
    let mut out = clean[..keep].to_owned();
    out.push_str(&format!(" … ({} more bytes not shown)", clean.len() - keep));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpts_drop_controls_and_format_characters_and_stay_short() {
        assert_eq!(excerpt("a\u{202E}b\u{200B}c\u{0007}d", 10), "abcd");
        assert_eq!(excerpt("one\n\n  two\r\tthree", 40), "one two three");
        assert_eq!(excerpt("abcdef", 3), "abc…");
        assert_eq!(excerpt("\u{2066}\u{2069}", 3), "");
        assert_eq!(excerpt(&"x".repeat(1 << 20), 200).chars().count(), 201);
        assert_eq!(excerpt("tag\u{E0041}", 10), "tag");
    }

    #[test]
    fn json_errors_never_quote_what_they_read() {
        let secret = "AKIA-secret-key-of-the-metadata-service";
        for body in [
            format!(r#"{{"mediaType": "{secret}", "layers": "{secret}"}}"#),
            format!(r#""{secret}""#),
            format!(r#"{{"{secret}": 1, "layers": 5}}"#),
            format!("{secret} is not json"),
            format!(r#"{{"layers": ["{secret}""#),
        ] {
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            #[allow(dead_code)]
            #[derive(Debug)]
            struct Manifest {
                layers: Vec<String>,
            }
            let error = serde_json::from_str::<Manifest>(&body).unwrap_err();
            assert!(error.to_string().contains("line"), "{error}");
            let described = json_error(&error);
            assert!(!described.contains("secret"), "{described}");
            assert!(described.len() < 80, "{described}");
        }
    }

    #[test]
    fn bound_cuts_on_a_character_boundary_and_says_so() {
        let text = "é".repeat(10_000);
        let bounded = bound(&text, 1024);
        assert!(bounded.len() <= 1024, "{}", bounded.len());
        assert!(bounded.ends_with("more bytes not shown)"), "{bounded}");
        assert_eq!(bound("short\nlines", 1024), "short\nlines");
        assert_eq!(bound("a\u{202E}b", 1024), "ab");
    }

    #[test]
    fn quoted_values_are_short_and_cannot_close_their_quote() {
        assert_eq!(quote("a\"b"), "\"a'b\"");
        assert_eq!(
            quote(&"m".repeat(1 << 20)).len(),
            QUOTE_CHARS + 2 + '…'.len_utf8()
        );
        assert_eq!(
            first_few((0..100).map(|i| i.to_string()), 3),
            "0, 1, 2 and 97 more"
        );
    }

    #[test]
    fn their_words_are_marked_and_cannot_close_the_quote() {
        assert_eq!(
            their_words("the registry", "policy \"violation\"\u{202E}: x"),
            "the registry says \"policy 'violation': x\""
        );
        assert_eq!(
            their_words("the registry", " \u{200B} "),
            "the registry gave no message"
        );
    }
}
