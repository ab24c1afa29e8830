//! Benchmark (ignored by default; `scripts/bench-fleet.sh` runs it): how long a change made on one
//! sidecar of a fleet takes to be usable on another. A real 3-member etcd cluster on loopback and
//! two sidecars; 100 times, CreateKey on A (which returns once etcd committed), then Encrypt with
//! the new key on B in a tight loop until it succeeds; the time from A's answer to B's first
//! success is the propagation delay. Prints p50, p99 and the maximum, and the load average.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use aws_sdk_kms::primitives::Blob;
use kms_sidecar_e2e::etcd;
use kms_sidecar_e2e::fleet::Fleet;
use kms_sidecar_e2e::new_key;
const CHANGES: usize = 100;

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split(' ')
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: scripts/bench-fleet.sh"]
async fn propagation_delay_of_a_created_key() {
    assert!(etcd::available(), "etcd is not installed");
    let mut fleet = Fleet::start(3, "/fleet-bench/");
    fleet.args.extend(["--log-level".into(), "warn".into()]);
    let creds = fleet.add_client("default");
    let (a, b) = (fleet.member("a", &creds), fleet.member("b", &creds));
    let (on_a, on_b) = (a.sdk(), b.sdk());
    let load_before = load_average();
    let mut delays = Vec::with_capacity(CHANGES);
    let mut polls = 0usize;
    for _ in 0..CHANGES {
        let key = new_key(&on_a).await;
        let committed = Instant::now();
        loop {
            polls += 1;
            let used = on_b
                .encrypt()
                .key_id(&key)
                .plaintext(Blob::new(b"x".as_slice()))
                .send()
                .await;
            if used.is_ok() {
                delays.push(committed.elapsed());
                break;
            }
            assert!(
                committed.elapsed() < Duration::from_secs(5),
                "key {key} not usable on B after 5 s"
            );
        }
    }
    delays.sort();
    println!(
        "BENCH propagation: {CHANGES} CreateKey on A -> first successful Encrypt on B: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, min {:.2} ms; {polls} Encrypts on B; load average before {load_before}, after {}",
        quantile(&delays, 0.5).as_secs_f64() * 1e3,
        quantile(&delays, 0.99).as_secs_f64() * 1e3,
        delays[CHANGES - 1].as_secs_f64() * 1e3,
        delays[0].as_secs_f64() * 1e3,
        load_average()
    );
}
