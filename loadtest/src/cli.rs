//! Command-line interface: clap subcommands (`run`, `probe`, `baseline`, `max`, `serve-baseline`)
//! turned into the library's validated mode configurations. Flags beat environment variables;
//! `--help` documents every flag.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::backoff::Backoff;
use crate::engine::Limits;
use crate::error::LoadError;
use crate::kms::WorkloadSpec;
use crate::mix::Mix;
use crate::modes::{
    BaselineConfig, Common, MaxConfig, ProbeConfig, RunConfig, baseline, max, probe, run,
};
use crate::progress::Progress;
use crate::report::Report;
use crate::responder::Responder;
use crate::sign::credentials;

/// Open-loop load tester for kms-sidecar (and any KMS-compatible endpoint on this machine).
#[derive(Debug, Parser)]
#[command(name = "kms-loadtest", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// A fixed rate for a duration (warm-up excluded from the results).
    Run(RunArgs),
    /// Ramp the rate until throttling or the p99 SLO breaks; report the knee against the limit.
    Probe(ProbeArgs),
    /// The same load against an in-process bare responder and the sidecar; report the ratios.
    Baseline(BaselineArgs),
    /// Find the highest rate with p99 under a bound and at most 1% late starts.
    Max(MaxArgs),
    /// Serve the baseline responder alone (to point another tool such as oha at it).
    ServeBaseline(ServeArgs),
}

/// Flags every load mode shares.
#[derive(Debug, Args)]
pub struct CommonArgs {
    /// The sidecar's KMS API URL. Must be loopback unless --allow-non-loopback.
    #[arg(
        long,
        env = "KMS_LOADTEST_TARGET",
        default_value = "http://127.0.0.1:7300"
    )]
    pub target: String,
    /// The sidecar's admin URL (probe reads /v1/status); default: the KMS port + 1.
    #[arg(long)]
    pub admin_url: Option<String>,
    /// Allow a target that is not a loopback address (never needed on one machine).
    #[arg(long)]
    pub allow_non_loopback: bool,
    /// Access key id of a principal; repeat for several principals (paired in order).
    #[arg(long = "access-key-id", env = "AWS_ACCESS_KEY_ID")]
    pub access_key_id: Vec<String>,
    /// Secret access key of a principal; repeat, in the same order as --access-key-id.
    #[arg(
        long = "secret-access-key",
        env = "AWS_SECRET_ACCESS_KEY",
        hide_env_values = true
    )]
    pub secret_access_key: Vec<String>,
    /// Region to sign for.
    #[arg(long, env = "AWS_REGION", default_value = "us-east-1")]
    pub region: String,
    /// Operation mix, e.g. decrypt=80,generate-data-key=15,encrypt=5 (also: re-encrypt,
    /// generate-data-key-without-plaintext, generate-random).
    #[arg(long, default_value = "decrypt=80,generate-data-key=15,encrypt=5")]
    pub mix: String,
    /// Keys the setup phase creates (their deletion is scheduled at the end).
    #[arg(long, default_value_t = 4)]
    pub keys: usize,
    /// Use this existing key instead of creating keys; repeatable.
    #[arg(long = "key-id")]
    pub key_id: Vec<String>,
    /// Ciphertexts the setup phase makes per key (Decrypt/ReEncrypt pick among them).
    #[arg(long, default_value_t = 16)]
    pub ciphertexts_per_key: usize,
    /// Plaintext size of Encrypt and of the setup ciphertexts, in bytes (1..=4096).
    #[arg(long, default_value_t = 256)]
    pub payload_bytes: usize,
    /// Encryption context entry k=v; repeatable; an empty value ('') sends none.
    #[arg(long = "context", default_value = "app=kms-loadtest")]
    pub context: Vec<String>,
    /// Keep-alive connections = workers = most requests in flight.
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
    /// Per-request timeout in milliseconds (counted as error type Timeout).
    #[arg(long, default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// How long after the last planned send a backlog may still be sent (then: not sent).
    #[arg(long, default_value_t = 5.0)]
    pub drain_secs: f64,
    /// A request sent this much after its planned time counts as a late start. Below ~5 ms the
    /// count measures tokio's 1 ms timer and CPU contention more than a backlog.
    #[arg(long, default_value_t = 10.0)]
    pub late_threshold_ms: f64,
    /// Warm-up before each measured run (excluded from results).
    #[arg(long, default_value_t = 2.0)]
    pub warmup_secs: f64,
    /// The most requests a single run may plan.
    #[arg(long, default_value_t = 10_000_000)]
    pub max_requests: u64,
    /// Write the full report as JSON here (schema: docs/loadtest.md).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// No live progress line (it is also off when stderr is not a terminal).
    #[arg(long)]
    pub no_progress: bool,
    /// Keep the keys the setup phase created.
    #[arg(long)]
    pub keep_keys: bool,
    /// Attempts per setup or cleanup call when it is throttled or fails transiently (5xx, no
    /// answer), with exponential backoff and full jitter (50 ms doubling up to 5 s); 1: no retry.
    #[arg(long, default_value_t = 10)]
    pub setup_max_attempts: u32,
    /// No setup or cleanup call is retried once this many seconds passed since its first attempt.
    #[arg(long, default_value_t = 30.0)]
    pub setup_retry_secs: f64,
    /// Worker threads of the in-process baseline responder (0: one per CPU).
    #[arg(long, default_value_t = 0)]
    pub responder_threads: usize,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Requests per second (open loop); 0: closed loop, as fast as the connections allow.
    #[arg(long, default_value_t = 500.0)]
    pub rate: f64,
    /// Measured duration in seconds (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    pub duration_secs: f64,
    /// Load the in-process baseline responder instead of a sidecar (no credentials needed).
    #[arg(long)]
    pub against_baseline: bool,
    /// Send Kubernetes KMS v2 gRPC (Encrypt of a 32-byte DEK, Decrypt of setup ciphertexts) to the
    /// sidecar's plugin Unix socket instead of AWS JSON; --mix may only hold encrypt and decrypt,
    /// no credentials are needed (the socket is the authentication).
    #[arg(long, conflicts_with = "against_baseline")]
    pub kmsv2_socket: Option<PathBuf>,
    /// Send AWS KMS External Key Store proxy calls (Encrypt of a 32-byte data key with 64 bytes of
    /// AAD, Decrypt of setup ciphertexts) for this external key id to --target, the sidecar's
    /// --xks-listen address; sign with an XKS credential of --xks-uri-path (--access-key-id and
    /// --secret-access-key); --mix may only hold encrypt and decrypt.
    #[arg(long, conflicts_with_all = ["against_baseline", "kmsv2_socket"])]
    pub xks_key_id: Option<String>,
    /// The XKS URI path prefix (`XksProxyUriPath`) the external key is served under.
    #[arg(long, default_value = "/kms/xks/v1")]
    pub xks_uri_path: String,
}

