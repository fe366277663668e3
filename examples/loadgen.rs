//! The webhook's clients that no maintained tool replaces (BENCHMARKS.md, `make bench`): requests whose
//! answers it reads (each review's decision), crowds of loopback addresses holding connections, and a
//! registry filled with signed images in-process. The plain HTTP load runs are vegeta's (bench/load.py).
//!
//! It is an example rather than a bench target because it is a client: it needs a server, a CA and
//! review bodies that `bench/run.sh` prepares, and takes them on its command line. `cargo test
//! --all-targets` and clippy compile it, so it cannot rot, but never run it.
//!
//! ```text
//! loadgen once --url https://127.0.0.1:8443/validate --ca ca.crt --body a.json --body b.json
//! loadgen fill ... --image-prefix 127.0.0.1:5000/fill/app --digests 25000 --per-review 50
//! loadgen crowd ... --body review.json --flood idle  # reviews from 127.0.0.1 while 64 others flood
//! loadgen review IMAGE...                      # prints the review of a Pod of these images
//! ```
//!
//! `fill --sign-with` signs in-process: the 100,000 verified results of the memory figure need 25,000
//! signed images, and 25,000 `cosign sign` processes take about an hour where this takes a minute.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::{http1, http2};
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// How long one request may take before it counts as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Parser)]
#[command(about = "Load generator for registryx-guard's admission endpoints (see BENCHMARKS.md)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Sends each --body once, one after the other on one connection; prints a JSON array.
    Once(OnceArgs),
    /// Reviews of Pods whose images are distinct digests: unsigned (refused, and cached as such), or with
    /// --sign-with pushed first and signed by every given key (verified, and cached as such).
    Fill(FillArgs),
    /// Reviews from 127.0.0.1, each on a new HTTP/1.1 connection as the API server opens them, while a
    /// crowd of other loopback addresses (127.0.0.2, ...) floods the port; prints one JSON object with
    /// the reviews' success rate and latency.
    Crowd(CrowdArgs),
    /// Prints the AdmissionReview of a Pod with one container per IMAGE: the one builder of Pod reviews
    /// for bench/run.sh and bench/soak.sh as for `fill`.
    Review(ReviewArgs),
}

