//! The `images` glob grammar: normalising a glob the way image references are normalised, refusing
//! globs that can never match, and matching references against the compiled globs.

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

use super::PolicyError;
use crate::registry::{DOCKER_HUB, ImageRef, canonical_registry};

/// A policy's `images` globs, normalised the way image references are (see [`normalize_glob`]) and
/// matched against a reference's canonical `registry/repository`, `registry/repository:tag` and
/// `registry/repository@digest`, so that `r.example/prod/**` and `r.example/prod/api:*` both mean what
/// they say. The digest patterns that globs over tags imply are kept apart ([`super::governing_policies`]
/// uses them).
#[derive(Clone, Debug)]
pub struct ImageMatcher {
    set: GlobSet,
    digest_set: GlobSet,
}

impl ImageMatcher {
    /// Compiles the globs; `*` stays within one path segment, `**` also crosses `/`.
    pub fn new(globs: &[String]) -> Result<ImageMatcher, PolicyError> {
        if globs.is_empty() {
            return Err(PolicyError::NoImages);
        }
        let mut builder = GlobSetBuilder::new();
        let mut digest_builder = GlobSetBuilder::new();
        for glob in globs {
            let normalized = normalize_glob(glob).map_err(|reason| PolicyError::Glob {
                glob: glob.clone(),
                reason,
            })?;
            let compile = |pattern: &str| {
                GlobBuilder::new(pattern)
                    .literal_separator(true)
                    .build()
                    .map_err(|e| PolicyError::Glob {
                        glob: glob.clone(),
                        reason: e.kind().to_string(),
                    })
            };
            for pattern in &normalized.patterns {
                builder.add(compile(pattern)?);
            }
            for pattern in &normalized.digest_patterns {
                digest_builder.add(compile(pattern)?);
            }
        }
        let build = |builder: GlobSetBuilder| {
            builder.build().map_err(|e| PolicyError::Glob {
                glob: globs.join(", "),
                reason: e.to_string(),
            })
        };
        Ok(ImageMatcher {
            set: build(builder)?,
            digest_set: build(digest_builder)?,
        })
    }

    /// A matcher that governs every image: what a policy whose globs do not compile stands for until
    /// it is fixed, so that a typo never lets its images through under a weaker policy.
    pub fn everything() -> ImageMatcher {
        let mut builder = GlobSetBuilder::new();
        if let Ok(glob) = GlobBuilder::new("**").build() {
            builder.add(glob);
        }
        let set = builder.build().unwrap_or_else(|_| GlobSet::empty());
        ImageMatcher {
            set,
            digest_set: GlobSet::empty(),
        }
    }

    pub fn matches(&self, image: &ImageRef) -> bool {
        let name = image.name();
        if self.set.is_match(&name) {
            return true;
        }
        let tagged = image
            .tag
            .as_ref()
            .is_some_and(|tag| self.set.is_match(format!("{name}:{tag}")));
        tagged
            || image
                .digest
                .as_ref()
                .is_some_and(|digest| self.set.is_match(format!("{name}@{digest}")))
    }

    /// Whether a glob over tags names the repository of `image`, a reference with a digest.
    pub fn matches_by_digest(&self, image: &ImageRef) -> bool {
        image.digest.as_ref().is_some_and(|digest| {
            self.digest_set
                .is_match(format!("{}@{digest}", image.name()))
        })
    }
}

/// The patterns one glob stands for.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct NormalizedGlob {
    /// Matched against `registry/repository`, `...:tag` and `...@digest`.
    pub patterns: Vec<String>,
    /// `repository@sha256:*` for a glob over tags.
    pub digest_patterns: Vec<String>,
}

const GLOB_META: &[u8] = b"*?[]{},!";

