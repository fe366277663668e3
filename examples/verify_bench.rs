//! Cold verification, measured in-process with the library's own `Verifier` (BENCHMARKS.md, `make bench`):
//! the wall time and the registry requests (`Verifier::registry_requests`) of verifying images that are
//! not in the cache, one at a time and as a batch, optionally through a proxy that adds a fixed delay to
//! every registry request, so that the number of sequential round trips shows in the wall time.
//!
//! An example, like `loadgen`, because it needs the registries and the signed images that
//! `bench/run.sh` prepares; `cargo test --all-targets` compiles it and never runs it.
//!
//! ```text
//! verify_bench --policy policy.yaml --images images.txt [--rtt-ms 20] [--label legacy]
//! ```
//!
//! `images.txt` holds one reference per line, all on one registry, none verified before by anyone in
//! this process. The first one warms a fresh verifier (its connections to the registry); each of the
//! others is then verified on its own, in turn (`per_image`; behind the proxy, with the number of
//! sequential round trips it took). Then a fresh verifier verifies 20 of the images at once, as the
//! containers of one Pod are (`twenty_at_once`), and the whole list is verified again by two fresh
//! verifiers: one image after another (`sequential`) and all at once with `join_all` (`concurrent`).
//! Prints one JSON object.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use clap::Parser;
use futures::future::join_all;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use registryx_guard::policy::authority::NoSecrets;
use registryx_guard::policy::{CompiledPolicy, compile, load_file};
use registryx_guard::registry::{ImageRef, RegistryClient, RegistryConfig};
use registryx_guard::verify::{Freshness, Verifier, VerifierSettings};
use serde_json::{Value, json};

/// What one batch may take at most.
const BUDGET: Duration = Duration::from_secs(120);

#[derive(Parser)]
#[command(about = "Cold verification timings and registry round trips (see BENCHMARKS.md)")]
struct Args {
    /// ImageSigningPolicy YAML governing the images.
    #[arg(long)]
    policy: PathBuf,
    /// One image reference per line (tags or digests), all on one loopback registry.
    #[arg(long)]
    images: PathBuf,
    /// Send every registry request through a local proxy that holds it this long first.
    #[arg(long, default_value_t = 0)]
    rtt_ms: u64,
    /// A name for the run, copied into the output.
    #[arg(long, default_value = "")]
    label: String,
    /// The registry's process: its CPU time during the twenty-at-once batch is reported
    /// (`registry_cpu_ms`), to tell the registry's own work from the verifier's waiting.
    #[arg(long)]
    registry_pid: Option<u32>,
}

/// User and system CPU time of `pid` so far, in milliseconds (`/proc/<pid>/stat`, 100 ticks a second).
fn cpu_ms(pid: Option<u32>) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid?)).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks * 10.0)
}

fn main() -> anyhow::Result<()> {
    registryx_guard::tls::install_crypto_provider();
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let output = runtime.block_on(run(args))?;
    println!("{output}");
    Ok(())
}

