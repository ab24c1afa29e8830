//! Soak under faults: a real sidecar takes a bounded, mixed client load (Encrypt, Decrypt of cached
//! and uncached items, GenerateDataKey, GenerateRandom) while the fault injector (`/v1/faults`)
//! cycles through outages (fail, hang, one longer than the stale grace), latency, random errors and
//! throttling, each followed by a clean phase. About a minute in CI; `KMS_SOAK_SECS=N` runs the
//! fault cycles for N seconds instead of 50.
//!
//! Asserted:
//! - **No hang**: every call answers within its client deadline (5 s, well above the sidecar's own
//!   bound of `--backend-timeout-ms 1000`), so there are no client-side timeouts at all.
//! - **No wrong plaintext**: every plaintext the client handed to Encrypt or got from
//!   GenerateDataKey is kept with its ciphertext, and every successful Decrypt of that ciphertext
//!   must return exactly it.
//! - **Clean phases are clean**: once the faults are cleared and the breaker is seen closed, every
//!   call succeeds; every error during faults is `DependencyTimeoutException` or
//!   `ThrottlingException` (never an internal error or a 5xx with another type).
//! - **Cached Decrypt availability >= 99.9%** during fault phases, over the requests that qualify
//!   (below); and no plaintext is served past TTL + grace during a full outage.
//! - **Flat resources**: RSS grows by less than 32 MiB and open fds by less than 32 between the end
//!   of the warm-up and the end of the run.
//! - **Metrics add up**: the increase of `sum_series(kms_sidecar_requests_total)` over the run equals the
//!   number of calls the client got an HTTP response for (calls without a response, e.g. a
//!   connection error, may or may not be counted and widen the allowed range by their number).
//!
//! Which cached Decrypts qualify. The hot set (48 items) is decrypted before the run, so each is in
//! the cache. A Decrypt of a hot item that *starts* at `s` while the phase is clean (faults cleared
//! and the breaker seen closed before `s`) and whose response arrives before the next fault is set,
//! proves that, from then on, the item's cache entry was inserted at or after `s - TTL`: either it
//! was a hit (age <= TTL), or the entry was past its TTL and the backend, working, reloaded it.
//! Nothing removes entries here (no key changes, the working set is far below the cache bounds), so
//! at a later time `t` its age is at most `t - s + TTL`, and stale-if-error must serve it while
//! that is <= TTL + grace. A hot Decrypt sent at `t` during a fault phase therefore qualifies when
//! the item's last such clean start `s` satisfies `t - s <= grace - 1 s` (1 s covers the time
//! between the client's send and the sidecar's age check). Conversely, during a full outage, an
//! entry can be no younger than the moment the outage was set, so a hot Decrypt sent more than
//! TTL + grace + 2 s after that must fail (the long outage phase checks this).
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_kms::Client;
use aws_sdk_kms::config::http::HttpResponse;
use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::DataKeySpec;
use kms_sidecar_e2e::{Sidecar, encrypt, http_send, sample, sum_series};

const TTL: Duration = Duration::from_secs(1);
const GRACE: Duration = Duration::from_secs(6);
/// Client deadline per call; the sidecar bounds backend work by 1 s (`--backend-timeout-ms`).
const DEADLINE: Duration = Duration::from_secs(5);
const WORKERS: usize = 12;
/// Total client rate (calls per second), shared by the workers.
const RATE: f64 = 400.0;
const HOT_ITEMS: usize = 48;
const COLD_CAP: usize = 512;
const WARM_UP: Duration = Duration::from_secs(5);
const CLEAN_PHASE: Duration = Duration::from_secs(2);
const RSS_BOUND: u64 = 32 * 1024 * 1024;
const FD_BOUND: i64 = 32;
const CIRCUIT: &str = "kms_sidecar_circuit_state{backend=\"embedded\"}";

/// One fault phase of the schedule.
struct Fault {
    name: &'static str,
    spec: &'static str,
    secs: u64,
    /// Every backend call fails: nothing can be loaded into the cache.
    full_outage: bool,
}