#[derive(Debug, Args)]
pub struct ProbeArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[arg(long, default_value_t = 100.0)]
    pub start_rate: f64,
    /// Rate multiplier between passing steps.
    #[arg(long, default_value_t = 1.25)]
    pub factor: f64,
    /// Seconds per step.
    #[arg(long, default_value_t = 3.0)]
    pub step_secs: f64,
    /// Bisection steps between the last passing and the first failing rate.
    #[arg(long, default_value_t = 3)]
    pub refine: u32,
    #[arg(long, default_value_t = 100_000.0)]
    pub max_rate: f64,
    /// A step fails when more than this share of responses are ThrottlingException.
    #[arg(long, default_value_t = 0.01)]
    pub throttle_threshold: f64,
    /// A step fails when its p99 (from planned time) exceeds this many milliseconds.
    #[arg(long, default_value_t = 50.0)]
    pub slo_p99_ms: f64,
    /// The configured limit to compare the knee with (default: read /v1/status).
    #[arg(long)]
    pub expected_limit: Option<f64>,
    /// A step fails when more than this share started late (or were never sent).
    #[arg(long, default_value_t = 0.01)]
    pub max_late_ratio: f64,
    /// Idle seconds between steps.
    #[arg(long, default_value_t = 1.0)]
    pub pause_secs: f64,
    #[arg(long)]
    pub against_baseline: bool,
}

#[derive(Debug, Args)]
pub struct BaselineArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Rate of the latency phase (default: half the sidecar's measured throughput).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Measured seconds of the latency phase, per target.
    #[arg(long, default_value_t = 10.0)]
    pub duration_secs: f64,
    /// Measured seconds of the closed-loop throughput phase, per target.
    #[arg(long, default_value_t = 5.0)]
    pub throughput_secs: f64,
    /// Latency pairs to run at most: a pair is run again while the hypervisor's steal during
    /// either of its runs exceeds --max-steal-pct (the ratios come from the least disturbed pair).
    #[arg(long, default_value_t = 3)]
    pub latency_attempts: u32,
    /// Hypervisor steal, in percent of all CPUs' time, above which a latency pair is disturbed.
    #[arg(long, default_value_t = 0.5)]
    pub max_steal_pct: f64,
}