#[derive(Args)]
struct ReviewArgs {
    /// The Pod's name.
    #[arg(long, default_value = "web")]
    name: String,
    #[arg(required = true)]
    images: Vec<String>,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Flood {
    /// No crowd: the baseline.
    None,
    /// Connections that never send a byte.
    Idle,
    /// Connections that send the start of a ClientHello and stall.
    Handshake,
    /// TLS connections whose request body stalls after --stalled-bytes (reconnecting once answered).
    Body,
}

#[derive(Args)]
struct CrowdArgs {
    #[command(flatten)]
    target: Target,
    /// The AdmissionReview the "API server" sends.
    #[arg(long)]
    body: PathBuf,
    #[arg(long, value_enum)]
    flood: Flood,
    /// Attacking addresses: 127.0.0.2 onwards (Linux routes all of 127.0.0.0/8 to loopback).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u8).range(1..=250))]
    addresses: u8,
    /// Connections each attacking address keeps trying to hold.
    #[arg(long, default_value_t = 17)]
    per_address: usize,
    /// Bytes of each stalled body that arrive (--flood body).
    #[arg(long, default_value_t = 192 << 10)]
    stalled_bytes: usize,
    /// Seconds the crowd has to fill the server before the reviews start.
    #[arg(long, default_value_t = 3.0)]
    fill: f64,
    /// Reviews sent.
    #[arg(long, default_value_t = 100)]
    reviews: usize,
    /// Reviews per second, open loop.
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// Seconds a review may take (the API server's timeoutSeconds): later is a failure.
    #[arg(long, default_value_t = 3.0)]
    timeout: f64,
}

#[derive(Args, Clone)]
struct Target {
    /// The endpoint, e.g. https://127.0.0.1:8443/validate?timeout=10s (loopback only).
    #[arg(long)]
    url: Uri,
    /// PEM certificate of the CA that signed the server's certificate.
    #[arg(long)]
    ca: PathBuf,
    /// HTTP version: 1 (HTTP/1.1, one request at a time per connection) or 2 (multiplexed).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=2))]
    http: u8,
    /// TLS connections. HTTP/1.1 closed loop uses one per concurrent request instead.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Worker threads of the client's runtime (the pacing thread comes on top).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// A name for the run, copied into the output.
    #[arg(long, default_value = "")]
    label: String,
}

#[derive(Args)]
struct OnceArgs {
    #[command(flatten)]
    target: Target,
    /// AdmissionReviews to send, in this order.
    #[arg(long, required = true)]
    body: Vec<PathBuf>,
}

#[derive(Args)]
struct FillArgs {
    #[command(flatten)]
    target: Target,
    /// Images are `<prefix>@sha256:<hex>`, the hex a hash of (--seed, index): unique per image.
    #[arg(long)]
    image_prefix: String,
    /// Distinct digests in all.
    #[arg(long)]
    digests: usize,
    /// Containers per Pod.
    #[arg(long, default_value_t = 50)]
    per_review: usize,
    /// Reviews in flight.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    #[arg(long, default_value = "fill")]
    seed: String,
    /// PKCS#8 PEM private keys (ECDSA P-256): before any review, each image is pushed to the (plain
    /// HTTP) registry of --image-prefix as a distinct manifest, with a cosign legacy `.sig` manifest
    /// holding one signature layer per key. Repeat the flag for several keys.
    #[arg(long)]
    sign_with: Vec<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    registryx_guard::tls::install_crypto_provider();
    let cli = Cli::parse();
    let threads = match &cli.command {
        Command::Review(args) => {
            println!("{}", pod_review(&args.name, args.images.iter().cloned()));
            return Ok(());
        }
        Command::Once(a) => a.target.threads,
        Command::Fill(a) => a.target.threads,
        Command::Crowd(a) => a.target.threads,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()?;
    let output = runtime.block_on(async move {
        match cli.command {
            Command::Once(args) => once(args).await,
            Command::Fill(args) => fill(args).await,
            Command::Crowd(args) => crowd(args).await,
            Command::Review(_) => unreachable!("answered before the runtime starts"),
        }
    })?;
    println!("{output}");
    Ok(())
}

// ---------------------------------------------------------------------------------------------------
// The client: bare hyper connections over rustls, trusting one CA.

struct Client {
    target: Target,
    tls: TlsConnector,
    server_name: ServerName<'static>,
    address: String,
    path: String,
}

enum Connection {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

/// What one exchange came to.
enum Outcome {
    Allowed,
    Refused,
    Failed(String),
}

impl Client {
    fn new(target: Target) -> anyhow::Result<Arc<Client>> {
        if target.url.scheme_str() != Some("https") {
            bail!("--url must be https://");
        }
        let authority = target.url.authority().context("--url has no host")?;
        let host = authority.host().to_owned();
        let ip: std::net::IpAddr = host
            .parse()
            .context("--url must name a loopback IP address")?;
        if !ip.is_loopback() {
            bail!("refusing to load {ip}: benchmarks stay on loopback");
        }
        let port = authority.port_u16().unwrap_or(443);
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(&target.ca)
            .with_context(|| format!("read {}", target.ca.display()))?
        {
            roots.add(cert?)?;
        }
        let mut config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![if target.http == 2 {
            b"h2".to_vec()
        } else {
            b"http/1.1".to_vec()
        }];
        let path = target
            .url
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "/".into());
        Ok(Arc::new(Client {
            tls: TlsConnector::from(Arc::new(config)),
            server_name: ServerName::IpAddress(ip.into()),
            address: format!("{host}:{port}"),
            path,
            target,
        }))
    }

    async fn connect(&self) -> anyhow::Result<Connection> {
        let tcp = TcpStream::connect(&self.address)
            .await
            .with_context(|| format!("connect to {}", self.address))?;
        tcp.set_nodelay(true)?;
        let tls = self
            .tls
            .connect(self.server_name.clone(), tcp)
            .await
            .context("TLS handshake")?;
        let wanted: &[u8] = if self.target.http == 2 {
            b"h2"
        } else {
            b"http/1.1"
        };
        if tls.get_ref().1.alpn_protocol() != Some(wanted) {
            bail!(
                "the server did not negotiate {}",
                String::from_utf8_lossy(wanted)
            );
        }
        let io = TokioIo::new(tls);
        Ok(if self.target.http == 2 {
            let (sender, connection) = http2::handshake(TokioExecutor::new(), io).await?;
            tokio::spawn(connection);
            Connection::H2(sender)
        } else {
            let (sender, connection) = http1::handshake(io).await?;
            tokio::spawn(connection);
            Connection::H1(sender)
        })
    }

