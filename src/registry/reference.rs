//! Image references, parsed as container runtimes do: `nginx` is `docker.io/library/nginx:latest`, a
//! registry is recognised by a `.` or `:` in the first component or by being `localhost`.
//!
//! Every parsed reference carries one canonical identity, the one that matching, cache keys, Rego input,
//! events and metrics all use: whatever a runtime would pull from the same place reads the same. Host
//! names are case-insensitive (DNS, TLS), a scheme's default port names the same endpoint as no port,
//! and Docker Hub answers under three names. Spelling cannot recognise an IP literal or a DNS alias of a
//! registry: that side door is closed by refusing images no policy governs, not here.

use std::fmt;

/// Docker Hub's canonical name; `index.docker.io` and `registry-1.docker.io` are the same registry.
pub const DOCKER_HUB: &str = "docker.io";

/// The canonical form of a registry host as written in a reference: lower-cased, without a trailing
/// dot, without the scheme's default port (`:443`, and `:80`, the default of the plain-HTTP registries
/// a policy marks `insecure`: a TLS registry on port 80 is not a thing runtimes meet), a port without
/// leading zeros, and Docker Hub's aliases as `docker.io`. An error says why the host cannot be one.
pub fn canonical_registry(host: &str) -> Result<String, String> {
    let lower = host.to_ascii_lowercase();
    let (name, port) = if let Some(rest) = lower.strip_prefix('[') {
        // An IPv6 literal: `[::1]` or `[::1]:5000`.
        let (address, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("registry {host:?} opens an IPv6 literal it never closes"))?;
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':').ok_or_else(|| {
                format!("registry {host:?} has text after its IPv6 literal that is not a port")
            })?),
        };
        (format!("[{address}]"), port)
    } else {
        match lower.rsplit_once(':') {
            Some((name, port)) => (name.to_owned(), Some(port)),
            None => (lower.clone(), None),
        }
    };
    let name = name.strip_suffix('.').unwrap_or(&name).to_owned();
    if name.is_empty() || name.starts_with('.') || name.contains("..") {
        return Err(format!("registry {host:?} has an empty host name"));
    }
    let port = match port {
        None => None,
        Some(digits) => {
            let number = (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
                .then(|| digits.parse::<u16>().ok())
                .flatten()
                .filter(|port| *port != 0)
                .ok_or_else(|| format!("registry {host:?} has port {digits:?}, not 1-65535"))?;
            // A single-label host (`rg:443`) needs its port to stay a registry: written without one
            // (`rg/app`) it would name a Docker Hub organisation.
            let recognisable = name.contains('.') || name == "localhost" || name.starts_with('[');
            (number != 443 && number != 80 || !recognisable).then_some(number)
        }
    };
    let name = match name.as_str() {
        "index.docker.io" | "registry-1.docker.io" if port.is_none() => DOCKER_HUB.to_owned(),
        _ => name,
    };
    Ok(match port {
        Some(port) => format!("{name}:{port}"),
        None => name,
    })
}

