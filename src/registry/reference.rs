//! Image references, parsed as container runtimes do: `nginx` is `docker.io/library/nginx:latest`, a
//! registry is recognised by a `.` or `:` in the first component or by being `localhost`.

use std::fmt;

use crate::registry::RegistryError;

/// A parsed, normalized image reference.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ImageRef {
    /// The registry as written in references (`docker.io`, `127.0.0.1:5000`).
    pub registry: String,
    /// The repository path inside the registry (`library/nginx`).
    pub repository: String,
    pub tag: Option<String>,
    /// `sha256:<hex>` when the reference pins a digest.
    pub digest: Option<String>,
}

impl ImageRef {
    /// Parses `reference`; an error names the reference and why it does not parse.
    pub fn parse(reference: &str) -> Result<ImageRef, RegistryError> {
        let invalid = |reason: String| RegistryError::InvalidReference {
            reference: reference.to_owned(),
            reason,
        };
        if reference.trim() != reference || reference.is_empty() {
            return Err(invalid("it is empty or has surrounding whitespace".into()));
        }
        let parsed =
            oci_client::Reference::try_from(reference).map_err(|e| invalid(e.to_string()))?;
        // The distribution spec's path-component grammar, which oci-client does not enforce (it takes
        // `UPPER/case` as a Docker Hub repository that no registry could hold).
        let component = |c: &str| {
            !c.is_empty()
                && c.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
                && c.as_bytes()[0].is_ascii_alphanumeric()
                && c.as_bytes()[c.len() - 1].is_ascii_alphanumeric()
        };
        if !parsed.repository().split('/').all(component) {
            return Err(invalid(format!(
                "repository {:?} must be lowercase letters, digits and separators (._-) between them",
                parsed.repository()
            )));
        }
        let digest = parsed.digest().map(str::to_owned);
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
        // oci-client fills in `latest` for a reference without tag or digest, as runtimes do; keep the tag
        // the user gave alongside a digest (`repo:1.4@sha256:...`) for messages and patches.
        let tag = parsed
            .tag()
            .map(str::to_owned)
            .or_else(|| digest.is_none().then(|| "latest".to_owned()));
        Ok(ImageRef {
            registry: parsed.registry().to_owned(),
            repository: parsed.repository().to_owned(),
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