const SCHEDULE: &[Fault] = &[
    Fault {
        name: "outage-fail",
        spec: r#"{"outage": "fail"}"#,
        secs: 3,
        full_outage: true,
    },
    Fault {
        name: "latency",
        spec: r#"{"latency_ms": 150, "jitter_ms": 100}"#,
        secs: 3,
        full_outage: false,
    },
    Fault {
        name: "outage-hang",
        spec: r#"{"outage": "hang"}"#,
        secs: 3,
        full_outage: true,
    },
    Fault {
        name: "errors-30%",
        spec: r#"{"error_rate": 0.3}"#,
        secs: 3,
        full_outage: false,
    },
    Fault {
        name: "throttle-50%",
        spec: r#"{"throttle_rate": 0.5}"#,
        secs: 3,
        full_outage: false,
    },
    Fault {
        name: "outage-past-grace",
        spec: r#"{"outage": "fail"}"#,
        secs: 11,
        full_outage: true,
    },
];

/// A plaintext and the ciphertext the sidecar gave for it.
#[derive(Clone)]
struct Item {
    blob: Blob,
    plaintext: Vec<u8>,
}

/// What a phase is, for the workers: `epoch` changes on every phase change.
#[derive(Clone, Copy)]
struct PhaseInfo {
    name: &'static str,
    clean: bool,
    full_outage: bool,
    /// When the fault was in force (the PUT answered).
    since: Instant,
}

#[derive(Default)]
struct Counts {
    ok: u64,
    failed: u64,
}

#[derive(Default)]
struct Stats {
    /// By operation, then outcome (`ok`, an error code, `no-response`, `hang`).
    outcomes: BTreeMap<&'static str, BTreeMap<String, u64>>,
    responses: u64,
    no_response: u64,
    hangs: u64,
    wrong_plaintext: Vec<String>,
    unexpected_errors: Vec<String>,
    clean_failures: Vec<String>,
    /// Hot Decrypts during faults, by phase name: qualifying and not.
    qualifying: BTreeMap<&'static str, Counts>,
    not_qualifying: BTreeMap<&'static str, Counts>,
    /// Hot Decrypts served although past TTL + grace in a full outage.
    past_grace_served: u64,
    past_grace_checked: u64,
    max_latency: Duration,
}

struct Shared {
    kms: Client,
    keys: Vec<String>,
    hot: Vec<Item>,
    /// Start of each hot item's last clean, successful Decrypt.
    hot_clean: Mutex<Vec<Option<Instant>>>,
    cold: Mutex<VecDeque<Item>>,
    phases: Mutex<Vec<PhaseInfo>>,
    epoch: AtomicU64,
    stop: AtomicBool,
    stats: Mutex<Stats>,
}

impl Shared {
    fn phase(&self) -> (u64, PhaseInfo) {
        let phases = self.phases.lock().unwrap();
        let epoch = self.epoch.load(Ordering::SeqCst);
        (epoch, phases[epoch as usize])
    }

    fn set_phase(&self, info: PhaseInfo) {
        let mut phases = self.phases.lock().unwrap();
        phases.push(info);
        self.epoch.store(phases.len() as u64 - 1, Ordering::SeqCst);
    }
}

/// How one call ended.
enum Outcome<T> {
    Ok(T),
    /// An HTTP response with an error; `status` and the KMS error type.
    Error(u16, String),
    /// No response (connection failure, unparseable answer).
    NoResponse(String),
    /// No answer within [`DEADLINE`].
    Hang,
}

async fn call<T, E>(
    fut: impl std::future::Future<Output = Result<T, SdkError<E, HttpResponse>>>,
) -> Outcome<T>
where
    E: ProvideErrorMetadata + std::fmt::Debug,
{
    match tokio::time::timeout(DEADLINE, fut).await {
        Err(_) => Outcome::Hang,
        Ok(Ok(v)) => Outcome::Ok(v),
        Ok(Err(e)) => match e.raw_response().map(|r| r.status().as_u16()) {
            Some(status) if matches!(e, SdkError::ServiceError(_)) => {
                Outcome::Error(status, e.code().unwrap_or("no-code").to_string())
            }
            _ => Outcome::NoResponse(format!("{e:?}")),
        },
    }
}

/// A small xorshift generator: the test needs cheap variety, not secure randomness.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

#[derive(Clone, Copy)]
enum Op {
    DecryptHot,
    DecryptCold,
    Encrypt,
    GenerateDataKey,
    GenerateRandom,
}