/// A parsed image reference in canonical form (see the module's documentation).
/// A reference that does not parse, and why.
#[derive(Clone, Debug, thiserror::Error)]
#[error("image reference {reference:?} does not parse: {reason}")]
pub struct InvalidReference {
    pub reference: String,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ImageRef {
    /// The canonical registry (`docker.io`, `127.0.0.1:5000`, `registryx.example.com`).
    pub registry: String,
    /// The repository path inside the registry (`library/nginx`).
    pub repository: String,
    pub tag: Option<String>,
    /// `sha256:<hex>` when the reference pins a digest.
    pub digest: Option<String>,
}

impl ImageRef {
    /// Parses `reference`; an error names the reference and why it does not parse.
    pub fn parse(reference: &str) -> Result<ImageRef, InvalidReference> {
        let invalid = |reason: String| InvalidReference {
            reference: reference.to_owned(),
            reason,
        };
        if reference.trim() != reference || reference.is_empty() {
            return Err(invalid("it is empty or has surrounding whitespace".into()));
        }
        let parsed = super::grammar::parse(reference).map_err(|e| invalid(e.to_owned()))?;
        // The distribution spec's path-component grammar, which oci-client does not enforce (it takes
        // `UPPER/case` as a Docker Hub repository that no registry could hold).
        let component = |c: &str| {
            !c.is_empty()
                && c.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
                && c.as_bytes()[0].is_ascii_alphanumeric()
                && c.as_bytes()[c.len() - 1].is_ascii_alphanumeric()
        };
        if !parsed.repository.split('/').all(component) {
            return Err(invalid(format!(
                "repository {:?} must be lowercase letters, digits and separators (._-) between them",
                parsed.repository
            )));
        }
        // oci-spec's tag pattern is `\w`, which is Unicode in Rust's regex; runtimes take ASCII only.
        if let Some(tag) = &parsed.tag
            && !tag
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return Err(invalid(format!(
                "tag {tag:?} must be ASCII letters, digits, `.`, `_` and `-`"
            )));
        }
        let registry = canonical_registry(parsed.registry).map_err(invalid)?;
        // A single-segment Docker Hub name is an official image under `library/`, whichever of Hub's
        // names the reference used (oci-client only knows this of `docker.io` itself).
        let repository = if registry == DOCKER_HUB && !parsed.repository.contains('/') {
            format!("library/{}", parsed.repository)
        } else {
            parsed.repository.into_owned()
        };
        let digest = parsed.digest.map(str::to_owned);
        if let Some(digest) = &digest {
            let hex = digest
                .strip_prefix("sha256:")
                .ok_or_else(|| invalid(format!("digest {digest} is not sha256")))?;
            if hex.len() != 64
                || !hex
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            {
                return Err(invalid(format!(
                    "digest {digest} is not 64 lowercase hex digits"
                )));
            }
        }
        // `latest` for a reference without tag or digest, as runtimes do; keep the tag
        // the user gave alongside a digest (`repo:1.4@sha256:...`) for messages and patches.
        let tag = parsed
            .tag
            .map(str::to_owned)
            .or_else(|| digest.is_none().then(|| "latest".to_owned()));
        Ok(ImageRef {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The host:port the distribution API is served at (`docker.io` is served by `registry-1.docker.io`).
    pub fn api_host(&self) -> &str {
        match self.registry.as_str() {
            "docker.io" | "index.docker.io" => "registry-1.docker.io",
            other => other,
        }
    }

    /// `registry/repository`, the name that globs and messages use.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// `registry/repository@digest`, the reference of exactly what was verified.
    pub fn with_digest(&self, digest: &str) -> String {
        format!("{}@{digest}", self.name())
    }

    /// The tag to resolve, or the digest when the reference pins one.
    pub fn reference(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name())?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_like_a_container_runtime() {
        let cases = [
            ("nginx", "docker.io", "library/nginx", Some("latest")),
            ("team/app:1.2", "docker.io", "team/app", Some("1.2")),
            ("localhost/app", "localhost", "app", Some("latest")),
            (
                "127.0.0.1:5000/demo/app:v1",
                "127.0.0.1:5000",
                "demo/app",
                Some("v1"),
            ),
            (
                "registryx.example.com/prod/api:1.4",
                "registryx.example.com",
                "prod/api",
                Some("1.4"),
            ),
        ];
        for (input, registry, repository, tag) in cases {
            let image = ImageRef::parse(input).unwrap();
            assert_eq!(
                (
                    image.registry.as_str(),
                    image.repository.as_str(),
                    image.tag.as_deref()
                ),
                (registry, repository, tag),
                "{input}"
            );
        }
    }

    #[test]
    fn every_spelling_of_one_registry_has_one_identity() {
        let same = |a: &str, b: &str| {
            let (a_ref, b_ref) = (ImageRef::parse(a).unwrap(), ImageRef::parse(b).unwrap());
            assert_eq!(a_ref, b_ref, "{a} and {b} name the same image");
        };
        let canonical = "registryx.example.com/prod/app:1";
        for spelling in [
            "Registryx.Example.COM/prod/app:1",
            "REGISTRYX.EXAMPLE.COM:443/prod/app:1",
            "registryx.example.com:443/prod/app:1",
            "registryx.example.com:0443/prod/app:1",
            "registryx.example.com:80/prod/app:1",
        ] {
            same(spelling, canonical);
        }
        for hub in [
            "nginx:1",
            "docker.io/nginx:1",
            "docker.io/library/nginx:1",
            "index.docker.io/nginx:1",
            "index.docker.io/library/nginx:1",
            "registry-1.docker.io/nginx:1",
            "Registry-1.Docker.IO/library/nginx:1",
            "registry-1.docker.io:443/library/nginx:1",
        ] {
            same(hub, "docker.io/library/nginx:1");
        }
        same("LocalHost:05000/app", "localhost:5000/app");
        // A single-label host keeps its port: without it, `rg/t` would be a Docker Hub name (found by
        // fuzzing: the canonical form must parse back to itself).
        same("rg:0443/t", "rg:443/t");
        let single = ImageRef::parse("rg:443/t").unwrap();
        assert_eq!(ImageRef::parse(&single.to_string()).unwrap(), single);
        assert_ne!(single, ImageRef::parse("rg/t").unwrap());
        // Hosts the reference grammar refuses (IPv6 literals, a trailing dot) cannot be a way around:
        // an image that does not parse is refused.
        for refused in [
            "[::1]:5000/app",
            "registryx.example.com./prod/app",
            "r.example/app:ü",
        ] {
            assert!(ImageRef::parse(refused).is_err(), "{refused}");
        }
        assert_eq!(canonical_registry("[::1]:443").unwrap(), "[::1]");
        assert_eq!(
            canonical_registry("Example.COM.:0443").unwrap(),
            "example.com"
        );
        // Other ports are other endpoints, and organisations on Hub are not `library/`.
        assert_ne!(
            ImageRef::parse("registryx.example.com:8443/prod/app:1").unwrap(),
            ImageRef::parse(canonical).unwrap()
        );
        assert_eq!(
            ImageRef::parse("registry-1.docker.io/team/app")
                .unwrap()
                .name(),
            "docker.io/team/app"
        );
        for bad in ["r.example:0/app", "r.example:70000/app"] {
            let error = ImageRef::parse(bad).unwrap_err().to_string();
            assert!(error.contains("not 1-65535"), "{bad}: {error}");
        }
    }

    #[test]
    fn keeps_digest_and_tag() {
        let digest = format!("sha256:{}", "a".repeat(64));
        let image = ImageRef::parse(&format!("r.example/app:1.0@{digest}")).unwrap();
        assert_eq!(image.digest.as_deref(), Some(digest.as_str()));
        assert_eq!(image.tag.as_deref(), Some("1.0"));
        assert_eq!(image.reference(), digest);
        let image = ImageRef::parse(&format!("r.example/app@{digest}")).unwrap();
        assert_eq!(image.tag, None);
    }

    #[test]
    fn refuses_what_does_not_parse_naming_it() {
        for bad in [
            "",
            " nginx",
            "UPPER/case",
            "r.example/app@sha256:abc",
            "r.example/app:bad tag",
            "r.example//app",
        ] {
            let error = ImageRef::parse(bad).unwrap_err().to_string();
            assert!(error.contains(&format!("{bad:?}")), "{error}");
        }
    }
}