/// Normalises one `images` glob the way [`ImageRef::parse`] normalises references:
/// - a first segment without `.` or `:` that is not `localhost` is a Docker Hub name: `nginx` means
///   `docker.io/library/nginx`, `team/app` means `docker.io/team/app`; a first segment that is only a
///   wildcard (`*/nginx`) is read both ways, as any registry and as Docker Hub;
/// - the registry is lower-cased, its default port dropped and Hub's aliases made `docker.io`; a
///   registry pattern with a port wildcard (`r.example:*`) also covers the port-less canonical form;
/// - a glob over tags (`repo:*`, `repo:1.*`, `repo:1.4`) also governs that repository's digests
///   (`repo@sha256:...`), see [`super::governing_policies`];
/// - a glob that can never match a valid reference (a URL, whitespace, upper case in a repository, an
///   empty path segment, `**` inside a segment, a character no reference holds, a path component or tag
///   that starts with a separator, a registry pattern no canonical `host[:port]` spells such as a
///   zero-padded or out-of-range port or a host label ending in `-`) is an error that says why and,
///   for a zero-padded port, what to write instead.
pub fn normalize_glob(glob: &str) -> Result<NormalizedGlob, String> {
    if glob.is_empty() {
        return Err("it is empty".into());
    }
    if glob.contains("://") {
        return Err(
            "a glob names image references (registry/repository:tag), not URLs: drop the scheme"
                .into(),
        );
    }
    if glob
        .bytes()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err("it contains whitespace, which no image reference holds".into());
    }
    if !glob.is_ascii() {
        return Err("it contains non-ASCII characters, which no image reference holds".into());
    }
    if glob == "**" {
        return Ok(NormalizedGlob {
            patterns: vec![glob.to_owned()],
            digest_patterns: Vec::new(),
        });
    }
    for segment in glob.split('/') {
        let path_part = segment.split([':', '@']).next().unwrap_or_default();
        if path_part.contains("**") && path_part != "**" {
            return Err(format!(
                "`**` must be a whole path segment (`a/**/b`), not part of {segment:?}: use `*` within a segment"
            ));
        }
    }
    let (first, rest) = match glob.split_once('/') {
        Some((first, rest)) => (first, Some(rest)),
        None => (glob, None),
    };
    let has_meta = |text: &str| text.bytes().any(|b| GLOB_META.contains(&b));
    let hostlike =
        first.contains('.') || first.contains(':') || first.eq_ignore_ascii_case("localhost");
    // `[::1]:5000` is an IPv6 literal, not a character class; image references with one do not
    // parse (ImageRef::parse refuses them), so such a glob could never match.
    if first.starts_with('[')
        && first
            .split(']')
            .next()
            .is_some_and(|inside| inside.contains(':'))
    {
        return Err(
            "image references with an IPv6 literal registry do not parse and are refused, so it can never match"
                .into(),
        );
    }
    let mut readings: Vec<(String, String)> = Vec::new(); // (registry, path)
    match rest {
        Some(rest) if hostlike => {
            if has_meta(first) {
                // A registry pattern: hosts are case-insensitive; a literal default port is no port.
                check_registry_pattern(first, rest)?;
                let lower = first.to_ascii_lowercase();
                let trimmed = lower
                    .strip_suffix(":443")
                    .or_else(|| lower.strip_suffix(":80"))
                    .unwrap_or(&lower)
                    .to_owned();
                if let Some((host, port)) = trimmed.rsplit_once(':')
                    && has_meta(port)
                {
                    readings.push((host.to_owned(), rest.to_owned()));
                }
                // A single-label host keeps its default port in canonical form (`rg:443`, see
                // canonical_registry), so a pattern that may match one (`rg*:443`) keeps it too.
                if trimmed != lower && !trimmed.contains('.') {
                    readings.push((lower.clone(), rest.to_owned()));
                }
                readings.push((trimmed, rest.to_owned()));
            } else {
                let registry =
                    canonical_registry(first).map_err(|e| e.replace("registry", "its registry"))?;
                check_host(&registry)?;
                readings.push((registry, rest.to_owned()));
            }
        }
        Some(rest) if has_meta(first) => {
            readings.push((first.to_owned(), rest.to_owned()));
            readings.push((DOCKER_HUB.to_owned(), glob.to_owned()));
        }
        _ => readings.push((DOCKER_HUB.to_owned(), glob.to_owned())),
    }
    let mut normalized = NormalizedGlob::default();
    for (registry, path) in readings {
        normalize_path(&registry, &path, &mut normalized)?;
    }
    Ok(normalized)
}

