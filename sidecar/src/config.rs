//! Configuration in two stages: [`Options`] (what the command line, the environment and a TOML file
//! say, all optional) and [`Config`] (validated, with defaults applied). Precedence is flag >
//! environment > file > default; clap handles the first two, [`Config::load`] the rest.
//!
//! Secrets never come from flags (they would show in `ps`): the root key comes from the data
//! directory, a file, or the `KMS_SIDECAR_ROOT_KEY` environment variable.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use secrecy::SecretString;
use serde::Deserialize;

use crate::datadir::RootKeySource;
use crate::keys::ArnScope;
use crate::observe::LogFormat;

/// Default port of the KMS API.
pub const DEFAULT_KMS_PORT: u16 = 7300;
/// Default port of the admin API (`/metrics`, `/healthz`).
pub const DEFAULT_ADMIN_PORT: u16 = 7301;
/// Environment variable that may hold the root key (64 hex characters).
pub const ROOT_KEY_ENV: &str = "KMS_SIDECAR_ROOT_KEY";

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
}

#[derive(Debug, Subcommand)]
pub enum ClientsCommand {
    /// Issue a credential for principal NAME; prints the secret once.
    Add { name: String },
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

    /// Largest request body accepted, in bytes, 1024..=1048576 [default: 65536].
    #[arg(long, env = "KMS_SIDECAR_MAX_BODY_BYTES", global = true)]
    pub max_body_bytes: Option<u64>,

    /// Allowed clock skew of signed requests, in seconds, 1..=3600 [default: 300].
    #[arg(long, env = "KMS_SIDECAR_MAX_CLOCK_SKEW_SECS", global = true)]
    pub max_clock_skew_secs: Option<u64>,

    /// How often due rotations and deletions run, in seconds, 1..=86400 [default: 60].
    #[arg(long, env = "KMS_SIDECAR_MAINTENANCE_INTERVAL_SECS", global = true)]
    pub maintenance_interval_secs: Option<u64>,

    /// How long in-flight requests may take to finish at shutdown, in seconds, 0..=600 [default: 30].
    #[arg(long, env = "KMS_SIDECAR_SHUTDOWN_GRACE_SECS", global = true)]
    pub shutdown_grace_secs: Option<u64>,
}

/// A region name such as `us-east-1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Region(String);

impl Region {
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        let parts: Vec<&str> = s.split('-').collect();
        let ok = parts.len() >= 3
            && parts.iter().all(|p| {
                !p.is_empty()
                    && p.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            })
            && parts
                .last()
                .is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit()));
        if !ok {
            bail!("region {s:?} is not a region name like us-east-1");
        }
        Ok(Self(s.to_string()))
    }
}

/// A 12-digit account id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountId(String);

impl AccountId {
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        if s.len() != 12 || !s.bytes().all(|b| b.is_ascii_digit()) {
            bail!("account_id {s:?} must be 12 digits");
        }
        Ok(Self(s.to_string()))
    }
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub data_dir: PathBuf,
    pub region: Region,
    pub account_id: AccountId,
    pub root_key: RootKeySource,
    pub log_format: LogFormat,
    pub log_level: String,
    pub max_body_bytes: usize,
    pub max_clock_skew: Duration,
    pub maintenance_interval: Duration,
    pub shutdown_grace: Duration,
}

fn ranged(name: &str, value: Option<u64>, default: u64, min: u64, max: u64) -> anyhow::Result<u64> {
    let v = value.unwrap_or(default);
    if v < min || v > max {
        bail!("{name} = {v} is out of range {min}..={max}");
    }
    Ok(v)
}

fn addr(name: &str, value: Option<&str>, port: u16) -> anyhow::Result<SocketAddr> {
    match value {
        None => Ok(SocketAddr::from(([127, 0, 0, 1], port))),
        Some(s) => s
            .parse()
            .with_context(|| format!("{name} = {s:?} is not an address like 127.0.0.1:{port}")),
    }
}

fn read_file(path: &Path) -> anyhow::Result<Options> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("config file {} is invalid", path.display()))
}

impl Config {
    /// Merges flags/environment over the file (if any) over defaults, and validates.
    /// `root_key_env` is the value of [`ROOT_KEY_ENV`], passed in so tests need not touch the process
    /// environment.
    pub fn load(cli: &Options, root_key_env: Option<String>) -> anyhow::Result<Self> {
        let file = match &cli.config {
            Some(path) => read_file(path)?,
            None => Options::default(),
        };
        Self::merge(cli.clone(), file, root_key_env)
    }

