//! The command line: the clap [`Cli`], its subcommands, and [`Options`] (the settings a flag, the
//! environment or the config file may give).
//!
//! Kept apart from validation so the raw, all-optional surface that users type is in one place and
//! [`Config`](super::Config) only deals with what it becomes.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use serde::Deserialize;

use super::BackendKind;
use crate::observe::LogFormat;
use crate::observe::audit::{FailureMode, FsyncPolicy};

#[derive(Debug, Parser)]
#[command(
    name = "kms-sidecar",
    version,
    about = "A localhost AWS KMS API sidecar: point an AWS SDK's endpoint URL at it.",
    after_help = "Every option can also be set in the TOML file given by --config (same names, snake_case), \
and in the environment variable shown. Precedence: flag > environment > file > default.\n\
The root key that seals the data directory is read from KMS_SIDECAR_ROOT_KEY (64 hex characters), \
--root-key-file, or <data-dir>/root.key (created on first run)."
)]
pub struct Cli {
    #[command(flatten)]
    pub options: Options,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the sidecar (the default when no command is given).
    Serve,
    /// Manage client credentials (changes reach a running sidecar within a second).
    Clients {
        #[command(subcommand)]
        command: ClientsCommand,
    },
    /// Move the key registry between a data directory and etcd (--registry etcd ...).
    Registry {
        #[command(subcommand)]
        command: RegistryCommand,
    },
    /// Work with the audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum RegistryCommand {
    /// Copies a data directory's keys, aliases, sealed material and clients into etcd (entries
    /// that exist there are left alone and reported). The root key must be the fleet's.
    Import {
        #[arg(long)]
        from: PathBuf,
    },
    /// Copies the etcd registry into a data directory (a single-node fallback or a backup).
    Export {
        #[arg(long)]
        to: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain of an audit log (a directory or its audit.jsonl); prints the first
    /// broken record and exits 1 if the chain is broken.
    Verify { path: PathBuf },
}

#[derive(Debug, Subcommand)]
pub enum ClientsCommand {
    /// Issue a credential for principal NAME; prints the secret once.
    Add {
        name: String,
        /// A principal attribute for key policies (`aws:PrincipalTag/KEY`), e.g. --tag tenant=a.
        #[arg(long = "tag", value_name = "KEY=VALUE")]
        tags: Vec<String>,
    },
    /// Issue a new secret for a credential (same access key id); prints it once.
    RotateSecret { access_key_id: String },
    /// List issued credentials (never their secrets).
    List,
    /// Revoke a credential by access key id.
    Revoke { access_key_id: String },
}

/// Settings from flags and environment; each may also come from the config file.
#[derive(Debug, Default, Clone, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Options {
    /// TOML configuration file.
    #[arg(long, env = "KMS_SIDECAR_CONFIG", global = true)]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// Data directory holding keys, aliases, clients and the root key [default: ./kms-sidecar-data].
    #[arg(long, env = "KMS_SIDECAR_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,

    /// Address of the KMS API [default: 127.0.0.1:7300]. Port 0 picks a free port.
    #[arg(long, env = "KMS_SIDECAR_LISTEN", global = true)]
    pub listen: Option<String>,

    /// Address of the admin API: /metrics, /healthz [default: 127.0.0.1:7301].
    #[arg(long, env = "KMS_SIDECAR_ADMIN_LISTEN", global = true)]
    pub admin_listen: Option<String>,

    /// AWS region used in key and alias ARNs [default: us-east-1].
    #[arg(long, env = "KMS_SIDECAR_REGION", global = true)]
    pub region: Option<String>,

    /// 12-digit AWS account id used in ARNs [default: 111122223333].
    #[arg(long, env = "KMS_SIDECAR_ACCOUNT_ID", global = true)]
    pub account_id: Option<String>,

    /// File holding the root key (64 hex characters) instead of <data-dir>/root.key.
    #[arg(long, env = "KMS_SIDECAR_ROOT_KEY_FILE", global = true)]
    pub root_key_file: Option<PathBuf>,