/// `pattern` with each character class (`[a-z]`, `[!0-9]`) replaced by `?`: what the literal checks
/// below look at, since a class stands for one character whatever it lists.
fn mask_classes(pattern: &str) -> String {
    let mut masked = String::with_capacity(pattern.len());
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        if c != '[' {
            masked.push(c);
            continue;
        }
        // `[]...]` and `[!]...]` take the `]` right after the opening as a member.
        let mut members = 0;
        for inner in chars.by_ref() {
            if inner == '!' && members == 0 {
                continue;
            }
            if inner == ']' && members > 0 {
                break;
            }
            members += 1;
        }
        masked.push('?');
    }
    masked
}

/// Refuses a canonical registry (`canonical_registry`'s output, no wildcard) that no reference can
/// have: references only parse with host names of letters, digits, `-` and `.` (src/registry/grammar.rs).
fn check_host(registry: &str) -> Result<(), String> {
    if registry.starts_with('[') {
        return Ok(()); // an IPv6 literal, checked by canonical_registry
    }
    let host = registry.rsplit_once(':').map_or(registry, |(host, _)| host);
    let label_ok = |label: &str| {
        !label.is_empty()
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if host.split('.').all(label_ok) {
        return Ok(());
    }
    Err(format!(
        "its registry host {host:?} can never match: host names are letters, digits and `-` between dots, and no label starts or ends with `-`"
    ))
}

/// Refuses a registry pattern (`reg*.example:5000`, `*.example`) that no canonical registry can match.
/// References are matched in canonical form (`canonical_registry`): lower-case host, port without
/// leading zeros, 1-65535, no `:443`/`:80`. A literal port that is not canonical is named with its
/// canonical spelling (`reg*.invalid:0443` governs nothing; `reg*.invalid:443` means what it says).
fn check_registry_pattern(registry: &str, rest: &str) -> Result<(), String> {
    // IPv6 literals were refused before (normalize_glob): a `[` here opens a character class.
    let lower = registry.to_ascii_lowercase();
    let masked = mask_classes(&lower);
    let (host, port) = match masked.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (masked.as_str(), None),
    };
    if host.contains(':') {
        return Err(format!(
            "its registry {registry:?} can never match: a registry has one `:`, before its port"
        ));
    }
    let never = |why: &str| Err(format!("its registry {registry:?} can never match: {why}"));
    if let Some(bad) = host
        .bytes()
        .find(|b| !(b.is_ascii_alphanumeric() || b"-.".contains(b) || GLOB_META.contains(b)))
    {
        return never(&format!(
            "host names never hold {:?} (letters, digits, `-` and `.` only)",
            bad as char
        ));
    }
    if host.is_empty() || host.starts_with(['.', '-']) || host.contains("..") {
        return never("a host name has no empty label and starts with a letter or digit");
    }
    if host.contains(".-") || host.contains("-.") || host.ends_with('-') {
        return never("no label of a host name starts or ends with `-`");
    }
    if host.ends_with('.') {
        return never("canonical host names have no trailing dot: drop it");
    }
    let Some(port) = port else {
        return Ok(());
    };
    if port.is_empty() {
        return never("it has a `:` but no port");
    }
    if let Some(bad) = port
        .bytes()
        .find(|b| !(b.is_ascii_digit() || GLOB_META.contains(b)))
    {
        return never(&format!("a port is digits, never {:?}", bad as char));
    }
    if !port.bytes().any(|b| GLOB_META.contains(&b)) {
        let written = &lower[lower.len() - port.len()..];
        let number = port.trim_start_matches('0');
        match number.parse::<u32>() {
            Ok(n) if (1..=65535).contains(&n) && number.len() == port.len() => Ok(()),
            Ok(n) if (1..=65535).contains(&n) => never(&format!(
                "references are matched with their port written without leading zeros ({port} is {n}): write {}:{n}/{rest}",
                &registry[..registry.len() - written.len() - 1]
            )),
            _ => never(&format!("port {port} is not 1-65535")),
        }
    } else if port.starts_with('0') {
        never(&format!(
            "port pattern {port:?} starts with 0, and canonical ports have no leading zero"
        ))
    } else if !port.contains('{') && port.bytes().filter(u8::is_ascii_digit).count() > 5 {
        never(&format!(
            "port pattern {port:?} has more digits than a port (1-65535)"
        ))
    } else {
        Ok(())
    }
}

