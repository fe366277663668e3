//! The image-reference grammar of the distribution project (`reference/regexp.go`), checked by hand.
//!
//! oci-spec checks it with one regular expression whose `\w` is Unicode: compiling it took ~35 ms of
//! every process start and its matching was 16 % of the server's CPU under load. This accepts and
//! splits exactly what that expression did (a test compares the two over the fuzzing corpus), byte by
//! byte and without allocating until the parts are known. Canonical form and the stricter checks
//! runtimes apply (lowercase repositories, ASCII tags, sha256 digests) stay in [`super::ImageRef`].

/// Docker Hub's name when a reference names no registry.
const DEFAULT_DOMAIN: &str = "docker.io";
/// The longest repository name (`library/` included for short Hub names).
const NAME_TOTAL_LENGTH_MAX: usize = 255;
/// The longest tag.
const TAG_LENGTH_MAX: usize = 128;

/// A reference split into its parts, before canonicalisation: the registry as written (or
/// `docker.io`), the repository (with `library/` for a one-segment Hub name), the tag and the digest
/// as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReferenceParts<'a> {
    pub registry: &'a str,
    pub repository: std::borrow::Cow<'a, str>,
    pub tag: Option<&'a str>,
    pub digest: Option<&'a str>,
}

/// Splits `reference` (`[registry[:port]/]path[:tag][@digest]`), or says which part does not parse.
pub fn parse(reference: &str) -> Result<ReferenceParts<'_>, &'static str> {
    if reference.is_empty() {
        return Err("it is empty");
    }
    let (rest, digest) = match reference.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (reference, None),
    };
    if let Some(digest) = digest
        && !is_digest(digest)
    {
        return Err("its digest is not algorithm:hex (32 hex digits or more)");
    }
    // A tag follows the last `:` that comes after the last `/` (a port's `:` comes before a `/`).
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if let Some(tag) = tag
        && !is_tag(tag)
    {
        return Err(
            "its tag is not 1-128 word characters, `.` and `-`, starting with a word character",
        );
    }
    // The name is path components, optionally after a domain (`host[:port]/`).
    let remote_ok = |path: &str| path.split('/').all(is_path_component);
    let valid = remote_ok(name)
        || name
            .split_once('/')
            .is_some_and(|(domain, path)| is_domain(domain) && remote_ok(path));
    if !valid {
        return Err("its name is not a registry host and lowercase path components");
    }
    let (registry, remainder) = split_domain(name);
    let repository = if registry == DEFAULT_DOMAIN && !remainder.contains('/') {
        std::borrow::Cow::Owned(format!("library/{remainder}"))
    } else {
        std::borrow::Cow::Borrowed(remainder)
    };
    if repository.len() > NAME_TOTAL_LENGTH_MAX {
        return Err("its repository name is longer than 255 characters");
    }
    if let Some(digest) = digest {
        let (algorithm, hex) = digest.split_once(':').unwrap_or_default();
        let expected = match algorithm {
            "sha256" => 64,
            "sha384" => 96,
            "sha512" => 128,
            _ => return Err("its digest algorithm is not sha256, sha384 or sha512"),
        };
        if hex.len() != expected {
            return Err("its digest has the wrong length for its algorithm");
        }
    }
    Ok(ReferenceParts {
        registry,
        repository,
        tag: tag.or((digest.is_none()).then_some("latest")),
        digest,
    })
}

/// distribution's `splitDockerDomain` as oci-spec has it: the first component is a registry when it
/// has a `.` or a `:` or is `localhost`; `index.docker.io` is Docker Hub.
fn split_domain(name: &str) -> (&str, &str) {
    let (domain, remainder) = match name.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => (first, rest),
        _ => (DEFAULT_DOMAIN, name),
    };
    let domain = if domain == "index.docker.io" {
        DEFAULT_DOMAIN
    } else {
        domain
    };
    (domain, remainder)
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn is_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        // A separator run between two alphanumerics: `.`, `_`, `__`, or any number of `-`.
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        match &bytes[start..i] {
            b"." | b"_" | b"__" => {}
            run if run.iter().all(|&b| b == b'-') => {}
            _ => return false,
        }
    }
    true
}

/// `host(\.host)*(:[0-9]+)?` where a host component is `[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?`.
fn is_domain(domain: &str) -> bool {
    let (host, port) = match domain.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (domain, None),
    };
    let component = |c: &str| {
        let bytes = c.as_bytes();
        !bytes.is_empty()
            && bytes[0].is_ascii_alphanumeric()
            && bytes[bytes.len() - 1].is_ascii_alphanumeric()
            && bytes
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || b == b'-')
    };
    host.split('.').all(component)
        && port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// `\w[\w.-]{0,127}`, ASCII only: a tag with other word characters is refused later anyway, since
/// runtimes take ASCII tags only.
pub fn is_tag(tag: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let bytes = tag.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= TAG_LENGTH_MAX
        && word(bytes[0])
        && bytes.iter().all(|&b| word(b) || b == b'.' || b == b'-')
}

/// `[A-Za-z][A-Za-z0-9]*([-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}`
fn is_digest(digest: &str) -> bool {
    let Some((algorithm, hex)) = digest.split_once(':') else {
        return false;
    };
    let component = |c: &str| {
        let bytes = c.as_bytes();
        !bytes.is_empty()
            && bytes[0].is_ascii_alphabetic()
            && bytes.iter().all(|b| b.is_ascii_alphanumeric())
    };
    algorithm.split(['-', '_', '+', '.']).all(component)
        && hex.len() >= 32
        && hex.bytes().all(|b| b.is_ascii_hexdigit())
}
