//! What an attacker in the cluster can make the webhook do, against real registries and real cosign
//! signatures: a registry that hangs must not refuse another registry's images, an internal service's
//! answer must not reach a refusal, open and closed ports must read the same, credentials must never
//! reach whatever listens on the webhook's own localhost:5000, and client state stays bounded.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::support::cosign::{Cosign, Format};
use crate::support::fakes::{HangingRegistry, RegistryxProxy, Scripted};
use crate::support::policy::PolicySpec;
use crate::support::registry::Registry;
use crate::support::verdicts::{key_policy, legacy_signed_image, reasons, verify_with};
use crate::support::webhook::Webhook;
use axum::response::IntoResponse as _;
use registryx_guard::admission::{Admission, AdmissionSettings};
use registryx_guard::policy::authority::NoSecrets;
use registryx_guard::policy::{ImageSigningPolicy, Mode, PolicySnapshot, shared};
use registryx_guard::registry::DockerConfig;
use registryx_guard::verify::{Verifier, VerifierSettings};
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
    PolicySpec::key("unused", &cosign.public_key_pem())
        .images(["**"])
        .compile()
}

#[tokio::test]
async fn an_internal_services_answer_never_reaches_a_refusal() {
    let _room = crate::support::serial::room("containment");
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
    // An answer without a registry's own error reads as no registry at all (its status included).
    assert!(text.contains("no registry answered"), "{text}");
    assert!(
        !text.contains("hunter2") && !text.contains("internal-secret"),
        "an internal body was echoed: {text}"
    );
}

