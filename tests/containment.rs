//! What an attacker in the cluster can make the webhook do, against real registries and real cosign
//! signatures: a registry that hangs must not refuse another registry's images, an internal service's
//! answer must not reach a refusal, open and closed ports must read the same, credentials must never
//! reach whatever listens on the webhook's own localhost:5000, and client state stays bounded.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use registryx_guard::admission::{Admission, AdmissionSettings};
use registryx_guard::policy::authority::NoSecrets;
use registryx_guard::policy::{ImageSigningPolicy, PolicySnapshot, shared};
use registryx_guard::registry::DockerConfig;
use registryx_guard::verify::{Verifier, VerifierSettings};
use support::cosign::{Cosign, Format};
use support::fakes::{HangingRegistry, RegistryxProxy};
use support::registry::Registry;
use support::verdicts::{PolicyYaml, key_policy, legacy_signed_image, reasons, verify_with};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A plain TCP service on a free loopback port that answers every request with `answer` (raw bytes),
/// counting connections.
async fn raw_service(answer: &'static [u8]) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host = listener.local_addr().unwrap().to_string();
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = connections.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buffer = [0u8; 4096];
                let read = stream.read(&mut buffer).await.unwrap_or(0);
                // A HEAD gets a success without a digest, so that the client asks again with a GET and
                // reads the body of `answer`.
                if buffer[..read].starts_with(b"HEAD ") && answer.starts_with(b"HTTP/") {
                    let _ = stream
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                        )
                        .await;
                } else {
                    let _ = stream.write_all(answer).await;
                }
                let _ = stream.shutdown().await;
            });
        }
    });
    (host, connections)
}

fn catch_all_policy(cosign: &Cosign) -> Arc<registryx_guard::policy::CompiledPolicy> {
    PolicyYaml::key("unused", &cosign.public_key_pem())
        .images("**")
        .compile()
}

#[tokio::test]
async fn an_internal_services_answer_never_reaches_a_refusal() {
    let (host, _) = raw_service(
        b"HTTP/1.1 500 Internal Server Error\r\ncontent-type: text/plain\r\ncontent-length: 36\r\nconnection: close\r\n\r\ninternal-secret: db-password=hunter2",
    )
    .await;
    let cosign = Cosign::with_new_key_pair();
    let verifier = Verifier::new(VerifierSettings::default(), None);
    let verdict = verify_with(
        &verifier,
        &format!("{host}/team/app:v1"),
        &catch_all_policy(&cosign),
        Duration::from_secs(5),
    )
    .await;
    let text = reasons(&verdict);
    assert!(!verdict.admitted());
    assert!(text.contains("HTTP 500"), "{text}");
    assert!(
        !text.contains("hunter2") && !text.contains("internal-secret"),
        "an internal body was echoed: {text}"
    );
    assert!(text.contains("not shown"), "{text}");
}

#[tokio::test]
async fn open_and_closed_ports_read_the_same() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    };
    let (open, _) = raw_service(b"SSH-2.0-OpenSSH_9.2\r\n").await;
    let cosign = Cosign::with_new_key_pair();
    let policy = catch_all_policy(&cosign);
    let verifier = Verifier::new(VerifierSettings::default(), None);
    let mut texts = Vec::new();
    for host in [&closed, &open] {
        let verdict = verify_with(
            &verifier,
            &format!("{host}/team/app:v1"),
            &policy,
            Duration::from_secs(5),
        )
        .await;
        assert!(!verdict.admitted());
        texts.push(reasons(&verdict).replace(host.as_str(), "HOST"));
    }
    assert_eq!(
        texts[0], texts[1],
        "a caller can tell open ports from closed ones"
    );
}

