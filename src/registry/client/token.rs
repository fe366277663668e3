//! The registry's 401 challenge answered: HTTP Basic remembered, or a bearer token asked of the realm
//! the challenge names, only on the registry's own host or a host the policy names (RegistryX's
//! `localhost:5000` realm moved onto the registry's host), and cached by scope until shortly before it
//! expires. The challenge itself (`WWW-Authenticate`) is parsed here too.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use reqwest::Method;
use reqwest::header::AUTHORIZATION;
use serde::Deserialize;

use super::transport::error_message;
use super::{Answer, RegistryClient};
use crate::registry::{ErrorKind, RegistryError, Step};

impl RegistryClient {
    pub(super) fn authorize(
        &self,
        request: reqwest::RequestBuilder,
        scope: &str,
    ) -> reqwest::RequestBuilder {
        let token = {
            let tokens = self
                .tokens
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            tokens
                .get(scope)
                .filter(|(_, expiry)| *expiry > Instant::now())
                .map(|(token, _)| token.clone())
        };
        match (token, &self.config.credentials) {
            (Some(token), _) => request.header(AUTHORIZATION, format!("Bearer {token}")),
            (None, Some(credentials)) if self.basic.load(Ordering::Relaxed) => {
                request.basic_auth(&credentials.username, Some(&credentials.password))
            }
            _ => request,
        }
    }

    /// Answers a 401: remembers that Basic is wanted, or runs the token flow for `scope`.
    pub(super) async fn authenticate(
        &self,
        step: &Step,
        challenge: Option<Challenge>,
        scope: &str,
        deadline: Instant,
    ) -> Result<(), RegistryError> {
        let unauthorized = |detail: String| self.fail(step, ErrorKind::Unauthorized { detail });
        match challenge {
            // Registries always name their scheme with a 401: without one, what answered reads as no
            // registry at all, as a closed port does.
            None => Err(self.no_registry(step, "HTTP 401 without a WWW-Authenticate challenge")),
            Some(Challenge::Basic) => {
                if self.config.credentials.is_none() {
                    return Err(unauthorized(
                        "the registry wants a username and password and none is configured".into(),
                    ));
                }
                self.basic.store(true, Ordering::Relaxed);
                Ok(())
            }
            Some(Challenge::Bearer {
                realm,
                service,
                scope: challenge_scope,
            }) => {
                let scope_wanted = challenge_scope.unwrap_or_else(|| scope.to_owned());
                // Where the token is asked for is decided before any request: credentials go only to
                // the registry's own host or to a host the policy names.
                let realm = self.token_endpoint(step, &realm)?;
                let token_step = Step::Token {
                    during: Box::new(step.clone()),
                    realm: realm.clone(),
                };
                let response = self
                    .request_token(
                        &token_step,
                        &realm,
                        service.as_deref(),
                        &scope_wanted,
                        deadline,
                    )
                    .await?;
                let status = response.status();
                let (body, _held) = self
                    .read_body(&token_step, response, 64 << 10, deadline)
                    .await?;
                if !status.is_success() {
                    let detail = format!(
                        "token endpoint answered HTTP {}: {}",
                        status.as_u16(),
                        error_message(&body)
                    );
                    return Err(self.fail(&token_step, ErrorKind::Unauthorized { detail }));
                }
                #[derive(Deserialize)]
                struct TokenAnswer {
                    token: Option<String>,
                    access_token: Option<String>,
                    expires_in: Option<u64>,
                }
                let malformed =
                    |detail: String| self.fail(&token_step, ErrorKind::Malformed { detail });
                let answer: TokenAnswer = serde_json::from_slice(&body).map_err(|e| {
                    malformed(format!(
                        "the token answer {}",
                        crate::untrusted::json_error(&e)
                    ))
                })?;
                let token = answer
                    .token
                    .or(answer.access_token)
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| malformed("token answer holds no token".into()))?;
                // Renew a little early so that a token never expires between check and use.
                // Bounded: a registry that claims a token lives for ever must not overflow the clock.
                let lifetime =
                    Duration::from_secs(answer.expires_in.unwrap_or(60).clamp(10, 86_400) - 5);
                let mut tokens = self
                    .tokens
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                tokens.insert(scope.to_owned(), (token.clone(), Instant::now() + lifetime));
                if scope_wanted != scope {
                    tokens.insert(scope_wanted, (token, Instant::now() + lifetime));
                }
                Ok(())
            }
        }
    }

    pub(super) async fn request_token(
        &self,
        step: &Step,
        realm: &str,
        service: Option<&str>,
        scope: &str,
        deadline: Instant,
    ) -> Result<Answer, RegistryError> {
        let mut query = vec![("scope", scope)];
        if let Some(service) = service {
            query.push(("service", service));
        }
        let mut request = self.http_for(realm).get(realm).query(&query);
        if let Some(credentials) = &self.config.credentials {
            request = request.basic_auth(&credentials.username, Some(&credentials.password));
        }
        let response = self.send(step, request, deadline).await?;
        if response.status().is_redirection() && self.config.insecure {
            return self
                .follow_to_https(step, response, Method::GET, None, deadline)
                .await;
        }
        Ok(response)
    }

    /// The token endpoint to ask: a loopback realm of a registry reached elsewhere is RegistryX's
    /// `http://localhost:5000/auth/token` quirk and means the registry's own host (whatever listens on
    /// this process's localhost must never see the credentials); a realm on the registry's own host, or
    /// on a host the policy names in `tokenHosts` (Docker Hub's `auth.docker.io` for `docker.io`), is
    /// used as it is; any other realm is refused.
    pub(super) fn token_endpoint(&self, step: &Step, realm: &str) -> Result<String, RegistryError> {
        if let Some(mapped) = self.rewrite_loopback_realm(realm) {
            return Ok(mapped);
        }
        let refused = |detail: String| self.fail(step, ErrorKind::Unauthorized { detail });
        let url = reqwest::Url::parse(realm).map_err(|e| {
            refused(format!(
                "the token realm {} is not a URL: {e}",
                crate::untrusted::quote(realm)
            ))
        })?;
        if !matches!(url.scheme(), "https" | "http") {
            return Err(refused(format!(
                "the token realm {} is not http(s)",
                crate::untrusted::quote(realm)
            )));
        }
        let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
        let base = reqwest::Url::parse(&self.base).ok();
        // The registry's own host, over the scheme it is reached with: Basic credentials must not go
        // in clear text to a port of that host the registry never named.
        let own = base.as_ref().is_some_and(|b| {
            b.host_str().is_some_and(|h| h.eq_ignore_ascii_case(&host))
                && b.scheme() == url.scheme()
        });
        let hub = self.registry == crate::registry::DOCKER_HUB && host == "auth.docker.io";
        let named = self.config.token_hosts.contains(&host);
        if own || hub || named {
            Ok(realm.to_owned())
        } else {
            let host = crate::untrusted::quote(&host);
            Err(refused(format!(
                "the registry sends its token requests to {host}, another host than its own; add \
                 {host} to spec.registry.tokenHosts of the policy if it is the registry's token service"
            )))
        }
    }

    /// The realm moved onto this registry's own scheme and host, when it names another loopback address.
    pub(super) fn rewrite_loopback_realm(&self, realm: &str) -> Option<String> {
        let url = reqwest::Url::parse(realm).ok()?;
        let host = url.host_str()?;
        let loopback = host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
            || host == "[::1]";
        let base = reqwest::Url::parse(&self.base).ok()?;
        let same = base.host_str() == Some(host)
            && base.port_or_known_default() == url.port_or_known_default();
        if !loopback || same {
            return None;
        }
        let mut local = base;
        local.set_path(url.path());
        local.set_query(url.query());
        Some(local.to_string())
    }
}

