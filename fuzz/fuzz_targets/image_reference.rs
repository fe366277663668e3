//! Image references and policy globs: parsing, canonical form and matching never panic, and the
//! canonical form is stable (parsing what it prints gives the same identity).
#![no_main]

use libfuzzer_sys::fuzz_target;
use registryx_guard::policy::{ImageMatcher, normalize_glob};
use registryx_guard::registry::{ImageRef, canonical_registry};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = canonical_registry(text);
    let _ = normalize_glob(text);
    let matcher = ImageMatcher::new(&[text.to_owned()]);
    if let Ok(image) = ImageRef::parse(text) {
        let again = ImageRef::parse(&image.to_string()).expect("the canonical form parses");
        assert_eq!(again, image, "the canonical form is a fixed point");
        if let Ok(matcher) = matcher {
            let _ = matcher.matches(&image) || matcher.matches_by_digest(&image);
        }
    }
});