#[tokio::test]
async fn credentials_never_reach_the_webhooks_own_localhost_5000() {
    // Whatever listens on this machine's localhost:5000 (here: a recorder) must see nothing, even though
    // RegistryX's challenge names http://localhost:5000/auth/token.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:5000")
        .await
        .expect(
            "this test needs 127.0.0.1:5000 free: it stands for a service on the webhook's node",
        );
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    tokio::spawn(async move {
        while let Ok((_stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });
    let (upstream, cosign, _) = legacy_signed_image("realm").await;
    let proxy = RegistryxProxy::start(&upstream.host)
        .await
        .with_credentials("robot", "s3cret");
    let config = format!(
        r#"{{"auths":{{"{}":{{"username":"robot","password":"s3cret"}}}}}}"#,
        proxy.host()
    );
    let verifier = Verifier::new(
        VerifierSettings::default(),
        Some(DockerConfig::parse(config.as_bytes()).unwrap()),
    );
    let verdict = verify_with(
        &verifier,
        &format!("{}/team/app:v1", proxy.host()),
        &key_policy(&proxy.host(), &cosign),
        Duration::from_secs(10),
    )
    .await;
    assert!(verdict.admitted(), "{verdict:#?}");
    assert!(
        proxy.requests().token >= 1,
        "the registry's own token endpoint was not used"
    );
    assert_eq!(
        seen.load(Ordering::SeqCst),
        0,
        "a connection reached localhost:5000"
    );
}

#[tokio::test]
async fn a_token_realm_on_another_host_needs_the_policy_to_name_it() {
    // A registry whose challenge sends clients (and their credentials) to a host no policy names.
    let (elsewhere, contacted) =
        raw_service(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}").await;
    let challenge: &'static str = Box::leak(
        format!(
            "HTTP/1.1 401 Unauthorized\r\nwww-authenticate: Bearer realm=\"http://{}/token\",service=\"x\"\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            elsewhere.replace("127.0.0.1", "localhost.localdomain.invalid")
        )
        .into_boxed_str(),
    );
    let (registry, _) = raw_service(challenge.as_bytes()).await;
    let cosign = Cosign::with_new_key_pair();
    let verifier = Verifier::new(VerifierSettings::default(), None);
    let verdict = verify_with(
        &verifier,
        &format!("{registry}/team/app:v1"),
        &key_policy(&registry, &cosign),
        Duration::from_secs(5),
    )
    .await;
    let text = reasons(&verdict);
    assert!(!verdict.admitted());
    assert!(text.contains("spec.registry.tokenHosts"), "{text}");
    assert_eq!(contacted.load(Ordering::SeqCst), 0);
}

fn policy_for(name: &str, host: &str, pem: &str) -> ImageSigningPolicy {
    serde_yaml::from_str(&PolicyYaml::key(host, pem).named(name).yaml()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_registry_never_refuses_another_registrys_signed_images() {
    let hanging = HangingRegistry::start().await;
    let registry = Registry::distribution();
    let cosign = Cosign::with_new_key_pair();
    let signed = registry.push_image("team/app", "v1", "bulkhead").await;
    cosign.sign(&signed.reference, Format::Legacy);
    let pem = cosign.public_key_pem();
    let (snapshot, _) = PolicySnapshot::build(
        &[
            policy_for("healthy", &registry.host, &pem),
            policy_for("hanging", &hanging.host(), &pem),
        ],
        &NoSecrets,
        "registryx-guard",
        1,
    );
    let verifier = Arc::new(Verifier::new(VerifierSettings::default(), None));
    let admission = Arc::new(Admission::new(
        shared(snapshot),
        verifier,
        None,
        AdmissionSettings::default(),
        None,
    ));
    let review = |images: Vec<String>| {
        let containers: Vec<serde_json::Value> = images
            .iter()
            .enumerate()
            .map(|(i, image)| serde_json::json!({"name": format!("c{i}"), "image": image}))
            .collect();
        let fixture =
            std::fs::read_to_string(support::repo_root().join("tests/data/pod-create.json"))
                .unwrap();
        let mut review: serde_json::Value = serde_json::from_str(&fixture).unwrap();
        review["request"]["object"]["spec"] = serde_json::json!({"containers": containers});
        let request = review["request"].take();
        serde_json::from_value::<kube::core::admission::AdmissionRequest<kube::core::DynamicObject>>(request).unwrap()
    };
    // Floods of pods naming 60 distinct images of the hanging registry, each review waiting 3 s.
    let mut floods = Vec::new();
    for wave in 0..4 {
        let admission = admission.clone();
        let images = (0..60)
            .map(|i| format!("{}/flood/app{wave}-{i}:v1", hanging.host()))
            .collect();
        let request = review(images);
        floods.push(tokio::spawn(async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(3);
            admission.review(&request, deadline, false).await
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Meanwhile, signed images of the healthy registry are admitted.
    for _ in 0..5 {
        let request = review(vec![signed.by_digest()]);
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        let response = admission.review(&request, deadline, false).await;
        assert!(response.allowed, "{:?}", response.result);
    }
    for flood in floods {
        assert!(!flood.await.unwrap().allowed);
    }
}

#[tokio::test]
async fn registry_clients_stay_bounded_however_many_registries_are_named() {
    let cosign = Cosign::with_new_key_pair();
    let policy = catch_all_policy(&cosign);
    let settings = VerifierSettings {
        max_clients: 8,
        ..VerifierSettings::default()
    };
    let verifier = Verifier::new(settings, None);
    for port in 1..=40u16 {
        // Closed ports: each is a distinct registry that answers nothing.
        let verdict = verify_with(
            &verifier,
            &format!("127.0.0.1:{}/team/app:v1", 20000 + port),
            &policy,
            Duration::from_secs(2),
        )
        .await;
        assert!(!verdict.admitted());
    }
    assert!(
        verifier.client_count() <= 8,
        "{} clients held",
        verifier.client_count()
    );
}