    fn merge(cli: Options, file: Options, root_key_env: Option<String>) -> anyhow::Result<Self> {
        let listen = addr(
            "listen",
            cli.listen.or(file.listen).as_deref(),
            DEFAULT_KMS_PORT,
        )?;
        let admin_listen = addr(
            "admin_listen",
            cli.admin_listen.or(file.admin_listen).as_deref(),
            DEFAULT_ADMIN_PORT,
        )?;
        if listen.port() != 0 && listen == admin_listen {
            bail!("listen and admin_listen must differ (both are {listen})");
        }
        let root_key = match (root_key_env, cli.root_key_file.or(file.root_key_file)) {
            (Some(hex), _) => RootKeySource::Hex(SecretString::from(hex)),
            (None, Some(path)) => RootKeySource::File(path),
            (None, None) => RootKeySource::DataDir,
        };
        let log_level = cli
            .log_level
            .or(file.log_level)
            .unwrap_or_else(|| "info".to_string());
        tracing_subscriber::EnvFilter::try_new(&log_level)
            .with_context(|| format!("log_level {log_level:?} is not a valid filter"))?;
        Ok(Self {
            listen,
            admin_listen,
            data_dir: cli
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from("kms-sidecar-data")),
            region: Region::parse(cli.region.or(file.region).as_deref().unwrap_or("us-east-1"))?,
            account_id: AccountId::parse(
                cli.account_id
                    .or(file.account_id)
                    .as_deref()
                    .unwrap_or("111122223333"),
            )?,
            root_key,
            log_format: cli
                .log_format
                .or(file.log_format)
                .unwrap_or(LogFormat::Text),
            log_level,
            max_body_bytes: ranged(
                "max_body_bytes",
                cli.max_body_bytes.or(file.max_body_bytes),
                65_536,
                1024,
                1_048_576,
            )? as usize,
            max_clock_skew: Duration::from_secs(ranged(
                "max_clock_skew_secs",
                cli.max_clock_skew_secs.or(file.max_clock_skew_secs),
                300,
                1,
                3600,
            )?),
            maintenance_interval: Duration::from_secs(ranged(
                "maintenance_interval_secs",
                cli.maintenance_interval_secs
                    .or(file.maintenance_interval_secs),
                60,
                1,
                86_400,
            )?),
            shutdown_grace: Duration::from_secs(ranged(
                "shutdown_grace_secs",
                cli.shutdown_grace_secs.or(file.shutdown_grace_secs),
                30,
                0,
                600,
            )?),
        })
    }

    /// The region and account for ARNs.
    pub fn arn_scope(&self) -> ArnScope {
        ArnScope {
            region: self.region.0.clone(),
            account: self.account_id.0.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> anyhow::Result<Options> {
        Ok(toml::from_str(text)?)
    }

    #[test]
    fn defaults_bind_loopback() {
        let c = Config::merge(Options::default(), Options::default(), None).unwrap();
        assert_eq!(c.listen, "127.0.0.1:7300".parse().unwrap());
        assert_eq!(c.admin_listen, "127.0.0.1:7301".parse().unwrap());
        assert_eq!(c.max_body_bytes, 65_536);
        assert_eq!(c.max_clock_skew, Duration::from_secs(300));
        assert!(matches!(c.root_key, RootKeySource::DataDir));
        assert_eq!(c.arn_scope().region, "us-east-1");
    }

    #[test]
    fn flag_beats_file_beats_default() {
        let f = file("region = \"eu-west-1\"\naccount_id = \"123456789012\"\n").unwrap();
        let cli = Options {
            region: Some("ap-south-2".into()),
            ..Options::default()
        };
        let c = Config::merge(cli, f, None).unwrap();
        assert_eq!(c.region, Region("ap-south-2".into()));
        assert_eq!(c.account_id, AccountId("123456789012".into()));
    }

    #[test]
    fn rejects_unknown_fields_and_bad_values() {
        let err = file("lisen = \"127.0.0.1:1\"").unwrap_err();
        assert!(format!("{err:#}").contains("unknown field"), "{err:#}");
        let bad = [
            Options {
                region: Some("Mars".into()),
                ..Options::default()
            },
            Options {
                account_id: Some("12".into()),
                ..Options::default()
            },
            Options {
                listen: Some("nowhere".into()),
                ..Options::default()
            },
            Options {
                max_body_bytes: Some(10),
                ..Options::default()
            },
            Options {
                max_clock_skew_secs: Some(0),
                ..Options::default()
            },
            Options {
                maintenance_interval_secs: Some(0),
                ..Options::default()
            },
            Options {
                log_level: Some("=[".into()),
                ..Options::default()
            },
            Options {
                listen: Some("127.0.0.1:5000".into()),
                admin_listen: Some("127.0.0.1:5000".into()),
                ..Options::default()
            },
        ];
        for cli in bad {
            let dbg = format!("{cli:?}");
            assert!(
                Config::merge(cli, Options::default(), None).is_err(),
                "{dbg}"
            );
        }
    }

    #[test]
    fn root_key_precedence() {
        let cli = Options {
            root_key_file: Some("/k".into()),
            ..Options::default()
        };
        let c = Config::merge(cli.clone(), Options::default(), Some("00".repeat(32))).unwrap();
        assert!(matches!(c.root_key, RootKeySource::Hex(_)));
        assert!(
            !format!("{:?}", c.root_key).contains("0000"),
            "root key leaked in Debug"
        );
        let c = Config::merge(cli, Options::default(), None).unwrap();
        assert!(matches!(c.root_key, RootKeySource::File(_)));
    }

    #[test]
    fn cli_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "kms-sidecar",
            "clients",
            "add",
            "app",
            "--data-dir",
            "/tmp/x",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Some(Command::Clients {
                command: ClientsCommand::Add { .. }
            })
        ));
        assert_eq!(cli.options.data_dir, Some(PathBuf::from("/tmp/x")));
    }
}
