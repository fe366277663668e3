//! RegistryX's REST API, read for one thing: the vulnerability summary of a manifest (which the
//! decision stage gives Rego as `input.vulnerabilities`).
//!
//! `GET {api}/api/v1/repositories/<name>/manifests/<digest>` answers
//! `{"digest","size","mediaType","vulnerabilities":{"status","critical","high","medium","low","high_priority"},"isSigned","healthScore"}`.
//! Only `digest` (checked) and `vulnerabilities` are read.

use std::time::Duration;

use serde::Deserialize;

/// The most of an answer read: the summary is a few hundred bytes.
const MAX_ANSWER_BYTES: usize = 256 * 1024;

#[derive(Deserialize)]
struct ManifestDetails {
    #[serde(default)]
    digest: Option<String>,
    #[serde(default)]
    vulnerabilities: Option<SummaryAnswer>,
    // `isSigned` is deliberately not modelled: RegistryX reports it true for any image whose scan
    // finished, without checking any signature. Whether an image is signed is only ever what
    // registryx-guard verified itself.
}

/// RegistryX's vulnerability counts of one manifest, as its REST API answers them.
#[derive(Deserialize)]
struct SummaryAnswer {
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    critical: Option<u64>,
    #[serde(default)]
    high: Option<u64>,
    #[serde(default)]
    medium: Option<u64>,
    #[serde(default)]
    low: Option<u64>,
}

/// The vulnerability counts RegistryX's scanner found in one manifest.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VulnerabilitySummary {
    pub critical: u64,
    pub high: u64,
    pub medium: u64,
    pub low: u64,
    /// The scan's status as RegistryX names it (`completed`, ...), `unknown` when it names none.
    pub status: String,
}

/// A failure to read RegistryX's REST API: the URL and what went wrong, worded as the refusal shows it
/// (`RegistryX API GET <url>: <what>`). The kind tells an outage from a refusal or a lie, so that the
/// decision is labelled for what happened rather than as a policy's verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    pub url: String,
    pub kind: ApiErrorKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiErrorKind {
    /// No connection, no answer in time, or a TLS failure: the API is out of reach.
    NoAnswer(String),
    /// The API answered with this HTTP status (its body is never quoted).
    Status(u16),
    /// The answer is not a manifest summary, or is for another digest.
    Malformed(String),
    /// The repository or digest asked about cannot be put in a URL.
    BadRequest(String),
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            ApiErrorKind::BadRequest(what) => write!(f, "RegistryX API: {what}"),
            ApiErrorKind::NoAnswer(what) | ApiErrorKind::Malformed(what) => {
                write!(f, "RegistryX API GET {}: {what}", self.url)
            }
            ApiErrorKind::Status(status) => write!(
                f,
                "RegistryX API GET {}: HTTP {}",
                self.url,
                reqwest::StatusCode::from_u16(*status)
                    .map(|s| s.to_string())
                    .unwrap_or_else(|_| status.to_string())
            ),
        }
    }
}

impl std::error::Error for ApiError {}

impl ApiError {
    /// The host (and port) of the API, for the reason and remedy.
    pub fn host(&self) -> String {
        reqwest::Url::parse(&self.url)
            .ok()
            .and_then(|u| {
                u.host_str().map(|h| {
                    format!(
                        "{h}{}",
                        u.port().map(|p| format!(":{p}")).unwrap_or_default()
                    )
                })
            })
            .unwrap_or_else(|| "the RegistryX API".to_owned())
    }
}

/// What a failed request says, causes included (reqwest's own message is only "error sending
/// request"), with the one hint the RegistryX guide's users need: RegistryX started as its README says
/// serves plain HTTP, and TLS against it fails with rustls' "InvalidContentType".
fn no_answer(error: &reqwest::Error, timeout: Duration) -> String {
    if error.is_timeout() {
        return format!("no answer within {timeout:?}");
    }
    let mut cause = String::from("request failed");
    let mut source = std::error::Error::source(error);
    while let Some(inner) = source {
        cause.push_str(": ");
        cause.push_str(&inner.to_string());
        source = inner.source();
    }
    // The chain is the client's own words, but a TLS or HTTP parse error may carry a fragment of what
    // the other side sent: cut and cleaned before it reaches a refusal.
    let mut cause = crate::untrusted::excerpt(&cause, 300);
    if cause.contains("InvalidContentType") || cause.contains("corrupt message") {
        cause.push_str(
            " (the API does not speak TLS here: a RegistryX started as its README says serves plain \
             HTTP; give registryxApi as http://...)",
        );
    }
    cause
}