    fn request(&self, body: Bytes) -> Request<Full<Bytes>> {
        // HTTP/1.1 wants the origin form and a Host header; HTTP/2 takes :scheme and :authority from
        // an absolute URI.
        let builder = if self.target.http == 2 {
            Request::post(self.target.url.clone())
        } else {
            Request::post(self.path.as_str()).header(hyper::header::HOST, self.address.as_str())
        };
        builder
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .expect("a valid request")
    }
}

impl Connection {
    /// One exchange: the status and the whole body.
    async fn send(&mut self, request: Request<Full<Bytes>>) -> anyhow::Result<(StatusCode, Bytes)> {
        let response = match self {
            Connection::H1(sender) => {
                sender.ready().await?;
                sender.send_request(request).await?
            }
            Connection::H2(sender) => {
                sender.ready().await?;
                sender.send_request(request).await?
            }
        };
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }

    fn shared(&self) -> Option<http2::SendRequest<Full<Bytes>>> {
        match self {
            Connection::H2(sender) => Some(sender.clone()),
            Connection::H1(_) => None,
        }
    }

    async fn exchange(&mut self, client: &Client, body: Bytes) -> Outcome {
        match tokio::time::timeout(REQUEST_TIMEOUT, self.send(client.request(body))).await {
            Err(_) => Outcome::Failed(format!("no answer within {REQUEST_TIMEOUT:?}")),
            Ok(Err(error)) => Outcome::Failed(format!("{error:#}")),
            Ok(Ok((status, body))) if status != StatusCode::OK => Outcome::Failed(format!(
                "HTTP {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            )),
            Ok(Ok((_, body))) => {
                // axum writes compact JSON; searching the bytes spares the client a parse per request.
                if contains(&body, br#""allowed":true"#) {
                    Outcome::Allowed
                } else if contains(&body, br#""allowed":false"#) {
                    Outcome::Refused
                } else {
                    Outcome::Failed(format!(
                        "not an AdmissionReview: {}",
                        String::from_utf8_lossy(&body[..body.len().min(200)])
                    ))
                }
            }
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

// ---------------------------------------------------------------------------------------------------
// Recording

struct Stats {
    /// From the intended send time (the crowd's paced reviews) or the send time (fill).
    latency: Histogram<u64>,
    allowed: u64,
    refused: u64,
    errors: u64,
    first_error: Option<String>,
    last_completion: Option<Instant>,
}

type Shared = Arc<Mutex<Stats>>;

impl Stats {
    fn shared() -> Shared {
        let histogram = || Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid bounds");
        Arc::new(Mutex::new(Stats {
            latency: histogram(),
            allowed: 0,
            refused: 0,
            errors: 0,
            first_error: None,
            last_completion: None,
        }))
    }
}

fn record(stats: &Shared, intended: Instant, outcome: Outcome) {
    let done = Instant::now();
    let mut stats = stats.lock().unwrap_or_else(PoisonError::into_inner);
    match outcome {
        Outcome::Allowed => stats.allowed += 1,
        Outcome::Refused => stats.refused += 1,
        Outcome::Failed(error) => {
            stats.errors += 1;
            stats.first_error.get_or_insert(error);
            return;
        }
    }
    let micros = (done.duration_since(intended).as_micros() as u64).max(1);
    stats.latency.saturating_record(micros);
    stats.last_completion = Some(done);
}

fn percentiles(h: &Histogram<u64>) -> Value {
    json!({
        "p50": h.value_at_quantile(0.50),
        "p90": h.value_at_quantile(0.90),
        "p99": h.value_at_quantile(0.99),
        "p999": h.value_at_quantile(0.999),
        "max": h.max(),
        "mean": (h.mean() * 10.0).round() / 10.0,
    })
}

// ---------------------------------------------------------------------------------------------------
// crowd

/// The start of a TLS ClientHello whose record announces 512 bytes; the rest never comes.
const PARTIAL_CLIENT_HELLO: &[u8] = &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03];
/// How long an attacker waits before reconnecting once the server closed its connection.
const RECONNECT_PAUSE: Duration = Duration::from_millis(200);

async fn crowd(args: CrowdArgs) -> anyhow::Result<Value> {
    let client = Client::new(args.target.clone())?;
    let body = Bytes::from(
        std::fs::read(&args.body).with_context(|| format!("read {}", args.body.display()))?,
    );
    let connects = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut attackers = tokio::task::JoinSet::new();
    if !matches!(args.flood, Flood::None) {
        let mut slot = 0u64;
        for _ in 0..args.per_address {
            for last in 2..2 + args.addresses {
                let (client, connects) = (client.clone(), connects.clone());
                // About 1,000 new connections a second: a burst of thousands of SYNs overflows the
                // listen queue and measures the kernel's retransmission timer instead.
                let start_after = Duration::from_millis(slot);
                slot += 1;
                let (flood, stalled) = (args.flood, args.stalled_bytes);
                attackers.spawn(async move {
                    tokio::time::sleep(start_after).await;
                    loop {
                        connects.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let _ = attack(&client, [127, 0, 0, last], flood, stalled).await;
                        tokio::time::sleep(RECONNECT_PAUSE).await;
                    }
                });
            }
        }
    }
    tokio::time::sleep(Duration::from_secs_f64(args.fill)).await;

    let stats = Stats::shared();
    let timeout = Duration::from_secs_f64(args.timeout);
    let start = Instant::now();
    let mut reviews = tokio::task::JoinSet::new();
    for i in 0..args.reviews {
        let intended = start + Duration::from_secs_f64(i as f64 / args.rate);
        tokio::time::sleep_until(intended.into()).await;
        let (client, body, stats) = (client.clone(), body.clone(), stats.clone());
        reviews.spawn(async move {
            let outcome = match tokio::time::timeout(timeout, async {
                let mut connection = client.connect().await?;
                anyhow::Ok(connection.exchange(&client, body).await)
            })
            .await
            {
                Err(_) => Outcome::Failed(format!("no answer within {timeout:?}")),
                Ok(Err(error)) => Outcome::Failed(format!("{error:#}")),
                Ok(Ok(outcome)) => outcome,
            };
            record(&stats, intended, outcome);
        });
    }
    while reviews.join_next().await.is_some() {}
    attackers.abort_all();
    let stats = stats.lock().unwrap_or_else(PoisonError::into_inner);
    let answered = stats.allowed + stats.refused;
    Ok(json!({
        "label": args.target.label,
        "flood": format!("{:?}", args.flood).to_lowercase(),
        "addresses": if matches!(args.flood, Flood::None) { 0 } else { args.addresses },
        "per_address": args.per_address,
        "attacker_connects": connects.load(std::sync::atomic::Ordering::Relaxed),
        "reviews": args.reviews,
        "answered": answered,
        "success_rate": answered as f64 / args.reviews.max(1) as f64,
        "errors": stats.errors,
        "first_error": stats.first_error,
        "timeout_s": args.timeout,
        "latency_us": percentiles(&stats.latency),
    }))
}

/// One attacker connection from `source`, held until the server closes it.
async fn attack(
    client: &Client,
    source: [u8; 4],
    flood: Flood,
    stalled: usize,
) -> anyhow::Result<()> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind((std::net::Ipv4Addr::from(source), 0).into())?;
    let tcp = socket.connect(client.address.parse()?).await?;
    match flood {
        Flood::None => Ok(()),
        Flood::Idle | Flood::Handshake => {
            if let Flood::Handshake = flood {
                let _ = tcp.try_write(PARTIAL_CLIENT_HELLO);
            }
            let mut sink = [0u8; 512];
            loop {
                tcp.readable().await?;
                match tcp.try_read(&mut sink) {
                    Ok(0) => return Ok(()),
                    Ok(_) => {}
                    Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(error) => return Err(error.into()),
                }
            }
        }
        Flood::Body => {
            let tls = client.tls.connect(client.server_name.clone(), tcp).await?;
            let (mut sender, connection) = http1::handshake(TokioIo::new(tls)).await?;
            tokio::spawn(connection);
            let head = futures::stream::iter([Ok::<_, std::convert::Infallible>(
                hyper::body::Frame::data(Bytes::from(vec![b' '; stalled])),
            )]);
            let body = futures::StreamExt::chain(head, futures::stream::pending());
            let request = Request::post(client.path.as_str())
                .header(hyper::header::HOST, client.address.as_str())
                .header(hyper::header::CONTENT_LENGTH, 2 << 20)
                .body(http_body_util::StreamBody::new(body))?;
            // Answered (408 once the body times out, or 503 when a lighter caller took its budget).
            let _ = sender.send_request(request).await?;
            Ok(())
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// once

async fn once(args: OnceArgs) -> anyhow::Result<Value> {
    let client = Client::new(args.target.clone())?;
    let mut connection = client.connect().await?;
    let mut results = Vec::new();
    for path in &args.body {
        let body =
            Bytes::from(std::fs::read(path).with_context(|| format!("read {}", path.display()))?);
        let images = serde_json::from_slice::<Value>(&body)
            .ok()
            .map(|review| count_images(&review["request"]["object"]))
            .unwrap_or(0);
        let started = Instant::now();
        let (status, answer) =
            tokio::time::timeout(REQUEST_TIMEOUT, connection.send(client.request(body)))
                .await
                .context("no answer in time")??;
        let elapsed = started.elapsed();
        let answer: Value = serde_json::from_slice(&answer).unwrap_or(Value::Null);
        results.push(json!({
            "label": args.target.label,
            "body": path.display().to_string(),
            "images": images,
            "status": status.as_u16(),
            "latency_ms": (elapsed.as_secs_f64() * 1e5).round() / 100.0,
            "allowed": answer["response"]["allowed"],
            "message": answer["response"]["status"]["message"],
        }));
    }
    Ok(Value::from(results))
}

fn count_images(object: &Value) -> usize {
    ["initContainers", "containers"]
        .iter()
        .filter_map(|field| object["spec"][field].as_array())
        .map(Vec::len)
        .sum()
}

// ---------------------------------------------------------------------------------------------------
// fill

async fn fill(args: FillArgs) -> anyhow::Result<Value> {
    let client = Client::new(args.target.clone())?;
    let per_review = args.per_review.max(1);
    let pushing = Instant::now();
    let images: Vec<String> = if args.sign_with.is_empty() {
        (0..args.digests)
            .map(|i| {
                let hex = hex::encode(Sha256::digest(format!("{}-{i}", args.seed)));
                format!("{}@sha256:{hex}", args.image_prefix)
            })
            .collect()
    } else {
        push_signed(&args).await?
    };
    let push_s = pushing.elapsed().as_secs_f64();
    let reviews: Vec<Bytes> = images
        .chunks(per_review)
        .enumerate()
        .map(|(r, chunk)| {
            Bytes::from(pod_review(&format!("fill-{r}"), chunk.iter().cloned()).to_string())
        })
        .collect();
    let queue = Arc::new(Mutex::new(reviews.into_iter()));
    let stats = Stats::shared();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let shared = client.connect().await?;
    for _ in 0..args.concurrency.max(1) {
        let mut connection = match shared.shared() {
            Some(sender) => Connection::H2(sender),
            None => client.connect().await?,
        };
        let (client, queue, stats) = (client.clone(), queue.clone(), stats.clone());
        tasks.spawn(async move {
            loop {
                let next = queue.lock().unwrap_or_else(PoisonError::into_inner).next();
                let Some(body) = next else { return };
                let sent = Instant::now();
                let outcome = connection.exchange(&client, body).await;
                record(&stats, sent, outcome);
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = started.elapsed().as_secs_f64();
    let stats = stats.lock().unwrap_or_else(PoisonError::into_inner);
    Ok(json!({
        "label": args.target.label,
        "digests": args.digests,
        "signed_by": args.sign_with.len(),
        "push_s": (push_s * 100.0).round() / 100.0,
        "per_review": per_review,
        "reviews": stats.allowed + stats.refused,
        "allowed": stats.allowed,
        "refused": stats.refused,
        "errors": stats.errors,
        "first_error": stats.first_error,
        "elapsed_s": (elapsed * 100.0).round() / 100.0,
        "digests_per_s": (args.digests as f64 / elapsed).round(),
        "review_latency_us": percentiles(&stats.latency),
    }))
}

/// Pushes `--digests` distinct image manifests to the registry of `--image-prefix` (plain HTTP), image i
/// in repository `<prefix><i>`, each with a cosign legacy `.sig` manifest signed by every `--sign-with`
/// key, 16 images at a time; returns the images by digest. What cosign would write, made here because
/// signing 25,000 images with the cosign CLI would take most of an hour. One repository per image
/// because go-containerregistry's registry answers the referrers API by scanning every manifest of the
/// repository: thousands in one would make the registry, not the webhook, the measured limit.
async fn push_signed(args: &FillArgs) -> anyhow::Result<Vec<String>> {
    use futures::StreamExt as _;
    use rcgen::SigningKey as _;
    let keys = args
        .sign_with
        .iter()
        .map(|path| {
            let pem = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            rcgen::KeyPair::from_pem(&pem)
                .with_context(|| format!("{} as a PKCS#8 key", path.display()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let (registry, repository) = args
        .image_prefix
        .split_once('/')
        .context("--image-prefix is registry/repository")?;
    let http = reqwest::Client::new();
    // One upload (a monolithic blob POST or a manifest PUT) that must succeed.
    let send = |request: reqwest::RequestBuilder, what: String| async move {
        let response = request.send().await?;
        if !response.status().is_success() {
            bail!("{what}: {}", response.status());
        }
        anyhow::Ok(())
    };
    let put_blob = |base: String, bytes: Vec<u8>| {
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        let request = http
            .post(format!("{base}/blobs/uploads/?digest={digest}"))
            .header("content-type", "application/octet-stream")
            .body(bytes);
        send(request, format!("blob {digest}"))
    };
    let put_manifest = |base: String, reference: String, manifest: Vec<u8>| {
        let request = http
            .put(format!("{base}/manifests/{reference}"))
            .header("content-type", "application/vnd.oci.image.manifest.v1+json")
            .body(manifest);
        send(request, format!("manifest {reference}"))
    };
    let config = b"{}".to_vec();
    let config_size = config.len();
    let config_digest = format!("sha256:{}", hex::encode(Sha256::digest(&config)));
    let (keys, config) = (&keys, &config);
    let (put_blob, put_manifest, config_digest) = (&put_blob, &put_manifest, &config_digest);
    futures::stream::iter(0..args.digests)
        .map(|i| async move {
            let base = format!("http://{registry}/v2/{repository}{i}");
            put_blob(base.clone(), config.to_vec()).await?;
            let image = serde_json::to_vec(&json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
                "layers": [],
                "annotations": {"org.example.fill": format!("{}-{i}", args.seed)},
            }))?;
            let hex = hex::encode(Sha256::digest(&image));
            put_manifest(base.clone(), format!("sha256:{hex}"), image).await?;
            let payload = serde_json::to_vec(&json!({
                "critical": {
                    "identity": {"docker-reference": format!("{registry}/{repository}{i}")},
                    "image": {"docker-manifest-digest": format!("sha256:{hex}")},
                    "type": "cosign container image signature",
                },
                "optional": null,
            }))?;
            let payload_size = payload.len();
            let layers = keys
                .iter()
                .map(|key| {
                    let signature = key.sign(&payload)?;
                    anyhow::Ok(json!({
                        "mediaType": "application/vnd.dev.cosign.simplesigning.v1+json",
                        "digest": format!("sha256:{}", hex::encode(Sha256::digest(&payload))),
                        "size": payload_size,
                        "annotations": {"dev.cosignproject.cosign/signature": BASE64.encode(signature)},
                    }))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            put_blob(base.clone(), payload).await?;
            let signatures = serde_json::to_vec(&json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
                "layers": layers,
            }))?;
            put_manifest(base, format!("sha256-{hex}.sig"), signatures).await?;
            anyhow::Ok(format!("{}{i}@sha256:{hex}", args.image_prefix))
        })
        .buffered(16)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

/// An AdmissionReview creating a Pod named `name` with one container per image: tests/data/pod-create.json
/// with its containers replaced, the fixture every test and bench body starts from.
fn pod_review(name: &str, images: impl Iterator<Item = String>) -> Value {
    let mut review: Value = serde_json::from_str(include_str!("../tests/data/pod-create.json"))
        .expect("tests/data/pod-create.json is JSON");
    let containers: Vec<Value> = images
        .enumerate()
        .map(|(i, image)| json!({"name": format!("c{i}"), "image": image}))
        .collect();
    review["request"]["name"] = json!(name);
    review["request"]["object"]["metadata"]["name"] = json!(name);
    review["request"]["object"]["spec"] = json!({ "containers": containers });
    review
}