async fn run(args: Args) -> anyhow::Result<Value> {
    let text = std::fs::read_to_string(&args.images)
        .with_context(|| format!("read {}", args.images.display()))?;
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    // One-time costs of a process, which `registryx-guard verify` pays on every run: the first parse of
    // an image reference (it builds the reference grammar's regex) and a registry client (its HTTP
    // client loads the system's root certificates).
    let started = Instant::now();
    let first = ImageRef::parse(lines.first().context("no image listed")?)?;
    let first_parse_ms = started.elapsed().as_secs_f64() * 1e3;
    let started = Instant::now();
    ImageRef::parse(lines[0])?;
    let next_parse_us = started.elapsed().as_secs_f64() * 1e6;
    let started = Instant::now();
    let config = RegistryConfig {
        insecure: true,
        ..RegistryConfig::default()
    };
    RegistryClient::new(&first, config)?;
    let client_ms = started.elapsed().as_secs_f64() * 1e3;
    let startup = json!({
        "first_parse_ms": round2(first_parse_ms),
        "next_parse_us": round2(next_parse_us),
        "registry_client_ms": round2(client_ms),
    });

    let mut images: Vec<ImageRef> = lines
        .iter()
        .map(|line| ImageRef::parse(line))
        .collect::<Result<_, _>>()?;
    if images.len() < 2 {
        bail!("{} lists fewer than 2 images", args.images.display());
    }
    let upstream = images[0].registry.clone();
    if !upstream.starts_with("127.0.0.1:") {
        bail!("{upstream}: benchmarks stay on loopback");
    }
    let mut policies = load_file(&args.policy)?;
    let proxy = if args.rtt_ms > 0 {
        let proxy = DelayProxy::start(&upstream, Duration::from_millis(args.rtt_ms)).await?;
        for image in &mut images {
            image.registry = proxy.address.clone();
        }
        for policy in &mut policies {
            policy.spec.images.push(format!("{}/**", proxy.address));
        }
        Some(proxy)
    } else {
        None
    };
    let policies: Vec<Arc<CompiledPolicy>> = policies
        .iter()
        .map(|p| compile(p, &NoSecrets, "registryx-guard").map(Arc::new))
        .collect::<Result<_, _>>()?;
    let governing = |image: &ImageRef| -> Vec<Arc<CompiledPolicy>> {
        policies
            .iter()
            .filter(|p| p.governs(image))
            .cloned()
            .collect()
    };
    if governing(&images[0]).is_empty() {
        bail!(
            "no policy of {} governs {}",
            args.policy.display(),
            images[0]
        );
    }

    // 1. A fresh verifier, warmed by the first image; then every other image, each on its own. Behind
    //    the proxy, the registry requests of each verification are grouped into waves of requests that
    //    arrived together: the sequential round trips.
    let verifier = Verifier::new(VerifierSettings::default(), None);
    let (first_ms, first_requests, first_admitted) = timed(&verifier, &images[0], &governing).await;
    let mut per_image_ms = Vec::new();
    let mut per_image_requests = Vec::new();
    let mut round_trips = Vec::new();
    let mut admitted = usize::from(first_admitted);
    for image in &images[1..] {
        if let Some(proxy) = &proxy {
            proxy.arrivals();
        }
        let (ms, requests, ok) = timed(&verifier, image, &governing).await;
        per_image_ms.push(ms);
        per_image_requests.push(requests);
        if let Some(proxy) = &proxy {
            round_trips.push(waves(proxy.arrivals(), proxy.delay / 2));
        }
        admitted += usize::from(ok);
    }
    // The same images again: all answered from the cache, no request.
    let before = verifier.registry_requests();
    let cached_started = Instant::now();
    for image in &images {
        verifier
            .verify(
                image,
                &governing(image),
                Freshness::Cached,
                Instant::now() + BUDGET,
            )
            .await;
    }
    let cached_us = cached_started.elapsed().as_secs_f64() * 1e6 / images.len() as f64;
    let cached_requests = verifier.registry_requests() - before;

    // 2. Twenty images at once, as the containers of one Pod are, on a verifier warmed by another image.
    let twenty = {
        let verifier = Verifier::new(VerifierSettings::default(), None);
        let warm = images.last().expect("at least 2 images");
        verifier
            .verify(
                warm,
                &governing(warm),
                Freshness::Cached,
                Instant::now() + BUDGET,
            )
            .await;
        let before = verifier.registry_requests();
        let registry_before = cpu_ms(args.registry_pid);
        let own_before = cpu_ms(Some(std::process::id()));
        let started = Instant::now();
        let pod = &images[..images.len().min(21) - 1];
        let verdicts = join_all(pod.iter().map(|image| {
            let policies = governing(image);
            let verifier = &verifier;
            async move {
                verifier
                    .verify(image, &policies, Freshness::Cached, started + BUDGET)
                    .await
            }
        }))
        .await;
        let total_ms = round2(started.elapsed().as_secs_f64() * 1e3);
        let spent = |before: Option<f64>, pid| Some(round2(cpu_ms(pid)? - before?));
        json!({
            "images": pod.len(),
            "total_ms": total_ms,
            "requests": verifier.registry_requests() - before,
            "admitted": verdicts.iter().filter(|v| v.admitted()).count(),
            "registry_cpu_ms": spent(registry_before, args.registry_pid),
            "verifier_cpu_ms": spent(own_before, Some(std::process::id())),
        })
    };

    // 3. The whole list by fresh verifiers: in turn, then all at once.
    let sequential = {
        let verifier = Verifier::new(VerifierSettings::default(), None);
        let started = Instant::now();
        let mut admitted = 0;
        for image in &images {
            let verdict = verifier
                .verify(
                    image,
                    &governing(image),
                    Freshness::Cached,
                    Instant::now() + BUDGET,
                )
                .await;
            admitted += usize::from(verdict.admitted());
        }
        batch(started, &verifier, admitted)
    };
    let concurrent = {
        let verifier = Verifier::new(VerifierSettings::default(), None);
        let started = Instant::now();
        let deadline = started + BUDGET;
        let verdicts = join_all(images.iter().map(|image| {
            let policies = governing(image);
            let verifier = &verifier;
            async move {
                verifier
                    .verify(image, &policies, Freshness::Cached, deadline)
                    .await
            }
        }))
        .await;
        batch(
            started,
            &verifier,
            verdicts.iter().filter(|v| v.admitted()).count(),
        )
    };

    per_image_ms.sort_by(f64::total_cmp);
    let quantile = |q: f64| per_image_ms[((per_image_ms.len() - 1) as f64 * q).round() as usize];
    Ok(json!({
        "label": args.label,
        "rtt_ms": args.rtt_ms,
        "images": images.len(),
        "admitted": admitted,
        "startup": startup,
        "first": {"ms": round2(first_ms), "requests": first_requests},
        "per_image": {
            "median_ms": round2(quantile(0.5)),
            "p90_ms": round2(quantile(0.9)),
            "min_ms": round2(per_image_ms[0]),
            "max_ms": round2(per_image_ms[per_image_ms.len() - 1]),
            "requests_min": per_image_requests.iter().min(),
            "requests_max": per_image_requests.iter().max(),
            "round_trips_min": round_trips.iter().min(),
            "round_trips_max": round_trips.iter().max(),
        },
        "twenty_at_once": twenty,
        "cached": {"us_per_image": round2(cached_us), "requests": cached_requests},
        "sequential": sequential,
        "concurrent": concurrent,
    }))
}