    /// Log format [default: text].
    #[arg(long, env = "KMS_SIDECAR_LOG_FORMAT", global = true, value_enum)]
    pub log_format: Option<LogFormat>,

    /// Log filter, e.g. info or kms_sidecar=debug [default: info]. RUST_LOG overrides it.
    #[arg(long, env = "KMS_SIDECAR_LOG_LEVEL", global = true)]
    pub log_level: Option<String>,

    /// OTLP/HTTP endpoint for traces, e.g. http://127.0.0.1:4318/v1/traces; unset: no traces.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", global = true)]
    pub otlp_endpoint: Option<String>,

    /// Serve the KMS API over HTTPS (rustls); `--tls` alone means true. Without --tls-cert/--tls-key a
    /// self-signed certificate is generated once into <data-dir>/tls/ [default: false].
    #[arg(long, env = "KMS_SIDECAR_TLS", global = true, num_args = 0..=1, default_missing_value = "true")]
    pub tls: Option<bool>,

    /// PEM certificate chain for --tls (with --tls-key) instead of the generated self-signed one.
    #[arg(long, env = "KMS_SIDECAR_TLS_CERT", global = true)]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for --tls-cert.
    #[arg(long, env = "KMS_SIDECAR_TLS_KEY", global = true)]
    pub tls_key: Option<PathBuf>,

    /// File holding the admin API's bearer token (16+ printable characters); KMS_SIDECAR_ADMIN_TOKEN
    /// gives the token itself. When set, every admin path but /healthz and /readyz needs
    /// `Authorization: Bearer <token>` [default: none].
    #[arg(long, env = "KMS_SIDECAR_ADMIN_TOKEN_FILE", global = true)]
    pub admin_token_file: Option<PathBuf>,

    /// Largest request body accepted, in bytes, 1024..=1048576 [default: 65536].
    #[arg(long, env = "KMS_SIDECAR_MAX_BODY_BYTES", global = true)]
    pub max_body_bytes: Option<u64>,

    /// Allowed clock skew of signed requests, in seconds, 1..=3600 [default: 300].
    #[arg(long, env = "KMS_SIDECAR_MAX_CLOCK_SKEW_SECS", global = true)]
    pub max_clock_skew_secs: Option<u64>,

    /// How often due rotations and deletions run, in seconds, 1..=86400 [default: 60].
    #[arg(long, env = "KMS_SIDECAR_MAINTENANCE_INTERVAL_SECS", global = true)]
    pub maintenance_interval_secs: Option<u64>,

    /// Key backend: embedded (sealed keys in the data directory), pkcs11 (an HSM) or upstream (another
    /// KMS: AWS KMS or a KMS-compatible endpoint) [default: embedded].
    #[arg(long, env = "KMS_SIDECAR_BACKEND", global = true, value_enum)]
    pub backend: Option<BackendKind>,

    /// PKCS#11 module (shared library) [default: /usr/lib/softhsm/libsofthsm2.so].
    #[arg(long, env = "KMS_SIDECAR_PKCS11_MODULE", global = true)]
    pub pkcs11_module: Option<PathBuf>,

    /// Label of the PKCS#11 token holding the keys (required with --backend pkcs11).
    #[arg(long, env = "KMS_SIDECAR_PKCS11_TOKEN_LABEL", global = true)]
    pub pkcs11_token_label: Option<String>,

    /// File holding the token's user PIN (or set KMS_SIDECAR_PKCS11_PIN).
    #[arg(long, env = "KMS_SIDECAR_PKCS11_PIN_FILE", global = true)]
    pub pkcs11_pin_file: Option<PathBuf>,

    /// Prefix of the token objects' labels, so sidecars can share a token [default: kms-sidecar].
    #[arg(long, env = "KMS_SIDECAR_PKCS11_KEY_LABEL_PREFIX", global = true)]
    pub pkcs11_key_label_prefix: Option<String>,

    /// PKCS#11 sessions (and token worker threads), 1..=64 [default: 2].
    #[arg(long, env = "KMS_SIDECAR_PKCS11_SESSIONS", global = true)]
    pub pkcs11_sessions: Option<u64>,

