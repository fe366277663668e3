//! The hand-written reference grammar against the regular expression it replaced (oci-spec's, through
//! oci-client): over the fuzzing corpus and the spellings that matter, both accept the same references
//! and split them into the same registry, repository, tag and digest. The one deliberate difference:
//! a non-ASCII tag, which oci-spec's Unicode `\w` takes and `ImageRef::parse` refused afterwards anyway.

use registryx_guard::registry::grammar;

const SPELLINGS: &[&str] = &[
    "nginx",
    "nginx:1.25",
    "library/nginx",
    "docker.io/nginx",
    "index.docker.io/library/nginx:latest",
    "registry-1.docker.io/nginx",
    "localhost/app",
    "localhost:5000/app:v1",
    "localhost:5000",
    "127.0.0.1:5000/team/app@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    "r.example/team/app:v1@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    "R.Example/team/app",
    "Team/app",
    "team/App",
    "r.example./app",
    "[::1]:5000/app",
    "r.example:0443/app",
    "r.example:/app",
    "r.example/app:",
    "r.example/app@",
    "r.example/app:.v1",
    "r.example/app:-v1",
    "r.example/app:_v1",
    "r.example/app:v1@sha256:abc",
    "r.example/app@sha512:0123456789abcdef0123456789abcdef",
    "r.example/app@sha256:0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef",
    "r.example/app@md5:0123456789abcdef0123456789abcdef",
    "r.example/a__b/c---d/e.f/g_h",
    "r.example/a___b",
    "r.example/a._b",
    "r.example/-a",
    "r.example/a-",
    "r.example//a",
    "r.example/a/",
    "/a",
    "a b",
    " a",
    "a@b@c",
    "a:b:c",
    "a:b/c",
    "-r.example/a",
    "r-.example/a",
    "r.-example/a",
    "r.example:5000:6000/a",
    "xn--bcher-kva.example/app",
    "r.example/app:v1.2-rc_3",
    "r.example/app:ünïcode",
    "r.example/app:1😀",
];

fn long_cases() -> Vec<String> {
    vec![
        format!("r.example/{}", "a".repeat(255)),
        format!("r.example/{}", "a".repeat(256)),
        "a".repeat(247),
        "a".repeat(248),
        format!("r.example/app:{}", "t".repeat(128)),
        format!("r.example/app:{}", "t".repeat(129)),
    ]
}

/// Short strings over the characters the grammar turns on, from a fixed seed: every split point and
/// separator rule meets both parsers many times over.
fn generated(count: usize) -> Vec<String> {
    const ALPHABET: &[&str] = &[
        "a",
        "b",
        "Z",
        "0",
        "9",
        ".",
        "_",
        "__",
        "-",
        ":",
        "/",
        "@",
        "localhost",
        "sha256:",
        "0123456789abcdef0123456789abcdef",
        "ü",
        "5000",
    ];
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (0..count)
        .map(|_| {
            let pieces = 1 + next() % 9;
            (0..pieces)
                .map(|_| ALPHABET[(next() % ALPHABET.len() as u64) as usize])
                .collect()
        })
        .collect()
}

fn corpus() -> Vec<String> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/image_reference");
    let mut found: Vec<String> = std::fs::read_dir(dir)
        .expect("the fuzzing corpus")
        .filter_map(|entry| std::fs::read(entry.ok()?.path()).ok())
        .filter_map(|bytes| String::from_utf8(bytes).ok())
        .collect();
    found.sort();
    found
}

#[test]
fn the_grammar_accepts_and_splits_what_the_regular_expression_did() {
    let mut cases: Vec<String> = SPELLINGS.iter().map(|s| (*s).to_owned()).collect();
    cases.extend(long_cases());
    let corpus = corpus();
    assert!(corpus.len() > 100, "only {} corpus entries", corpus.len());
    cases.extend(corpus);
    cases.extend(generated(50_000));
    let (mut accepted, mut refused) = (0, 0);
    for case in &cases {
        let ours = grammar::parse(case);
        let theirs = oci_client::Reference::try_from(case.as_str());
        match (&ours, &theirs) {
            (Ok(ours), Ok(theirs)) => {
                accepted += 1;
                assert_eq!(
                    (
                        ours.registry,
                        ours.repository.as_ref(),
                        ours.tag,
                        ours.digest
                    ),
                    (
                        theirs.registry(),
                        theirs.repository(),
                        theirs.tag(),
                        theirs.digest()
                    ),
                    "{case:?}"
                );
            }
            (Err(_), Err(_)) => refused += 1,
            (Err(_), Ok(theirs)) if theirs.tag().is_some_and(|t| !t.is_ascii()) => refused += 1,
            _ => panic!("{case:?}: ours {ours:?}, the regular expression's {theirs:?}"),
        }
    }
    println!("{accepted} accepted, {refused} refused alike");
    assert!(
        accepted > 1_000 && refused > 1_000,
        "{accepted} accepted, {refused} refused"
    );
}