impl Op {
    fn pick(rng: &mut Rng) -> Self {
        match rng.below(100) {
            0..45 => Self::DecryptHot,
            45..60 => Self::DecryptCold,
            60..80 => Self::Encrypt,
            80..90 => Self::GenerateDataKey,
            _ => Self::GenerateRandom,
        }
    }
}

async fn worker(shared: Arc<Shared>, id: usize) {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((id as u64 + 1) * 0x1234_5678_9ABC));
    let period = Duration::from_secs_f64(WORKERS as f64 / RATE);
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = 0u64;
    while !shared.stop.load(Ordering::SeqCst) {
        tick.tick().await;
        seq += 1;
        one_call(&shared, &mut rng, id, seq).await;
    }
}

async fn one_call(shared: &Shared, rng: &mut Rng, id: usize, seq: u64) {
    let kms = &shared.kms;
    let key = &shared.keys[rng.below(shared.keys.len())];
    let (epoch, phase) = shared.phase();
    let sent = Instant::now();
    let mut op = Op::pick(rng);
    let cold = match op {
        Op::DecryptCold => match shared.cold.lock().unwrap().pop_front() {
            Some(item) => Some(item),
            None => {
                op = Op::Encrypt;
                None
            }
        },
        _ => None,
    };
    // (operation name, outcome, for a hot Decrypt: the item index)
    let (name, result, hot): (&'static str, Outcome<()>, Option<usize>) = match op {
        Op::DecryptHot | Op::DecryptCold => {
            let (item, hot) = match cold {
                Some(item) => (item, None),
                None => {
                    let i = rng.below(shared.hot.len());
                    (shared.hot[i].clone(), Some(i))
                }
            };
            let out = call(kms.decrypt().ciphertext_blob(item.blob.clone()).send()).await;
            let out = match out {
                Outcome::Ok(r) => {
                    let got = r.plaintext().map(|p| p.as_ref().to_vec());
                    if got.as_deref() != Some(&item.plaintext[..]) {
                        shared.stats.lock().unwrap().wrong_plaintext.push(format!(
                            "worker {id} call {seq}: Decrypt returned {} bytes, not the {} bytes encrypted",
                            got.map_or(0, |g| g.len()),
                            item.plaintext.len()
                        ));
                    }
                    Outcome::Ok(())
                }
                other => map_err(other),
            };
            let name = if hot.is_some() {
                "Decrypt(hot)"
            } else {
                "Decrypt(cold)"
            };
            (name, out, hot)
        }
        Op::Encrypt => {
            let len = 16 + rng.below(48);
            let mut plaintext = rng.bytes(len);
            plaintext.extend_from_slice(format!("w{id}-{seq}").as_bytes());
            let out = call(
                kms.encrypt()
                    .key_id(key)
                    .plaintext(Blob::new(plaintext.clone()))
                    .send(),
            )
            .await;
            let out = match out {
                Outcome::Ok(r) => {
                    let blob = r.ciphertext_blob().expect("ciphertext").clone();
                    push_cold(shared, Item { blob, plaintext });
                    Outcome::Ok(())
                }
                other => map_err(other),
            };
            ("Encrypt", out, None)
        }
        Op::GenerateDataKey => {
            let out = call(
                kms.generate_data_key()
                    .key_id(key)
                    .key_spec(DataKeySpec::Aes256)
                    .send(),
            )
            .await;
            let out = match out {
                Outcome::Ok(r) => {
                    let plaintext = r.plaintext().expect("data key").as_ref().to_vec();
                    assert_eq!(plaintext.len(), 32);
                    let blob = r.ciphertext_blob().expect("ciphertext").clone();
                    push_cold(shared, Item { blob, plaintext });
                    Outcome::Ok(())
                }
                other => map_err(other),
            };
            ("GenerateDataKey", out, None)
        }
        Op::GenerateRandom => {
            let out = call(kms.generate_random().number_of_bytes(32).send()).await;
            let out = match out {
                Outcome::Ok(r) => {
                    assert_eq!(r.plaintext().map(|p| p.as_ref().len()), Some(32));
                    Outcome::Ok(())
                }
                other => map_err(other),
            };
            ("GenerateRandom", out, None)
        }
    };
    let took = sent.elapsed();
    let epoch_after = shared.epoch.load(Ordering::SeqCst);

    // A clean, successful hot Decrypt: the item's entry is fresh from `sent - TTL` on.
    if let (Some(i), Outcome::Ok(())) = (hot, &result)
        && phase.clean
        && epoch_after == epoch
    {
        let mut clean = shared.hot_clean.lock().unwrap();
        if clean[i].is_none_or(|s| s < sent) {
            clean[i] = Some(sent);
        }
    }
    let last_clean = hot.and_then(|i| shared.hot_clean.lock().unwrap()[i]);

    let mut stats = shared.stats.lock().unwrap();
    stats.max_latency = stats.max_latency.max(took);
    let outcome = match &result {
        Outcome::Ok(()) => "ok".to_string(),
        Outcome::Error(_, code) => code.clone(),
        Outcome::NoResponse(_) => "no-response".to_string(),
        Outcome::Hang => "hang".to_string(),
    };
    *stats
        .outcomes
        .entry(name)
        .or_default()
        .entry(outcome.clone())
        .or_default() += 1;
    match &result {
        Outcome::Ok(()) => stats.responses += 1,
        Outcome::Error(status, code) => {
            stats.responses += 1;
            let expected = matches!(
                code.as_str(),
                "DependencyTimeoutException" | "ThrottlingException"
            );
            if !expected || *status >= 500 && code != "DependencyTimeoutException" {
                stats
                    .unexpected_errors
                    .push(format!("{name} in {}: {status} {code}", phase.name));
            }
        }
        Outcome::NoResponse(e) => {
            stats.no_response += 1;
            stats
                .unexpected_errors
                .push(format!("{name} in {}: no response: {e}", phase.name));
        }
        Outcome::Hang => stats.hangs += 1,
    }
    let ok = matches!(result, Outcome::Ok(()));
    if phase.clean && epoch_after == epoch && !ok {
        stats
            .clean_failures
            .push(format!("{name} in a clean phase: {outcome}"));
    }
    if hot.is_some() && !phase.clean {
        let qualifies =
            last_clean.is_some_and(|s| sent.duration_since(s) + Duration::from_secs(1) <= GRACE);
        let counts = if qualifies {
            stats.qualifying.entry(phase.name).or_default()
        } else {
            stats.not_qualifying.entry(phase.name).or_default()
        };
        if ok {
            counts.ok += 1;
        } else {
            counts.failed += 1;
        }
        // In a full outage (and still in it when the answer came) nothing is younger than the
        // moment the outage was set.
        if phase.full_outage
            && epoch_after == epoch
            && sent.duration_since(phase.since) > TTL + GRACE + Duration::from_secs(2)
        {
            stats.past_grace_checked += 1;
            if ok {
                stats.past_grace_served += 1;
            }
        }
    }
}

