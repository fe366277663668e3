//! Floods against the real server process over TLS (loopback only, bounded in count and time): stalled
//! and oversized bodies on many connections, unauthenticated push events with huge names. Each asserts
//! the bound the README states: memory stays under a ceiling, the server keeps answering, 413 on both
//! HTTP/1.1 and HTTP/2.

mod support;

use std::process::Child;
use std::time::{Duration, Instant};

use support::free_port;

/// Resident memory the server may reach under any flood below: the 64 MiB body budget, the baseline
/// (~30 MiB) and headroom for connection buffers.
const RSS_CEILING_MIB: u64 = 160;

struct Server {
    child: Child,
    https: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const TOKEN: &str = "flood-test-token-0123456789";

fn start_server() -> Server {
    let dir = tempfile::tempdir().unwrap();
    support::serve_files(
        dir.path(),
        "apiVersion: registryx.io/v1alpha1\nkind: ImageSigningPolicy\nmetadata: {name: p}\nspec:\n  images: ['r.example/**']\n  signatureRequired: false\n",
    );
    let (probes, https) = (free_port(), free_port());
    let child = support::serve_command(dir.path(), probes, https)
        .env("RXG_EVENTS_TOKEN", TOKEN)
        .env("RXG_LOG", "warn")
        .stderr(std::fs::File::create(dir.path().join("server.log")).unwrap())
        .spawn()
        .unwrap();
    let ready = format!("http://127.0.0.1:{probes}/readyz");
    let start = Instant::now();
    let mut child = child;
    while support::process::http_status(&ready) != Some(200) {
        let exited = child.try_wait().unwrap();
        let log = || std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();
        assert!(exited.is_none(), "server exited ({exited:?}): {}", log());
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "server never ready: {}",
            log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Server {
        child,
        https,
        _dir: dir,
    }
}

fn rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib / 1024
}

fn client(http2: bool) -> reqwest::Client {
    client_from(http2, [127, 0, 0, 1])
}

/// A client whose connections come from `source` (any 127.0.0.0/8 address reaches the server): another
/// peer, as far as the server can tell.
fn client_from(http2: bool, source: [u8; 4]) -> reqwest::Client {
    registryx_guard::tls::install_crypto_provider();
    let builder = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .local_address(std::net::IpAddr::from(source))
        .timeout(Duration::from_secs(30));
    if http2 {
        builder.http2_prior_knowledge().build().unwrap()
    } else {
        builder.http1_only().build().unwrap()
    }
}

/// An AdmissionReview of one pod naming `image`.
fn review(image: &str) -> String {
    std::fs::read_to_string(support::repo_root().join("tests/data/cronjob-create.json"))
        .unwrap()
        .replace("APP_IMAGE", image)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_bodies_on_many_connections_stay_within_the_memory_ceiling() {
    let server = start_server();
    let url = format!("https://127.0.0.1:{}/validate", server.https);
    let baseline = rss_mib(server.child.id());
    // 100 connections, each sending most of a 3 MiB body and then nothing.
    let mut stalled = Vec::new();
    for _ in 0..100 {
        let client = client(false);
        let url = url.clone();
        stalled.push(tokio::spawn(async move {
            let chunk = bytes::Bytes::from(vec![b' '; 256 << 10]);
            let head =
                futures::stream::iter((0..11).map(move |_| Ok::<_, std::io::Error>(chunk.clone())));
            let body = futures::StreamExt::chain(head, futures::stream::pending());
            client
                .post(&url)
                .header("content-length", (3 << 20).to_string())
                .body(reqwest::Body::wrap_stream(body))
                .send()
                .await
                .map(|r| r.status().as_u16())
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let peak = rss_mib(server.child.id());
    assert!(
        peak < RSS_CEILING_MIB,
        "RSS {peak} MiB (baseline {baseline} MiB) with 100 stalled bodies"
    );
    // A genuine review still gets its answer (at worst once stalled bodies time out).
    let started = Instant::now();
    let answer = client(false)
        .post(&url)
        .body(review("elsewhere.example/app:1"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert!(started.elapsed() < Duration::from_secs(10));
    // The stalled callers are cut off by the body timeout.
    for caller in stalled {
        let status = caller.await.unwrap();
        assert!(
            matches!(status, Ok(408) | Err(_)),
            "a stalled body was answered {status:?}"
        );
    }
    assert!(rss_mib(server.child.id()) < RSS_CEILING_MIB);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_are_413_on_http1_and_http2() {
    let server = start_server();
    let url = format!("https://127.0.0.1:{}/validate", server.https);
    for http2 in [false, true] {
        let response = client(http2)
            .post(&url)
            .body(vec![b' '; 4 << 20])
            .send()
            .await
            .unwrap();
        let expected = if http2 {
            reqwest::Version::HTTP_2
        } else {
            reqwest::Version::HTTP_11
        };
        assert_eq!(response.version(), expected);
        assert_eq!(response.status(), 413, "http2={http2}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_push_events_cost_nothing() {
    let server = start_server();
    let url = format!("https://127.0.0.1:{}/registryx/events", server.https);
    let client = client(false);
    let huge = format!(
        r#"{{"action":"push","repository":"{}","tag":"v1"}}"#,
        "a".repeat(3 << 20)
    );
    for _ in 0..240 {
        let status = client
            .post(&url)
            .body(huge.clone())
            .send()
            .await
            .map(|r| r.status().as_u16());
        assert!(matches!(status, Ok(401) | Err(_)), "{status:?}");
    }
    let rss = rss_mib(server.child.id());
    assert!(
        rss < 100,
        "RSS {rss} MiB after 240 huge unauthenticated events"
    );
    // With the token, a genuine event is accepted while the flood goes on.
    let status = client
        .post(format!("{url}?token={TOKEN}"))
        .body(r#"{"action":"push","repository":"team/app","tag":"v1"}"#)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_peer_stalling_bodies_does_not_hold_up_anothers_reviews() {
    let server = start_server();
    let url = format!("https://127.0.0.1:{}/validate", server.https);
    // 40 stalled bodies of 1 MiB from 127.0.0.2: more than its share of the body budget.
    let mut stalled = Vec::new();
    for _ in 0..40 {
        let (client, url) = (client_from(false, [127, 0, 0, 2]), url.clone());
        stalled.push(tokio::spawn(async move {
            let chunk = bytes::Bytes::from(vec![b' '; 1 << 20]);
            let head = futures::stream::iter([Ok::<_, std::io::Error>(chunk)]);
            let body = futures::StreamExt::chain(head, futures::stream::pending());
            let _ = client
                .post(&url)
                .header("content-length", (2 << 20).to_string())
                .body(reqwest::Body::wrap_stream(body))
                .send()
                .await;
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The API server's reviews, from another address, are answered at once, not after the stall.
    let started = Instant::now();
    for _ in 0..5 {
        let answer = client(false)
            .post(&url)
            .body(review("elsewhere.example/app:1"))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "reviews waited behind another peer's stalled bodies: {:?}",
        started.elapsed()
    );
    for caller in stalled {
        caller.abort();
    }
}