    /// Upstream KMS endpoint URL: https://..., or http:// to a loopback host only
    /// [default: the AWS KMS endpoint of --upstream-region].
    #[arg(long, env = "KMS_SIDECAR_UPSTREAM_ENDPOINT", global = true)]
    pub upstream_endpoint: Option<String>,

    /// Region the upstream requests are signed for [default: --region].
    #[arg(long, env = "KMS_SIDECAR_UPSTREAM_REGION", global = true)]
    pub upstream_region: Option<String>,

    /// Access key id for the upstream KMS (required with --backend upstream).
    #[arg(long, env = "KMS_SIDECAR_UPSTREAM_ACCESS_KEY_ID", global = true)]
    pub upstream_access_key_id: Option<String>,

    /// File holding the upstream secret access key (or set KMS_SIDECAR_UPSTREAM_SECRET_ACCESS_KEY).
    #[arg(
        long,
        env = "KMS_SIDECAR_UPSTREAM_SECRET_ACCESS_KEY_FILE",
        global = true
    )]
    pub upstream_secret_access_key_file: Option<PathBuf>,

    /// Prefix of the upstream aliases, alias/<prefix>/<key id>/v<version>, so sidecars can share an
    /// account [default: kms-sidecar].
    #[arg(long, env = "KMS_SIDECAR_UPSTREAM_ALIAS_PREFIX", global = true)]
    pub upstream_alias_prefix: Option<String>,

    /// Mode: local (the sidecar is the key authority) or proxy (in front of an existing KMS at
    /// --upstream-endpoint: its key ids and ciphertexts, the sidecar's caches, limits and audit)
    /// [default: local].
    #[arg(long, env = "KMS_SIDECAR_MODE", global = true, value_enum)]
    pub mode: Option<super::proxy::Mode>,

    /// Proxy mode: JSON file of local rules saying which principal may use which upstream keys
    /// (required with --mode proxy; see README "In front of AWS KMS").
    #[arg(long, env = "KMS_SIDECAR_PROXY_POLICY_FILE", global = true)]
    pub proxy_policy_file: Option<PathBuf>,

    /// Proxy mode: how often the upstream's aliases and key rotation status are polled, in seconds,
    /// 1..=86400 [default: 60].
    #[arg(long, env = "KMS_SIDECAR_PROXY_POLL_INTERVAL_SECS", global = true)]
    pub proxy_poll_interval_secs: Option<u64>,

    /// Days after a rotation is due before the key counts as overdue, 0..=365 [default: 1].
    #[arg(long, env = "KMS_SIDECAR_ROTATION_GRACE_DAYS", global = true)]
    pub rotation_grace_days: Option<u64>,

    /// Count keys without automatic rotation as non-compliant [default: false].
    #[arg(long, env = "KMS_SIDECAR_ROTATION_REQUIRED", global = true)]
    pub rotation_required: Option<bool>,

    /// Keys with their own metric series; later keys share the `other` label, 1..=10000 [default: 100].
    #[arg(long, env = "KMS_SIDECAR_METRICS_MAX_KEYS", global = true)]
    pub metrics_max_keys: Option<u64>,

    /// Price per 10,000 backend requests for the cost estimate, in dollars [default: 0.03, AWS's].
    #[arg(long, env = "KMS_SIDECAR_PRICE_PER_10K_REQUESTS", global = true)]
    pub price_per_10k_requests: Option<f64>,

    /// Price per key and month for the cost estimate, in dollars [default: 1.0, AWS's].
    #[arg(long, env = "KMS_SIDECAR_PRICE_PER_KEY_MONTH", global = true)]
    pub price_per_key_month: Option<f64>,

    /// Principals (client names) that may create keys and always manage policies and deletion;
    /// repeatable or comma-separated [default: default].
    #[arg(
        long = "admin-principal",
        env = "KMS_SIDECAR_ADMIN_PRINCIPALS",
        global = true,
        value_delimiter = ','
    )]
    pub admin_principals: Option<Vec<String>>,

    /// Directory of the audit log [default: <data-dir>/audit].
    #[arg(long, env = "KMS_SIDECAR_AUDIT_DIR", global = true)]
    pub audit_dir: Option<PathBuf>,

    /// When the audit log is fsynced [default: every_flush].
    #[arg(long, env = "KMS_SIDECAR_AUDIT_FSYNC", global = true, value_enum)]
    pub audit_fsync: Option<FsyncPolicy>,

    /// While the audit log cannot be written: closed refuses calls, open keeps serving [default: closed].
    #[arg(long, env = "KMS_SIDECAR_AUDIT_ON_FAILURE", global = true, value_enum)]
    pub audit_on_failure: Option<FailureMode>,

    /// Rotate the audit file beyond this size, in bytes, 4096..=10737418240 [default: 104857600].
    #[arg(long, env = "KMS_SIDECAR_AUDIT_MAX_BYTES", global = true)]
    pub audit_max_bytes: Option<u64>,

    /// Also log encryption-context values (not only keys) in the audit log [default: false].
    #[arg(long, env = "KMS_SIDECAR_AUDIT_CONTEXT_VALUES", global = true)]
    pub audit_include_context_values: Option<bool>,

    /// How long a decrypted plaintext is served from the cache, in seconds, 1..=86400 [default: 300].
    #[arg(long, env = "KMS_SIDECAR_CACHE_TTL_SECS", global = true)]
    pub cache_ttl_secs: Option<u64>,

    /// Decrypt cache entries, 0 (off)..=10000000 [default: 10000].
    #[arg(long, env = "KMS_SIDECAR_CACHE_MAX_ENTRIES", global = true)]
    pub cache_max_entries: Option<u64>,

    /// Decrypt cache size bound in bytes, 0 (off)..=17179869184 [default: 16777216].
    #[arg(long, env = "KMS_SIDECAR_CACHE_MAX_BYTES", global = true)]
    pub cache_max_bytes: Option<u64>,

    /// Seconds past the TTL a cached plaintext may be served while the backend fails, 0..=86400
    /// [default: 300].
    #[arg(long, env = "KMS_SIDECAR_CACHE_STALE_GRACE_SECS", global = true)]
    pub cache_stale_grace_secs: Option<u64>,

    /// Drop a key's cached plaintexts when it is rotated on demand [default: true].
    #[arg(long, env = "KMS_SIDECAR_CACHE_INVALIDATE_ON_ROTATION", global = true)]
    pub cache_invalidate_on_rotation: Option<bool>,

    /// Pre-generated data keys held per KMS key, 0 (off)..=1024 [default: 16].
    #[arg(long, env = "KMS_SIDECAR_DATA_KEY_POOL_SIZE", global = true)]
    pub data_key_pool_size: Option<u64>,

    /// Refill a key's pool when fewer than this many remain [default: half the pool size].
    #[arg(long, env = "KMS_SIDECAR_DATA_KEY_POOL_LOW_WATERMARK", global = true)]
    pub data_key_pool_low_watermark: Option<u64>,

    /// Keys (ids or alias names) whose data keys GenerateDataKey may hand out again to the same
    /// principal, context and length, within the age and use limits below; repeatable or
    /// comma-separated [default: none, every data key is fresh].
    #[arg(
        long = "data-key-reuse-key",
        env = "KMS_SIDECAR_DATA_KEY_REUSE_KEYS",
        global = true,
        value_delimiter = ','
    )]
    pub data_key_reuse_keys: Option<Vec<String>>,

    /// A reused data key is not handed out once this old, seconds, 1..=86400 [default: 300].
    #[arg(long, env = "KMS_SIDECAR_DATA_KEY_REUSE_MAX_AGE_SECS", global = true)]
    pub data_key_reuse_max_age_secs: Option<u64>,

    /// A reused data key is handed out at most this many times, 1..=1000000 [default: 100].
    #[arg(long, env = "KMS_SIDECAR_DATA_KEY_REUSE_MAX_USES", global = true)]
    pub data_key_reuse_max_uses: Option<u64>,

    /// Reusable data keys held at once, 1..=1000000 [default: 10000].
    #[arg(long, env = "KMS_SIDECAR_DATA_KEY_REUSE_MAX_ENTRIES", global = true)]
    pub data_key_reuse_max_entries: Option<u64>,

    /// Global inbound limit, calls per second (unset: none; see also --emulate-aws-quotas).
    #[arg(long, env = "KMS_SIDECAR_RATE_LIMIT_GLOBAL", global = true)]
    pub rate_limit_global: Option<f64>,

    /// Burst of the global limit [default: one second's worth].
    #[arg(long, env = "KMS_SIDECAR_RATE_LIMIT_GLOBAL_BURST", global = true)]
    pub rate_limit_global_burst: Option<u32>,

    /// Inbound limit per principal, calls per second (unset: none).
    #[arg(long, env = "KMS_SIDECAR_RATE_LIMIT_PER_PRINCIPAL", global = true)]
    pub rate_limit_per_principal: Option<f64>,

    /// Burst of the per-principal limit [default: one second's worth].
    #[arg(
        long,
        env = "KMS_SIDECAR_RATE_LIMIT_PER_PRINCIPAL_BURST",
        global = true
    )]
    pub rate_limit_per_principal_burst: Option<u32>,

    /// Inbound limit per key, calls per second (unset: none).
    #[arg(long, env = "KMS_SIDECAR_RATE_LIMIT_PER_KEY", global = true)]
    pub rate_limit_per_key: Option<f64>,

    /// Burst of the per-key limit [default: one second's worth].
    #[arg(long, env = "KMS_SIDECAR_RATE_LIMIT_PER_KEY_BURST", global = true)]
    pub rate_limit_per_key_burst: Option<u32>,

    /// Per-principal limits in calls per second, overriding the default (config file only, e.g.
    /// `rate_limit_principals = { billing = 50.0 }`).
    #[arg(skip)]
    pub rate_limit_principals: Option<std::collections::BTreeMap<String, f64>>,

    /// Apply AWS KMS's shared quota for symmetric cryptographic operations (10,000 req/s per account
    /// and Region) as the global limit, so throttling looks as in production [default: false].
    #[arg(long, env = "KMS_SIDECAR_EMULATE_AWS_QUOTAS", global = true)]
    pub emulate_aws_quotas: Option<bool>,

    /// Outbound budget: backend calls per second (unset: none; an upstream KMS should set a share of
    /// the account quota).
    #[arg(long, env = "KMS_SIDECAR_OUTBOUND_PER_SECOND", global = true)]
    pub outbound_per_second: Option<f64>,

    /// Time a backend call may take, retries included, in milliseconds [default: 5000].
    #[arg(long, env = "KMS_SIDECAR_BACKEND_TIMEOUT_MS", global = true)]
    pub backend_timeout_ms: Option<u64>,

    /// Backend attempts per call, the first included (1: no retries) [default: 3].
    #[arg(long, env = "KMS_SIDECAR_RETRY_MAX_ATTEMPTS", global = true)]
    pub retry_max_attempts: Option<u32>,

    /// Upper bound of the first retry delay, in milliseconds (full jitter) [default: 25].
    #[arg(long, env = "KMS_SIDECAR_RETRY_BASE_MS", global = true)]
    pub retry_base_ms: Option<u64>,

    /// Upper bound of any retry delay, in milliseconds [default: 1000].
    #[arg(long, env = "KMS_SIDECAR_RETRY_CAP_MS", global = true)]
    pub retry_cap_ms: Option<u64>,

    /// Consecutive retryable backend failures that open the circuit breaker [default: 5].
    #[arg(long, env = "KMS_SIDECAR_BREAKER_CONSECUTIVE_FAILURES", global = true)]
    pub breaker_consecutive_failures: Option<u32>,

    /// Seconds the breaker stays open before probing the backend [default: 5].
    #[arg(long, env = "KMS_SIDECAR_BREAKER_COOL_DOWN_SECS", global = true)]
    pub breaker_cool_down_secs: Option<u64>,

    /// Allow fault injection through the admin API (`/v1/faults`), for tests and game days; the bare
    /// flag means true [default: false].
    #[arg(
        long,
        env = "KMS_SIDECAR_FAULTS_ENABLED",
        global = true,
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub faults_enabled: Option<bool>,

    /// How long in-flight requests may take to finish at shutdown, in seconds, 0..=600 [default: 30].
    #[arg(long, env = "KMS_SIDECAR_SHUTDOWN_GRACE_SECS", global = true)]
    pub shutdown_grace_secs: Option<u64>,

    /// Serve the Kubernetes KMS v2 plugin API (gRPC) on this Unix socket, created with mode 0600
    /// (a stale socket is replaced, the socket is removed at exit) [default: off].
    #[arg(long, env = "KMS_SIDECAR_KMSV2_SOCKET", global = true)]
    pub kmsv2_socket: Option<PathBuf>,

    /// A group (name or id) that may connect to the KMS v2 socket too: it becomes 0660 and owned by
    /// that group [default: none, 0600].
    #[arg(long, env = "KMS_SIDECAR_KMSV2_SOCKET_GROUP", global = true)]
    pub kmsv2_socket_group: Option<String>,

    /// The key (id, ARN, alias name or alias ARN) that wraps the API server's data keys; must exist
    /// at start. Required with --kmsv2-socket.
    #[arg(long, env = "KMS_SIDECAR_KMSV2_KEY_ID", global = true)]
    pub kmsv2_key_id: Option<String>,

    /// The principal the API server's calls run as (key policies, rate limits, metrics, audit)
    /// [default: kubernetes].
    #[arg(long, env = "KMS_SIDECAR_KMSV2_PRINCIPAL", global = true)]
    pub kmsv2_principal: Option<String>,

    /// Serve the AWS KMS External Key Store (XKS) proxy API on this address (HTTPS with --tls)
    /// [default: off]. Needs --xks-config.
    #[arg(long, env = "KMS_SIDECAR_XKS_LISTEN", global = true)]
    pub xks_listen: Option<std::net::SocketAddr>,

    /// TOML file with the XKS URI path prefixes, their SigV4 credentials (secrets: never flags),
    /// principals and the external key ids (see docs/xks.md).
    #[arg(long, env = "KMS_SIDECAR_XKS_CONFIG", global = true)]
    pub xks_config: Option<PathBuf>,

    // --- the key registry (keys/registry/): data directory, or etcd shared by a fleet ---
    /// Where keys, aliases, policies, sealed material and clients live: datadir (this sidecar's data
    /// directory) or etcd (shared by a fleet) [default: datadir].
    #[arg(long, env = "KMS_SIDECAR_REGISTRY", global = true)]
    pub registry: Option<String>,
    /// etcd endpoints, comma-separated (http:// or https://), with --registry etcd.
    #[arg(long, env = "KMS_SIDECAR_ETCD_ENDPOINTS", global = true)]
    pub etcd_endpoints: Option<String>,
    /// Prefix of every registry key in etcd, so fleets can share a cluster [default: /kms-sidecar/].
    #[arg(long, env = "KMS_SIDECAR_ETCD_PREFIX", global = true)]
    pub etcd_prefix: Option<String>,
    /// PEM CA bundle for https:// etcd endpoints.
    #[arg(long, env = "KMS_SIDECAR_ETCD_CA_FILE", global = true)]
    pub etcd_ca_file: Option<PathBuf>,
    /// PEM client certificate for etcd mutual TLS (with --etcd-key-file).
    #[arg(long, env = "KMS_SIDECAR_ETCD_CERT_FILE", global = true)]
    pub etcd_cert_file: Option<PathBuf>,
    /// PEM client key for etcd mutual TLS.
    #[arg(long, env = "KMS_SIDECAR_ETCD_KEY_FILE", global = true)]
    pub etcd_key_file: Option<PathBuf>,
    /// etcd user (the password from KMS_SIDECAR_ETCD_PASSWORD or --etcd-password-file).
    #[arg(long, env = "KMS_SIDECAR_ETCD_USER", global = true)]
    pub etcd_user: Option<String>,
    /// File holding the etcd password.
    #[arg(long, env = "KMS_SIDECAR_ETCD_PASSWORD_FILE", global = true)]
    pub etcd_password_file: Option<PathBuf>,
}