#[tokio::test]
async fn open_and_closed_ports_read_the_same() {
    let _room = crate::support::serial::room("containment");
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
    let _room = crate::support::serial::room("containment");
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
    let _room = crate::support::serial::room("containment");
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
    PolicySpec::key(host, pem).named(name).policy()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_registry_never_refuses_another_registrys_signed_images() {
    let _room = crate::support::serial::room("containment");
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
    let review = |images: Vec<String>| pod_review(&images);
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
    let _room = crate::support::serial::room("containment");
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

/// A pod review of `images`, from the CREATE fixture.
fn pod_review(
    images: &[String],
) -> kube::core::admission::AdmissionRequest<kube::core::DynamicObject> {
    let containers: Vec<serde_json::Value> = images
        .iter()
        .enumerate()
        .map(|(i, image)| serde_json::json!({"name": format!("c{i}"), "image": image}))
        .collect();
    let fixture =
        std::fs::read_to_string(crate::support::repo_root().join("tests/data/pod-create.json"))
            .unwrap();
    let mut review: serde_json::Value = serde_json::from_str(&fixture).unwrap();
    review["request"]["object"]["spec"] = serde_json::json!({"containers": containers});
    serde_json::from_value(review["request"].take()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_made_up_tag_never_picks_the_weaker_policy_for_a_digest() {
    let _room = crate::support::serial::room("containment");
    // Policies split by tag: prod enforced with one key, dev only warned about with another.
    let registry = Registry::distribution();
    let (prod_key, dev_key) = (Cosign::with_new_key_pair(), Cosign::with_new_key_pair());
    let prod = registry
        .push_image("team/app", "prod-1", "bytes-prod")
        .await;
    let dev = registry.push_image("team/app", "dev-1", "bytes-dev").await;
    dev_key.sign(&dev.reference, Format::Legacy);
    let split = |name: &str, tags: &str, key: &Cosign, mode: Mode| -> ImageSigningPolicy {
        PolicySpec::key(&registry.host, &key.public_key_pem())
            .named(name)
            .images([format!("{}/team/app:{tags}", registry.host).as_str()])
            .mode(mode)
            .policy()
    };
    let (snapshot, _) = PolicySnapshot::build(
        &[
            split("prod", "prod-*", &prod_key, Mode::Enforce),
            split("dev", "dev-*", &dev_key, Mode::Warn),
        ],
        &NoSecrets,
        "registryx-guard",
        1,
    );
    let admission = Admission::new(
        shared(snapshot),
        Arc::new(Verifier::new(VerifierSettings::default(), None)),
        None,
        AdmissionSettings::default(),
        None,
    );
    let decide = |image: String| {
        let request = pod_review(&[image]);
        let admission = &admission;
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            admission.review(&request, deadline, false).await
        }
    };
    let at = |tag: &str, digest: &str| format!("{}/team/app:{tag}@{digest}", registry.host);

    // A dev tag that never existed on the never-signed prod bytes: decided as the digest alone is,
    // so the enforced prod policy refuses it.
    for made_up in [at("dev-anything", &prod.digest), at("dev-1", &prod.digest)] {
        let response = decide(made_up.clone()).await;
        assert!(
            !response.allowed,
            "{made_up} admitted: {:?}",
            response.warnings
        );
        assert!(
            response.result.message.contains("policy prod"),
            "{}",
            response.result.message
        );
    }
    // The dev bytes under a prod tag that names other bytes: refused too (prod's key never signed).
    assert!(!decide(at("prod-1", &dev.digest)).await.allowed);
    // The dev bytes under the dev tag that really names them (what pinning writes): the dev policy
    // decides, and its signature passes.
    let pinned = decide(at("dev-1", &dev.digest)).await;
    assert!(pinned.allowed, "{}", pinned.result.message);
    assert!(pinned.warnings.is_none(), "{:?}", pinned.warnings);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registries_answering_megabytes_grow_neither_the_heap_nor_the_refusals() {
    let _room = crate::support::serial::room("containment");
    // Two governed registries answer every manifest with one 3.5 MB JSON string: the signature's
    // parse error would quote it, and 96 images read at once would hold gigabytes.
    let payload = Arc::new(format!("\"{}\"", "A".repeat(3_500_000)));
    let registries: Vec<Scripted> = (0..2)
        .map(|i| {
            let payload = payload.clone();
            Scripted::start(&format!("megabytes-{i}"), move |_, path| {
                if path.contains("/manifests/") {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/vnd.oci.image.manifest.v1+json",
                        )],
                        payload.as_str().to_owned(),
                    )
                        .into_response()
                } else {
                    (axum::http::StatusCode::NOT_FOUND, "404 page not found").into_response()
                }
            })
        })
        .collect();
    let cosign = Cosign::with_new_key_pair();
    let policy = PolicySpec::key("unused", &cosign.public_key_pem())
        .images(["127.0.0.1:*/**"])
        .yaml();
    let webhook = Webhook::start(&policy, &[]);
    let baseline = webhook.memory_mib("VmRSS");
    let client = crate::support::webhook::client();
    let mut reviews = Vec::new();
    for wave in 0..6 {
        let images: Vec<String> = (0..16)
            .map(|i| format!("{}/team/app{wave}-{i}:v1", registries[i % 2].host()))
            .collect();
        let request = client
            .post(webhook.validate_url(20))
            .header("content-type", "application/json")
            .body(crate::support::webhook::pod_review(&images));
        reviews.push(tokio::spawn(async move {
            let answer = request.send().await.unwrap();
            assert_eq!(answer.status(), 200);
            answer.bytes().await.unwrap()
        }));
    }
    for review in reviews {
        let body = review.await.unwrap();
        // 16 refusals of at most 4 KiB each, under the 32 KiB cap of one message.
        assert!(
            body.len() < 48 << 10,
            "an AdmissionReview of {} bytes",
            body.len()
        );
        let text = String::from_utf8_lossy(&body);
        assert!(
            !text.contains("AAAAAAAA"),
            "the registry's bytes are quoted"
        );
        let review: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(review["response"]["allowed"], false, "{text}");
    }
    let peak = webhook.memory_mib("VmHWM");
    eprintln!("peak RSS {peak} MiB, baseline {baseline} MiB");
    assert!(
        peak < 256,
        "peak RSS {peak} MiB (baseline {baseline} MiB) over the chart's 256 MiB limit"
    );
    let requests: usize = registries.iter().map(Scripted::requests).sum();
    assert!(requests >= 96, "only {requests} registry requests");
}