/// A `WWW-Authenticate` challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

impl Challenge {
    pub(super) fn parse(header: &str) -> Option<Challenge> {
        let (scheme, rest) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return Some(Challenge::Basic);
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let params = parse_params(rest);
        Some(Challenge::Bearer {
            realm: params.get("realm")?.clone(),
            service: params.get("service").cloned(),
            scope: params.get("scope").cloned(),
        })
    }
}

/// Parses `k="v",k2="v2"` where quoted values may contain commas (scopes do).
fn parse_params(input: &str) -> HashMap<String, String> {
    let mut params = HashMap::new();
    let mut rest = input.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let after = after.trim_start();
        let (value, remainder) = if let Some(quoted) = after.strip_prefix('"') {
            match quoted.find('"') {
                Some(end) => (&quoted[..end], &quoted[end + 1..]),
                None => (quoted, ""),
            }
        } else {
            match after.find(',') {
                Some(end) => (&after[..end], &after[end..]),
                None => (after, ""),
            }
        };
        params.insert(key, value.to_owned());
        rest = remainder.trim_start().trim_start_matches(',').trim_start();
    }
    params
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{ImageRef, RegistryConfig};

    #[test]
    fn loopback_realm_is_moved_onto_the_registry() {
        let image = ImageRef::parse("127.0.0.1:41234/demo/app:v1").unwrap();
        let client = RegistryClient::new(
            &image,
            RegistryConfig {
                insecure: true,
                ..RegistryConfig::default()
            },
        )
        .unwrap();
        assert_eq!(
            client
                .rewrite_loopback_realm("http://localhost:5000/auth/token")
                .as_deref(),
            Some("http://127.0.0.1:41234/auth/token")
        );
        assert_eq!(
            client.rewrite_loopback_realm("http://127.0.0.1:41234/auth/token"),
            None
        );
        assert_eq!(
            client.rewrite_loopback_realm("https://auth.example.com/token"),
            None
        );
    }

    #[test]
    fn parses_registryx_challenge() {
        let challenge = Challenge::parse(
            r#"Bearer realm="http://localhost:5000/auth/token",service="registryx""#,
        )
        .unwrap();
        assert_eq!(
            challenge,
            Challenge::Bearer {
                realm: "http://localhost:5000/auth/token".into(),
                service: Some("registryx".into()),
                scope: None
            }
        );
    }

    #[test]
    fn parses_scopes_with_commas() {
        let challenge =
            Challenge::parse(r#"Bearer realm="https://auth.example/token",service="reg",scope="repository:a/b:pull,push""#).unwrap();
        let Challenge::Bearer { scope, .. } = challenge else {
            panic!()
        };
        assert_eq!(scope.as_deref(), Some("repository:a/b:pull,push"));
        assert_eq!(
            Challenge::parse("Basic realm=\"x\""),
            Some(Challenge::Basic)
        );
    }
}