async fn timed(
    verifier: &Verifier,
    image: &ImageRef,
    governing: &impl Fn(&ImageRef) -> Vec<Arc<CompiledPolicy>>,
) -> (f64, u64, bool) {
    let policies = governing(image);
    let before = verifier.registry_requests();
    let started = Instant::now();
    let verdict = verifier
        .verify(image, &policies, Freshness::Cached, Instant::now() + BUDGET)
        .await;
    let ms = started.elapsed().as_secs_f64() * 1e3;
    if !verdict.admitted() {
        eprintln!(
            "warning: {image} was refused: {}",
            serde_json::to_string(&verdict).unwrap_or_default()
        );
    }
    (
        ms,
        verifier.registry_requests() - before,
        verdict.admitted(),
    )
}

fn batch(started: Instant, verifier: &Verifier, admitted: usize) -> Value {
    json!({
        "total_ms": round2(started.elapsed().as_secs_f64() * 1e3),
        "requests": verifier.registry_requests(),
        "admitted": admitted,
    })
}

fn round2(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

/// Groups arrival times into waves: a request that arrives more than `gap` after the previous one
/// starts a new wave. Behind a proxy that holds each request `2 * gap`, a wave is one round trip.
fn waves(mut arrivals: Vec<Instant>, gap: Duration) -> usize {
    arrivals.sort();
    arrivals
        .windows(2)
        .filter(|pair| pair[1].duration_since(pair[0]) > gap)
        .count()
        + usize::from(!arrivals.is_empty())
}

/// A plain-HTTP proxy on a free loopback port that waits `delay` before forwarding each request to
/// `upstream`: a registry `delay` away, as far as round trips go. It notes when each request arrived.
struct DelayProxy {
    /// `127.0.0.1:<port>`
    address: String,
    delay: Duration,
    arrivals: Arc<Mutex<Vec<Instant>>>,
}

impl DelayProxy {
    async fn start(upstream: &str, delay: Duration) -> anyhow::Result<DelayProxy> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?.to_string();
        let upstream = Arc::new(upstream.to_owned());
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let log = arrivals.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let _ = tcp.set_nodelay(true);
                let (upstream, client, log) = (upstream.clone(), client.clone(), log.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        log.lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push(Instant::now());
                        let (upstream, client) = (upstream.clone(), client.clone());
                        async move {
                            Ok::<_, Infallible>(forward(&upstream, &client, delay, request).await)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        Ok(DelayProxy {
            address,
            delay,
            arrivals,
        })
    }

    /// The arrival times noted since the last call.
    fn arrivals(&self) -> Vec<Instant> {
        std::mem::take(&mut *self.arrivals.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

async fn forward(
    upstream: &str,
    client: &reqwest::Client,
    delay: Duration,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    tokio::time::sleep(delay).await;
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut outgoing = client
        .request(parts.method.clone(), format!("http://{upstream}{path}"))
        .body(body);
    for (name, value) in &parts.headers {
        if name != hyper::header::HOST {
            outgoing = outgoing.header(name, value);
        }
    }
    let answer = match outgoing.send().await {
        Ok(answer) => answer,
        Err(error) => {
            let mut response = Response::new(Full::new(Bytes::from(error.to_string())));
            *response.status_mut() = StatusCode::BAD_GATEWAY;
            return response;
        }
    };
    let status = answer.status();
    let headers = answer.headers().clone();
    let bytes = answer.bytes().await.unwrap_or_default();
    let mut response = Response::new(Full::new(bytes));
    *response.status_mut() = status;
    for (name, value) in &headers {
        if name != hyper::header::TRANSFER_ENCODING && name != hyper::header::CONNECTION {
            response.headers_mut().append(name, value.clone());
        }
    }
    response
}