#[derive(Debug, Args)]
pub struct MaxArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[arg(long, default_value_t = 500.0)]
    pub start_rate: f64,
    #[arg(long, default_value_t = 2.0)]
    pub factor: f64,
    #[arg(long, default_value_t = 5.0)]
    pub step_secs: f64,
    #[arg(long, default_value_t = 4)]
    pub refine: u32,
    #[arg(long, default_value_t = 1_000_000.0)]
    pub max_rate: f64,
    /// A step fails when its p99 (from planned time) exceeds this many milliseconds.
    #[arg(long, default_value_t = 10.0)]
    pub p99_bound_ms: f64,
    /// A step fails when more than this share started late (or were never sent).
    #[arg(long, default_value_t = 0.01)]
    pub max_late_ratio: f64,
    /// A step fails when more than this share of responses are errors.
    #[arg(long, default_value_t = 0.001)]
    pub max_error_share: f64,
    #[arg(long, default_value_t = 1.0)]
    pub pause_secs: f64,
    #[arg(long)]
    pub against_baseline: bool,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Listen address; must be loopback unless --allow-non-loopback.
    #[arg(long, default_value = "127.0.0.1:7399")]
    pub listen: SocketAddr,
    #[arg(long)]
    pub allow_non_loopback: bool,
    /// Worker threads (0: one per CPU).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Stop after this many seconds (bounded: at most one hour).
    #[arg(long, default_value_t = 600.0)]
    pub duration_secs: f64,
}

pub fn secs(name: &str, v: f64) -> Result<Duration, LoadError> {
    Duration::try_from_secs_f64(v)
        .map_err(|_| LoadError::Invalid(format!("{name} must be a non-negative number of seconds")))
}

fn threads(n: usize) -> usize {
    if n == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        n
    }
}

impl CommonArgs {
    /// Validates the shared flags. `creds_optional`: the baseline responder checks no signature.
    pub fn into_common(self, creds_optional: bool) -> Result<(Common, Option<PathBuf>), LoadError> {
        let creds =
            if creds_optional && self.access_key_id.is_empty() && self.secret_access_key.is_empty()
            {
                credentials(
                    vec!["AKIDLOADTESTBASELINE".into()],
                    vec!["baseline-responder-checks-no-signature".into()],
                )?
            } else {
                credentials(self.access_key_id, self.secret_access_key)?
            };
        if !(1..=4096).contains(&self.payload_bytes) {
            return Err(LoadError::Invalid(
                "--payload-bytes must be 1..=4096".into(),
            ));
        }
        let mut context = BTreeMap::new();
        for kv in self.context.iter().filter(|s| !s.is_empty()) {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| LoadError::Invalid(format!("--context {kv:?} is not key=value")))?;
            context.insert(k.to_string(), v.to_string());
        }
        if self.late_threshold_ms.is_nan() || self.late_threshold_ms < 0.0 {
            return Err(LoadError::Invalid(
                "--late-threshold-ms must be >= 0".into(),
            ));
        }
        let common = Common {
            target: self.target,
            admin_url: self.admin_url,
            allow_non_loopback: self.allow_non_loopback,
            workload: WorkloadSpec {
                mix: Mix::parse(&self.mix)?,
                creds,
                region: self.region,
                keys: self.keys,
                key_ids: self.key_id,
                ciphertexts_per_key: self.ciphertexts_per_key,
                payload_bytes: self.payload_bytes,
                context,
            },
            limits: Limits {
                connections: self.connections,
                timeout: Duration::from_millis(self.timeout_ms.max(1)),
                drain: secs("--drain-secs", self.drain_secs)?,
                late_threshold: secs("--late-threshold-ms", self.late_threshold_ms / 1000.0)?,
                max_requests: self.max_requests,
            },
            warmup: secs("--warmup-secs", self.warmup_secs)?,
            keep_keys: self.keep_keys,
            retry: Backoff::standard(
                self.setup_max_attempts,
                secs("--setup-retry-secs", self.setup_retry_secs)?,
            )?,
            responder_threads: threads(self.responder_threads),
            progress: Progress::new(!self.no_progress),
        };
        Ok((common, self.json))
    }
}

/// What an invocation produced: a report (load modes) or nothing (serve-baseline).
#[derive(Debug)]
pub struct Outcome {
    pub report: Option<Report>,
    pub json: Option<PathBuf>,
}

