//! A registry over HTTPS with a certificate from a private CA: verified with the policy's
//! `registry.caBundle`, refused without it (the system roots do not know that CA).

use crate::support::cosign::Cosign;
use crate::support::policy::PolicySpec;
use crate::support::registry::Registry;
use crate::support::verdicts::{assert_admitted, assert_refused_saying, verify};
use registryx_guard::refusal::Reason;

/// Signs `reference` (legacy format) on `registry`, whose certificate cosign trusts through its CA.
fn sign_over_tls(cosign: &Cosign, registry: &Registry, reference: &str) {
    let ca_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca_file.path(), registry.ca_pem().unwrap()).unwrap();
    let output = cosign
        .command()
        .args(["sign", "--yes", "--key"])
        .arg(cosign.private_key())
        .args([
            "--tlog-upload=false",
            "--use-signing-config=false",
            "--new-bundle-format=false",
            "--registry-cacert",
        ])
        .arg(ca_file.path())
        .arg(reference)
        .output()
        .unwrap();
    crate::support::cosign::assert_success("cosign sign over TLS", &output);
}

#[tokio::test]
async fn a_private_ca_is_trusted_through_the_policy_ca_bundle_only() {
    let registry = Registry::distribution_with_tls();
    let cosign = Cosign::with_new_key_pair();
    let image = registry.push_image("team/app", "v1", "tls").await;
    sign_over_tls(&cosign, &registry, &image.reference);

    let base = PolicySpec::key(&registry.host, &cosign.public_key_pem());
    let ca = registry.ca_pem().unwrap().to_owned();
    let with_ca = base.clone().insecure(false).ca_bundle(&ca);
    assert_admitted(&verify(&image.reference, &with_ca.compile()).await);

    // RegistryX's REST API on the same host is read with the same trust: with the old bare client the
    // handshake failed and the Rego stage refused. (The distribution registry answers 404 there: no
    // summary, and the module allows.)
    let with_api = with_ca
        .registryx_api(&format!("https://{}", registry.host))
        .rego(&[(
            "allow.rego",
            "package registryx.policy\ndefault allow = true\n",
        )]);
    let verdict = verify(&image.reference, &with_api.compile()).await;
    assert_admitted(&verdict);
    let json = serde_json::to_value(&verdict).unwrap();
    assert!(
        !json.to_string().contains("vulnerability summary"),
        "{json:#}"
    );

    let without_ca = base.insecure(false);
    let verdict = verify(&image.reference, &without_ca.compile()).await;
    assert_refused_saying(
        &verdict,
        Reason::Unreachable,
        &[&registry.host, "cannot connect"],
    );
}

#[tokio::test]
async fn a_plain_http_registry_redirecting_to_https_storage_is_followed() {
    // The plain-HTTP registry's own client loads no trust store; the HTTPS URLs it redirects to are
    // read with the client that has the system roots and the caBundle.
    let storage = Registry::distribution_with_tls();
    let cosign = Cosign::with_new_key_pair();
    let image = storage.push_image("team/app", "v1", "redirected").await;
    sign_over_tls(&cosign, &storage, &image.reference);
    let front = crate::support::fakes::RedirectingRegistry::start(&storage.host);

    let ca = storage.ca_pem().unwrap().to_owned();
    let policy = PolicySpec::key(&front.host(), &cosign.public_key_pem()).ca_bundle(&ca);
    let reference = image.reference.replace(&storage.host, &front.host());
    // The storage is another host:port than the registry's: followed only once the policy names it.
    assert_refused_saying(
        &verify(&reference, &policy.compile()).await,
        Reason::Unreachable,
        &["spec.registry.redirectHosts"],
    );
    let named = policy.redirect_hosts([storage.host.as_str()]);
    assert_admitted(&verify(&reference, &named.compile()).await);
    assert!(front.requests() >= 3, "{} requests", front.requests());
}