fn map_err<T>(out: Outcome<T>) -> Outcome<()> {
    match out {
        Outcome::Ok(_) => Outcome::Ok(()),
        Outcome::Error(s, c) => Outcome::Error(s, c),
        Outcome::NoResponse(e) => Outcome::NoResponse(e),
        Outcome::Hang => Outcome::Hang,
    }
}

fn push_cold(shared: &Shared, item: Item) {
    let mut cold = shared.cold.lock().unwrap();
    cold.push_back(item);
    if cold.len() > COLD_CAP {
        cold.pop_front();
    }
}

/// RSS (bytes) and open fds of `pid`, from /proc.
fn proc_usage(pid: u32) -> (u64, i64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count() as i64;
    (kib * 1024, fds)
}

/// RSS and fds from /proc and from the sidecar's own process metrics, printed.
async fn usage(sidecar: &Sidecar, when: &str) -> (u64, i64) {
    let (rss, fds) = proc_usage(sidecar.pid());
    let text = sidecar.metrics().await;
    let m_rss = sample(&text, "process_resident_memory_bytes").unwrap_or(-1.0);
    let m_fds = sample(&text, "process_open_fds").unwrap_or(-1.0);
    eprintln!(
        "soak: {when}: rss {:.1} MiB, fds {fds} (metrics: {:.1} MiB, {m_fds} fds)",
        rss as f64 / 1048576.0,
        m_rss / 1048576.0
    );
    (rss, fds)
}

async fn set_faults(sidecar: &Sidecar, spec: &str) {
    let (status, body) = http_send("PUT", &format!("{}/v1/faults", sidecar.admin_url), spec).await;
    assert_eq!(status, 200, "{body}");
}