/// Runs a parsed command line.
pub async fn execute(cli: Cli) -> Result<Outcome, LoadError> {
    let (report, json) = match cli.command {
        Command::Run(a) => {
            let cfg = RunConfig {
                rate: a.rate,
                duration: secs("--duration-secs", a.duration_secs)?,
                against_baseline: a.against_baseline,
                kmsv2_socket: a.kmsv2_socket,
                xks: a.xks_key_id.map(|external_key_id| crate::xks::XksTarget {
                    uri_path: a.xks_uri_path,
                    external_key_id,
                }),
            };
            let no_creds = a.against_baseline || cfg.kmsv2_socket.is_some();
            let (common, json) = a.common.into_common(no_creds)?;
            (run(&common, &cfg).await?, json)
        }
        Command::Probe(a) => {
            let cfg = ProbeConfig {
                start_rate: a.start_rate,
                factor: a.factor,
                step: secs("--step-secs", a.step_secs)?,
                refine: a.refine,
                max_rate: a.max_rate,
                throttle_threshold: a.throttle_threshold,
                slo_p99_ms: a.slo_p99_ms,
                expected_limit: a.expected_limit,
                max_late_ratio: a.max_late_ratio,
                pause: secs("--pause-secs", a.pause_secs)?,
                against_baseline: a.against_baseline,
            };
            let (common, json) = a.common.into_common(a.against_baseline)?;
            (probe(&common, &cfg).await?, json)
        }
        Command::Baseline(a) => {
            if !(1..=10).contains(&a.latency_attempts) {
                return Err(LoadError::Invalid(
                    "--latency-attempts must be between 1 and 10".into(),
                ));
            }
            if !(a.max_steal_pct.is_finite() && (0.0..=100.0).contains(&a.max_steal_pct)) {
                return Err(LoadError::Invalid(
                    "--max-steal-pct must be a percentage between 0 and 100".into(),
                ));
            }
            let cfg = BaselineConfig {
                rate: a.rate,
                duration: secs("--duration-secs", a.duration_secs)?,
                throughput_duration: secs("--throughput-secs", a.throughput_secs)?,
                latency_attempts: a.latency_attempts,
                max_steal_pct: a.max_steal_pct,
            };
            let (common, json) = a.common.into_common(false)?;
            (baseline(&common, &cfg).await?, json)
        }
        Command::Max(a) => {
            let cfg = MaxConfig {
                start_rate: a.start_rate,
                factor: a.factor,
                step: secs("--step-secs", a.step_secs)?,
                refine: a.refine,
                max_rate: a.max_rate,
                p99_bound_ms: a.p99_bound_ms,
                max_late_ratio: a.max_late_ratio,
                max_error_share: a.max_error_share,
                pause: secs("--pause-secs", a.pause_secs)?,
                against_baseline: a.against_baseline,
            };
            let (common, json) = a.common.into_common(a.against_baseline)?;
            (max(&common, &cfg).await?, json)
        }
        Command::ServeBaseline(a) => {
            let duration = secs("--duration-secs", a.duration_secs)?.min(Duration::from_secs(3600));
            let responder = Responder::start(a.listen, threads(a.threads), a.allow_non_loopback)?;
            println!(
                "kms-loadtest: baseline responder listening on {} for {:.0}s",
                responder.url,
                duration.as_secs_f64()
            );
            tokio::select! {
                _ = tokio::time::sleep(duration) => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            println!(
                "kms-loadtest: baseline responder served {} responses",
                responder.served()
            );
            return Ok(Outcome {
                report: None,
                json: None,
            });
        }
    };
    if let Some(path) = &json {
        report.write_json(path)?;
    }
    Ok(Outcome {
        report: Some(report),
        json,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_command_line() {
        let cli = Cli::try_parse_from([
            "kms-loadtest",
            "run",
            "--target",
            "http://127.0.0.1:1",
            "--access-key-id",
            "A1",
            "--secret-access-key",
            "S1",
            "--access-key-id",
            "A2",
            "--secret-access-key",
            "S2",
            "--context",
            "tenant=t1",
            "--context",
            "app=x",
            "--rate",
            "250",
        ])
        .unwrap();
        let Command::Run(a) = cli.command else {
            panic!("not run")
        };
        assert_eq!(a.rate, 250.0);
        let (common, json) = a.common.into_common(false).unwrap();
        assert!(json.is_none());
        assert_eq!(common.workload.creds.len(), 2);
        assert_eq!(common.workload.context.len(), 2);
        assert_eq!(common.limits.late_threshold, Duration::from_millis(10));
    }

    #[test]
    fn rejects_unpaired_credentials_and_bad_context() {
        let parse = |extra: &[&str]| {
            let mut args = vec!["kms-loadtest", "run"];
            args.extend_from_slice(extra);
            let Command::Run(a) = Cli::try_parse_from(args).unwrap().command else {
                panic!("not run")
            };
            a.common.into_common(false)
        };
        assert!(matches!(
            parse(&[
                "--access-key-id",
                "A",
                "--access-key-id",
                "B",
                "--secret-access-key",
                "S"
            ]),
            Err(LoadError::CredentialCount { ids: 2, secrets: 1 })
        ));
        assert!(matches!(
            parse(&[
                "--access-key-id",
                "A",
                "--secret-access-key",
                "S",
                "--context",
                "nokv"
            ]),
            Err(LoadError::Invalid(_))
        ));
    }
}
