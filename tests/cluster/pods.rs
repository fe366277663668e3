//! What the tests on a node share: waiting for a condition, images built from the static pause binary
//! and pushed with crane, registryx-guard's own image built and loaded into the node, jsonpath reads,
//! and streams of admissions counted while something happens to the replicas.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::support::cluster::ControlPlane;
use crate::support::cosign::assert_success;
use crate::support::node::Node;

pub(crate) fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Polls `condition` every 250 ms until it holds, or fails with `what` and `context()` after `limit`.
pub(crate) fn wait_until(
    what: &str,
    limit: Duration,
    mut condition: impl FnMut() -> bool,
    context: impl Fn() -> String,
) -> Duration {
    let start = Instant::now();
    while !condition() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    start.elapsed()
}

/// Builds an image with `e2e/image/oci-image.py` from the static pause binary (it runs and waits),
/// labelled `seed` so that each seed is another digest; returns the OCI layout folder.
pub(crate) fn pause_image(dir: &Path, seed: &str) -> PathBuf {
    let layout = dir.join(format!("oci-{seed}"));
    let output = Command::new("python3")
        .arg(crate::support::repo_root().join("e2e/image/oci-image.py"))
        .arg("--file")
        .arg(format!(
            "{}:/pause",
            crate::support::tool("pause").display()
        ))
        .args(["--entrypoint", "/pause", "--label", &format!("seed={seed}")])
        .arg("--oci-dir")
        .arg(&layout)
        .output()
        .unwrap();
    assert_success("oci-image.py", &output);
    layout
}

pub(crate) fn crane_push(layout: &Path, reference: &str) {
    let output = Command::new(crate::support::tool("crane"))
        .args(["push", "--insecure"])
        .arg(layout)
        .arg(reference)
        .output()
        .unwrap();
    assert_success(&format!("crane push {reference}"), &output);
}

pub(crate) fn jsonpath(cluster: &ControlPlane, args: &[&str], path: &str) -> String {
    let mut all = args.to_vec();
    let expression = format!("jsonpath={path}");
    all.extend(["-o", expression.as_str()]);
    String::from_utf8_lossy(&cluster.kubectl(&all).stdout).into_owned()
}

/// Admissions in a loop (`kubectl run --dry-run=server`, which goes through both webhooks), counting
/// the failures, until [`Stream::finish`].
pub(crate) struct Stream {
    stop: Arc<AtomicBool>,
    attempts: Arc<AtomicUsize>,
    failures: Arc<AtomicUsize>,
    thread: std::thread::JoinHandle<Option<String>>,
}

impl Stream {
    pub(crate) fn start(cluster: &ControlPlane, image: &str) -> Stream {
        let stop = Arc::new(AtomicBool::new(false));
        let (attempts, failures) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (flag, tried, failed) = (stop.clone(), attempts.clone(), failures.clone());
        let kubeconfig = cluster.kubeconfig.clone();
        let image = image.to_owned();
        let thread = std::thread::spawn(move || {
            let mut first_failure = None;
            let mut n = 0;
            while !flag.load(Ordering::SeqCst) {
                n += 1;
                let output = Command::new(crate::support::tool("kubectl"))
                    .arg("--kubeconfig")
                    .arg(&kubeconfig)
                    .args([
                        "run",
                        &format!("stream-{n}"),
                        "-n",
                        "default",
                        "--image",
                        &image,
                    ])
                    .args(["--restart", "Never", "--dry-run=server"])
                    .output()
                    .unwrap();
                tried.fetch_add(1, Ordering::SeqCst);
                if !output.status.success() {
                    failed.fetch_add(1, Ordering::SeqCst);
                    first_failure.get_or_insert_with(|| text(&output));
                }
            }
            first_failure
        });
        Stream {
            stop,
            attempts,
            failures,
            thread,
        }
    }

    /// Stops the stream: (attempts, failures, the first failure's output).
    pub(crate) fn stop(self) -> (usize, usize, Option<String>) {
        self.stop.store(true, Ordering::SeqCst);
        let first_failure = self.thread.join().unwrap();
        (
            self.attempts.load(Ordering::SeqCst),
            self.failures.load(Ordering::SeqCst),
            first_failure,
        )
    }

    /// Stops the stream and asserts that it ran and that no admission failed.
    pub(crate) fn finish(self, during: &str) {
        let (attempts, failures, first_failure) = self.stop();
        println!("admissions while {during}: {attempts}, failed: {failures}");
        assert!(attempts > 5, "the stream hardly ran: {attempts}");
        assert_eq!(
            failures, 0,
            "failed admissions while {during}: {first_failure:?}"
        );
    }
}

/// registryx-guard's own image, built without a Docker engine by `e2e/image/build.sh` from the test
/// build and loaded into `node` under the chart's default name; returns the image folder (its `oci`
/// layout and `registryx-guard.tar`).
pub(crate) fn load_own_image(node: &Node, work: &Path) -> PathBuf {
    let image_dir = work.join("image");
    let output = build_own_image(&image_dir);
    assert_success("e2e/image/build.sh", &output);
    node.load_image(&image_dir.join("registryx-guard.tar"));
    image_dir
}

pub(crate) fn build_own_image(out: &Path) -> Output {
    Command::new("bash")
        .arg(crate::support::repo_root().join("e2e/image/build.sh"))
        .env("BINARY", env!("CARGO_BIN_EXE_registryx-guard"))
        .env("OUT", out)
        .output()
        .unwrap()
}