/// Adds the patterns of `path` (repository glob, then `:tag` or `@digest`) under `registry`.
fn normalize_path(registry: &str, path: &str, out: &mut NormalizedGlob) -> Result<(), String> {
    if path.is_empty() {
        return Err(format!(
            "it names the registry {registry} but no repository: write {registry}/** for all of its images"
        ));
    }
    // The repository, and what follows it: `:tag` or `@digest` in the last segment.
    let last_start = path.rfind('/').map_or(0, |i| i + 1);
    let split = path[last_start..].find([':', '@']).map(|i| last_start + i);
    let (repository, suffix) = match split {
        Some(i) => (&path[..i], &path[i..]),
        None => (path, ""),
    };
    if repository.split('/').any(str::is_empty) {
        return Err("it has an empty path segment (`//`, or a `/` at an end)".into());
    }
    if let Some(upper) = repository.bytes().find(u8::is_ascii_uppercase) {
        return Err(format!(
            "repository names are lower case, so {:?} can never match: write it in lower case",
            upper as char
        ));
    }
    if let Some(bad) = repository.bytes().find(|b| {
        !(b.is_ascii_lowercase()
            || b.is_ascii_digit()
            || b"._-/".contains(b)
            || GLOB_META.contains(b))
    }) {
        return Err(format!("repository names never hold {:?}", bad as char));
    }
    // Each path component is `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*` (src/registry/grammar.rs): a
    // separator at either end, or a run of separators no component holds (`..`, `._`), can never
    // match, whatever the wildcards around it stand for.
    for segment in repository.split('/').filter(|s| *s != "**") {
        let masked = mask_classes(segment);
        let separator = |b: &u8| b"._-".contains(b);
        let bad_end = masked.as_bytes().first().is_some_and(separator)
            || masked.as_bytes().last().is_some_and(separator);
        let bad_run = masked.split(|c: char| !"._-".contains(c)).any(|run| {
            !(run.is_empty() || [".", "_", "__"].contains(&run) || run.bytes().all(|b| b == b'-'))
        });
        if bad_end || bad_run {
            return Err(format!(
                "path component {segment:?} can never match: components are letters and digits, joined by `.`, `_`, `__` or dashes, and start and end with a letter or digit"
            ));
        }
    }
    let repository = if registry == DOCKER_HUB && !repository.contains('/') && repository != "**" {
        format!("library/{repository}")
    } else {
        repository.to_owned()
    };
    let base = format!("{registry}/{repository}");
    if let Some(tag) = suffix.strip_prefix(':') {
        if tag.is_empty()
            || tag.starts_with(['.', '-'])
            || tag.bytes().any(|b| {
                !(b.is_ascii_alphanumeric() || b"._-".contains(&b) || GLOB_META.contains(&b))
            })
        {
            return Err(format!(
                "tag {tag:?} can never match: tags are letters, digits, `.`, `_` and `-`, not starting with `.` or `-`"
            ));
        }
        out.patterns.push(format!("{base}:{tag}"));
        out.digest_patterns.push(format!("{base}@sha256:*"));
    } else if let Some(digest) = suffix.strip_prefix('@') {
        let hex = digest.strip_prefix("sha256:").ok_or_else(|| {
            format!("digest {digest:?} can never match: references pin sha256 digests")
        })?;
        if hex.is_empty()
            || hex.bytes().any(|b| {
                !(b.is_ascii_digit() || (b'a'..=b'f').contains(&b) || GLOB_META.contains(&b))
            })
        {
            return Err(format!(
                "digest {digest:?} can never match: a digest is sha256: and lower-case hex"
            ));
        }
        out.patterns.push(format!("{base}@{digest}"));
    } else {
        out.patterns.push(base);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(globs: &[&str]) -> ImageMatcher {
        ImageMatcher::new(&globs.iter().map(|g| (*g).to_owned()).collect::<Vec<_>>()).unwrap()
    }

    /// As [`super::governing_policies`] decides for one policy alone.
    fn governs(globs: &[&str], image: &str) -> bool {
        let (matcher, image) = (matcher(globs), ImageRef::parse(image).unwrap());
        matcher.matches(&image) || matcher.matches_by_digest(&image)
    }

    const DIGEST: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

    #[test]
    fn every_spelling_of_a_governed_registry_is_governed() {
        let globs = ["registryx.example.com/prod/**"];
        for image in [
            "registryx.example.com/prod/app",
            "Registryx.Example.COM/prod/app",
            "registryx.example.com:443/prod/app:1",
            "registryx.example.com:80/prod/app:1",
            &format!("registryx.example.com:0443/prod/app@{DIGEST}"),
        ] {
            assert!(governs(&globs, image), "{image} escapes {globs:?}");
        }
        assert!(!governs(&globs, "registryx.example.com:8443/prod/app"));
        assert!(!governs(&globs, "registryx.example.com/dev/app"));
        // A glob spelled differently means the same registry.
        for glob in [
            "Registryx.Example.COM/prod/**",
            "registryx.example.com:443/prod/**",
        ] {
            assert!(
                governs(&[glob], "registryx.example.com/prod/app:1"),
                "{glob}"
            );
        }
    }

    #[test]
    fn short_hub_names_and_hub_aliases_mean_what_runtimes_pull() {
        for glob in [
            "nginx",
            "nginx:*",
            "docker.io/nginx",
            "docker.io/library/**",
            "index.docker.io/library/nginx",
            "registry-1.docker.io/nginx:*",
        ] {
            for image in [
                "nginx:1.27",
                "docker.io/library/nginx:1.27",
                "registry-1.docker.io/library/nginx:1.27",
                "index.docker.io/nginx:1.27",
                "Index.Docker.io:443/nginx:1.27",
            ] {
                assert!(governs(&[glob], image), "{glob} must govern {image}");
            }
        }
        assert!(governs(&["docker.io/redis:*"], "redis:7"));
        assert!(governs(&["team/app"], "docker.io/team/app:1"));
        assert!(!governs(&["nginx"], "docker.io/team/nginx:1"));
        assert!(governs(&["*"], "alpine"), "`*` is every official image");
        // A wildcard first segment is read as any registry and as a Hub organisation.
        assert!(governs(&["*/nginx"], "nginx:1"));
        assert!(governs(&["*/nginx"], "r.example/nginx:1"));
        assert!(governs(&["myorg-*/app"], "docker.io/myorg-a/app:1"));
        // A port wildcard also covers the canonical form without a port.
        for image in [
            "registry.example.com/x:1",
            "registry.example.com:443/x:1",
            "registry.example.com:5000/x:1",
        ] {
            assert!(governs(&["registry.example.com:*/**"], image), "{image}");
        }
    }

    #[test]
    fn a_glob_over_tags_governs_the_repositorys_digests() {
        for glob in [
            "registry.example.com/team/app:*",
            "registry.example.com/team/app:1.*",
        ] {
            assert!(governs(
                &[glob],
                &format!("registry.example.com/team/app@{DIGEST}")
            ));
            assert!(governs(
                &[glob],
                &format!("registry.example.com/team/app:9@{DIGEST}")
            ));
            assert!(!governs(
                &[glob],
                &format!("registry.example.com/team/other@{DIGEST}")
            ));
        }
        // Policies split by tag keep their own tags once pinned; a tag no glob names falls back on every
        // tag glob of the repository.
        let dev = matcher(&["registry.example.com/team/app:dev-*"]);
        let prod = matcher(&["registry.example.com/team/app:prod-*"]);
        let which = |image: &str| {
            let image = ImageRef::parse(image).unwrap();
            let mut names = Vec::new();
            let direct: Vec<bool> = [&dev, &prod].iter().map(|m| m.matches(&image)).collect();
            let fallback = !direct.iter().any(|d| *d) && image.digest.is_some();
            for (name, (m, d)) in ["dev", "prod"].iter().zip([&dev, &prod].iter().zip(direct)) {
                if d || ((image.tag.is_none() || fallback) && m.matches_by_digest(&image)) {
                    names.push(*name);
                }
            }
            names
        };
        assert_eq!(
            which(&format!("registry.example.com/team/app:prod-1@{DIGEST}")),
            ["prod"]
        );
        assert_eq!(
            which(&format!("registry.example.com/team/app@{DIGEST}")),
            ["dev", "prod"]
        );
        assert_eq!(
            which(&format!("registry.example.com/team/app:other@{DIGEST}")),
            ["dev", "prod"]
        );
        assert!(!governs(
            &["registry.example.com/team/app:1.*"],
            "registry.example.com/team/app:2.0"
        ));
        assert!(governs(
            &[&format!("registry.example.com/team/app@{DIGEST}")],
            &format!("registry.example.com/team/app:1@{DIGEST}")
        ));
    }

    /// Registry patterns (a wildcard in the host or the port) are matched against canonical registries:
    /// one that no canonical `host[:port]` can spell governs nothing, so it is refused with why and,
    /// where there is one, the spelling that means what was written (issue 17, finding 6).
    #[test]
    fn a_registry_pattern_that_no_canonical_registry_spells_is_refused() {
        for (glob, why) in [
            (
                "reg*.invalid:0443/**",
                "port written without leading zeros (0443 is 443): write reg*.invalid:443/**",
            ),
            (
                "*.example.com:05000/app",
                "(05000 is 5000): write *.example.com:5000/app",
            ),
            ("reg*.example:99999/**", "port 99999 is not 1-65535"),
            ("reg*.example:0/**", "port 0 is not 1-65535"),
            ("reg*.example:0*/**", "starts with 0"),
            ("reg*.example:123456*/**", "more digits than a port"),
            ("reg*.example:5x*/**", "a port is digits"),
            ("reg*.example:/**", "no port"),
            ("reg*_x.example/**", "host names never hold '_'"),
            ("*.example..com/**", "empty label"),
            (".*.example/**", "empty label"),
            ("*-.example/**", "starts or ends with `-`"),
            ("*.example.:5000/**", "no trailing dot"),
            ("reg*.example:1:2/**", "one `:`"),
            ("[::1]:5000/app", "IPv6"),
            ("[::1]/**", "IPv6"),
        ] {
            let error = ImageMatcher::new(&[glob.to_owned()])
                .unwrap_err()
                .to_string();
            assert!(error.contains(why), "{glob:?}: {error}");
            assert!(error.contains(&format!("{glob:?}")), "{error}");
        }
        // The suggested spellings govern what the refused ones meant; other patterns stay accepted.
        assert!(governs(
            &["reg*.invalid:443/**"],
            "registry.invalid:0443/app:1"
        ));
        assert!(governs(
            &["*.example.com:5000/app"],
            "r.example.com:05000/app:1"
        ));
        for glob in [
            "REG*.Example/**",
            "reg*.example:*/**",
            "reg*.example:5*/**",
            "reg[0-9].example/**",
            "*.example.com:{5000,5001}/**",
            "r.example/team-[a-z]*/app_*:v[0-9]*",
            "r.example/a__b/**",
            "r.example/a---b",
        ] {
            ImageMatcher::new(&[glob.to_owned()]).unwrap_or_else(|e| panic!("{glob}: {e}"));
        }
        assert!(governs(&["REG*.Example/**"], "registry.example/app:1"));
        // A default port under a wildcard host: dropped for a dotted host, kept for a single label,
        // as canonical_registry does.
        for image in ["rgx:443/app:1", "rgx:0443/app:1"] {
            assert!(governs(&["rg?:443/**"], image), "{image}");
        }
        assert!(governs(&["rg?.example:443/**"], "rgx.example:443/app:1"));
    }

    #[test]
    fn a_glob_that_can_never_match_says_why() {
        for (glob, why) in [
            ("https://registry.example.com/app", "drop the scheme"),
            ("registry.example.com/Team/app", "lower case"),
            ("Nginx", "lower case"),
            ("registry.example.com/app ", "whitespace"),
            ("registry.example.com//app", "empty path segment"),
            ("registry.example.com/", "no repository"),
            ("registry.example.com/app:", "tag"),
            ("registry.example.com/app:v1+x", "tag"),
            ("registry.example.com/app@md5:abc", "sha256"),
            ("registry.example.com:99999/app", "port"),
            ("registry.example.com/app#1", "never hold"),
            ("registry.example.com/prod**", "whole path segment"),
            ("", "empty"),
            ("registry.example.com/app:.x*", "tag"),
            ("registry.example.com/-app", "path component"),
            ("registry.example.com/app_/**", "path component"),
            ("registry.example.com/a..b", "path component"),
            ("registry.example.com/team*._x", "path component"),
            ("reg_x.example/app", "host names are letters"),
            ("-reg.example/app", "host names are letters"),
        ] {
            let error = ImageMatcher::new(&[glob.to_owned()])
                .unwrap_err()
                .to_string();
            assert!(error.contains(why), "{glob:?}: {error}");
            assert!(error.contains(&format!("{glob:?}")), "{error}");
        }
    }
}