/// Reads RegistryX's vulnerability summary of `repository@digest` from the REST API at `api_base`
/// (`https://registryx.example.com`). `Ok(None)` when RegistryX has no summary for it (404, or an answer
/// without `vulnerabilities`); an error names the URL and what went wrong.
pub async fn vulnerability_summary(
    http: &reqwest::Client,
    api_base: &str,
    repository: &str,
    digest: &str,
    timeout: Duration,
) -> Result<Option<VulnerabilitySummary>, ApiError> {
    let bad_request = |what: String| ApiError {
        url: api_base.to_owned(),
        kind: ApiErrorKind::BadRequest(what),
    };
    let repository_path = repository_path(repository)
        .ok_or_else(|| bad_request(format!("{repository:?} is not a repository name")))?;
    if !is_digest(digest) {
        return Err(bad_request(format!("{digest:?} is not a digest")));
    }
    let url = format!(
        "{}/api/v1/repositories/{repository_path}/manifests/{digest}",
        api_base.trim_end_matches('/')
    );

    let fail = |kind: ApiErrorKind| ApiError {
        url: url.clone(),
        kind,
    };
    let mut response = http
        .get(&url)
        .header(reqwest::header::ACCEPT, "application/json")
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| fail(ApiErrorKind::NoAnswer(no_answer(&e, timeout))))?;
    let status = response.status();
    if status == reqwest::StatusCode::NOT_FOUND {
        return Ok(None);
    }

    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                    return Err(fail(ApiErrorKind::Malformed(format!(
                        "answer larger than {MAX_ANSWER_BYTES} bytes"
                    ))));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) => {
                let what = no_answer(&e, timeout);
                return Err(fail(ApiErrorKind::NoAnswer(format!(
                    "reading the answer: {what}"
                ))));
            }
        }
    }
    // The answer's body is not quoted: a refusal must not carry what an arbitrary server said.
    if !status.is_success() {
        return Err(fail(ApiErrorKind::Status(status.as_u16())));
    }

    let details: ManifestDetails =
        // Where the JSON broke, not serde's message: that can quote the answer's own strings.
        serde_json::from_slice(&body).map_err(|e| {
            fail(ApiErrorKind::Malformed(format!(
                "not a manifest summary (invalid JSON at line {} column {})",
                e.line(),
                e.column()
            )))
        })?;
    if let Some(answered) = &details.digest
        && !answered.is_empty()
        && answered != digest
    {
        // Quoted only when it is a digest: anything else the server put there is not repeated.
        let answered = if is_digest(answered) && answered.len() <= 128 {
            answered.as_str()
        } else {
            "another digest"
        };
        return Err(fail(ApiErrorKind::Malformed(format!(
            "answered for {answered}, not {digest}"
        ))));
    }
    Ok(details.vulnerabilities.map(|v| VulnerabilitySummary {
        critical: v.critical.unwrap_or(0),
        high: v.high.unwrap_or(0),
        medium: v.medium.unwrap_or(0),
        low: v.low.unwrap_or(0),
        status: v.status.unwrap_or_else(|| "unknown".into()),
    }))
}

/// The repository as URL path segments: OCI's repository grammar (lowercase letters, digits, `._-`
/// separated by `/`), so that nothing in it can change the URL's meaning.
fn repository_path(repository: &str) -> Option<&str> {
    let valid_segment = |segment: &str| {
        !segment.is_empty()
            && segment != "."
            && segment != ".."
            && segment.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
            })
    };
    repository
        .split('/')
        .all(valid_segment)
        .then_some(repository)
}

/// `algorithm:encoded`, as OCI defines digests.
fn is_digest(digest: &str) -> bool {
    let Some((algorithm, encoded)) = digest.split_once(':') else {
        return false;
    };
    !algorithm.is_empty()
        && algorithm.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'+' | b'.' | b'_' | b'-')
        })
        && !encoded.is_empty()
        && encoded
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'=' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_names_and_digests() {
        assert!(repository_path("prod/api").is_some());
        assert!(repository_path("library/nginx").is_some());
        assert!(repository_path("prod/../admin").is_none());
        assert!(repository_path("prod/api?x=1").is_none());
        assert!(repository_path("").is_none());
        assert!(is_digest(&format!("sha256:{}", "a".repeat(64))));
        assert!(!is_digest("latest"));
        assert!(!is_digest("sha256:abc/../x"));
    }
}