/// Clears the faults and waits until the breaker is closed again.
async fn clear_faults(sidecar: &Sidecar) -> Duration {
    let started = Instant::now();
    let (status, body) = http_send("DELETE", &format!("{}/v1/faults", sidecar.admin_url), "").await;
    assert_eq!(status, 200, "{body}");
    loop {
        let text = sidecar.metrics().await;
        if sample(&text, CIRCUIT) == Some(0.0) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the breaker did not close within 15 s of clearing the faults\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_under_faults() {
    let fault_secs: u64 = std::env::var("KMS_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let dir = tempfile::tempdir().unwrap();
    let sidecar = Sidecar::start_args(
        dir.path(),
        &[
            "--faults-enabled",
            "--log-level",
            "error",
            "--cache-ttl-secs",
            &TTL.as_secs().to_string(),
            "--cache-stale-grace-secs",
            &GRACE.as_secs().to_string(),
            "--breaker-cool-down-secs",
            "1",
            "--backend-timeout-ms",
            "1000",
            "--retry-base-ms",
            "5",
            "--retry-cap-ms",
            "50",
            "--data-key-pool-size",
            "8",
        ],
    );
    let kms = sidecar.sdk();
    let mut keys = Vec::new();
    for _ in 0..2 {
        let meta = kms.create_key().send().await.unwrap();
        keys.push(meta.key_metadata().unwrap().key_id().to_string());
    }
    let mut rng = Rng(42);
    let mut hot = Vec::new();
    for i in 0..HOT_ITEMS {
        let plaintext = rng.bytes(32);
        let blob = encrypt(&kms, &keys[i % keys.len()], &plaintext).await;
        hot.push(Item { blob, plaintext });
    }
    let run_started = Instant::now();
    let shared = Arc::new(Shared {
        kms: kms.clone(),
        keys,
        hot,
        hot_clean: Mutex::new(vec![None; HOT_ITEMS]),
        cold: Mutex::new(VecDeque::new()),
        phases: Mutex::new(vec![PhaseInfo {
            name: "clean",
            clean: true,
            full_outage: false,
            since: run_started,
        }]),
        epoch: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        stats: Mutex::new(Stats::default()),
    });
    let before = sidecar.metrics().await;
    let mut workers = tokio::task::JoinSet::new();
    for id in 0..WORKERS {
        workers.spawn(worker(shared.clone(), id));
    }

    tokio::time::sleep(WARM_UP).await;
    let (rss0, fds0) = usage(&sidecar, "after warm-up").await;
    let mut rss_max = rss0;

    let faults_started = Instant::now();
    let mut phases_run = 0;
    'cycles: loop {
        for fault in SCHEDULE {
            if faults_started.elapsed() >= Duration::from_secs(fault_secs) {
                break 'cycles;
            }
            // Not clean from before the PUT on: a call that straddles it is not clean.
            shared.set_phase(PhaseInfo {
                name: fault.name,
                clean: false,
                full_outage: false,
                since: Instant::now(),
            });
            set_faults(&sidecar, fault.spec).await;
            shared.set_phase(PhaseInfo {
                name: fault.name,
                clean: false,
                full_outage: fault.full_outage,
                since: Instant::now(),
            });
            tokio::time::sleep(Duration::from_secs(fault.secs)).await;
            shared.set_phase(PhaseInfo {
                name: "recovering",
                clean: false,
                full_outage: false,
                since: Instant::now(),
            });
            let recovery = clear_faults(&sidecar).await;
            shared.set_phase(PhaseInfo {
                name: "clean",
                clean: true,
                full_outage: false,
                since: Instant::now(),
            });
            phases_run += 1;
            let (rss, _) = proc_usage(sidecar.pid());
            rss_max = rss_max.max(rss);
            eprintln!(
                "soak: {:>5.1} s {} done, breaker closed {recovery:?} after clearing, rss {:.1} MiB",
                run_started.elapsed().as_secs_f64(),
                fault.name,
                rss as f64 / 1048576.0
            );
            tokio::time::sleep(CLEAN_PHASE).await;
        }
    }
    tokio::time::sleep(CLEAN_PHASE).await;
    shared.stop.store(true, Ordering::SeqCst);
    while let Some(r) = workers.join_next().await {
        r.unwrap();
    }
    let run_time = run_started.elapsed();
    // Let idle connections and timers settle before the last sample.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (rss1, fds1) = usage(&sidecar, "at the end").await;
    rss_max = rss_max.max(rss1);
    let after = sidecar.metrics().await;

    // The workers are done: the counts are final.
    let stats = std::mem::take(&mut *shared.stats.lock().unwrap());
    let counted = sum_series(&after, "kms_sidecar_requests_total{")
        - sum_series(&before, "kms_sidecar_requests_total{");
    let total: u64 = stats.outcomes.values().flat_map(|o| o.values()).sum();
    eprintln!(
        "soak: {total} calls in {:.1} s ({:.0}/s), {phases_run} fault phases, max latency {:?}",
        run_time.as_secs_f64(),
        total as f64 / run_time.as_secs_f64(),
        stats.max_latency
    );
    for (op, outcomes) in &stats.outcomes {
        let list: Vec<String> = outcomes.iter().map(|(o, n)| format!("{o} {n}")).collect();
        eprintln!("soak:   {op}: {}", list.join(", "));
    }
    let (mut q_ok, mut q_all) = (0u64, 0u64);
    for (phase, c) in &stats.qualifying {
        q_ok += c.ok;
        q_all += c.ok + c.failed;
        eprintln!(
            "soak:   cached Decrypt in {phase}: {}/{} ({:.3}%)",
            c.ok,
            c.ok + c.failed,
            100.0 * c.ok as f64 / (c.ok + c.failed).max(1) as f64
        );
    }
    for (phase, c) in &stats.not_qualifying {
        eprintln!(
            "soak:   hot Decrypt not qualifying (past grace - 1 s) in {phase}: {} ok, {} failed",
            c.ok, c.failed
        );
    }
    let availability = q_ok as f64 / q_all.max(1) as f64;
    eprintln!(
        "soak: cached Decrypt availability during faults: {q_ok}/{q_all} = {:.4}%; past TTL+grace in a full outage: {} served of {}",
        100.0 * availability,
        stats.past_grace_served,
        stats.past_grace_checked
    );
    eprintln!(
        "soak: requests_total +{counted}, client responses {}, no response {}, hangs {}",
        stats.responses, stats.no_response, stats.hangs
    );
    eprintln!(
        "soak: rss {:.1} -> {:.1} MiB (max {:.1}), fds {fds0} -> {fds1}",
        rss0 as f64 / 1048576.0,
        rss1 as f64 / 1048576.0,
        rss_max as f64 / 1048576.0
    );

    assert_eq!(stats.hangs, 0, "calls past the {DEADLINE:?} deadline");
    assert!(
        stats.wrong_plaintext.is_empty(),
        "wrong plaintexts: {:?}",
        stats.wrong_plaintext
    );
    assert!(
        stats.unexpected_errors.is_empty(),
        "unexpected errors ({}): {:?}",
        stats.unexpected_errors.len(),
        &stats.unexpected_errors[..stats.unexpected_errors.len().min(20)]
    );
    assert!(
        stats.clean_failures.is_empty(),
        "failures in clean phases ({}): {:?}",
        stats.clean_failures.len(),
        &stats.clean_failures[..stats.clean_failures.len().min(20)]
    );
    assert!(phases_run >= SCHEDULE.len(), "one full fault cycle ran");
    assert!(q_all >= 1000, "enough qualifying cached Decrypts ({q_all})");
    assert!(
        availability >= 0.999,
        "cached Decrypt availability {:.4}% < 99.9%",
        100.0 * availability
    );
    assert!(
        stats.past_grace_checked > 0,
        "the long outage reached past the grace"
    );
    assert_eq!(stats.past_grace_served, 0, "served past TTL + grace");
    let responses = stats.responses as f64;
    assert!(
        counted >= responses && counted <= responses + (stats.no_response + stats.hangs) as f64,
        "requests_total rose by {counted}, the client got {responses} responses"
    );
    assert!(
        rss1.saturating_sub(rss0) < RSS_BOUND,
        "RSS grew by {} bytes",
        rss1 - rss0
    );
    assert!(fds1 - fds0 < FD_BOUND, "fds grew from {fds0} to {fds1}");
    let text = sidecar.metrics().await;
    assert_eq!(
        sample(&text, CIRCUIT),
        Some(0.0),
        "breaker closed at the end"
    );
}
