//! The `kms-sidecar` command line: run the sidecar, or manage its client credentials. It lives in the
//! library so the end-to-end tests run the very same entry point as the shipped binary.

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use secrecy::ExposeSecret;

use crate::auth::clients::{self, Issued};
use crate::config::Options;
use crate::config::{AuditCommand, Cli, ClientsCommand, Command, Config, Secrets};
use crate::datadir::DataDir;
use crate::keys::registry::RegistrySettings;
use crate::observe;
use crate::observe::audit;
use crate::server::{Reloader, Sidecar};
use crate::tls::{self, TlsSource};

mod fleet;

/// Parses the command line and runs; the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kms-sidecar: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let config = Config::load(&cli.options, Secrets::from_env())?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config, cli.options),
        Command::Clients { command } => match config.registry() {
            RegistrySettings::DataDir => manage_clients(&config, command),
            RegistrySettings::Etcd(_) => fleet::manage_clients(&config, command),
        },
        Command::Registry { command } => fleet::transfer(&config, command),
        Command::Audit {
            command: AuditCommand::Verify { path },
        } => verify_audit(&path),
    }
}

/// The KMS endpoint a client should use and, with TLS, the certificate it must trust.
struct Endpoint {
    url: String,
    ca: Option<std::path::PathBuf>,
}

impl Endpoint {
    /// From the configuration alone (the CLI subcommands, where no listener is bound).
    fn configured(config: &Config) -> Self {
        match &config.tls() {
            None => Self {
                url: format!("http://{}", config.listen()),
                ca: None,
            },
            Some(source) => Self {
                url: format!("https://{}", config.listen()),
                ca: Some(match source {
                    TlsSource::Files { cert, .. } => cert.clone(),
                    TlsSource::SelfSigned => tls::self_signed_paths(config.data_dir()).0,
                }),
            },
        }
    }
}

/// Prints a freshly issued credential and an AWS CLI call it can make right away. Only admin
/// principals may call CreateKey, so anyone else gets ListKeys (it names no key, so no key policy
/// has to allow it) and the setting that would make it an admin.
fn print_credentials(
    issued: &Issued,
    region: &str,
    endpoint: &Endpoint,
    admins: &[String],
    note: &str,
) {
    let secret = issued.secret.expose_secret();
    let ca = endpoint
        .ca
        .as_ref()
        .map(|p| format!("AWS_CA_BUNDLE={} ", p.display()))
        .unwrap_or_default();
    let admin = admins.iter().any(|a| a == &issued.name);
    println!("{note}");
    println!("  principal:             {}", issued.name);
    println!("  AWS_ACCESS_KEY_ID={}", issued.access_key_id);
    println!("  AWS_SECRET_ACCESS_KEY={secret}");
    println!("Try it (AWS CLI):");
    println!(
        "  {ca}AWS_ACCESS_KEY_ID={} AWS_SECRET_ACCESS_KEY={secret} aws kms {} --region {region} --endpoint-url {}",
        issued.access_key_id,
        example_command(admin),
        endpoint.url
    );
    if !admin {
        for line in not_admin_hint(&issued.name, admins) {
            println!("{line}");
        }
    }
}

/// The `aws kms` subcommand the printed example runs: one the principal is allowed to call.
fn example_command(admin: bool) -> &'static str {
    if admin { "create-key" } else { "list-keys" }
}

/// What a non-admin principal may do, and how to make it an admin. `--admin-principal` replaces the
/// list (its default is `default`), so the suggestion keeps the admins there are.
fn not_admin_hint(name: &str, admins: &[String]) -> [String; 2] {
    let list = admins
        .iter()
        .map(String::as_str)
        .chain([name])
        .collect::<Vec<_>>()
        .join(",");
    [
        format!(
            "{name} is not an admin principal: it may use the keys whose key policy allows it, list keys and aliases and generate random bytes, but not create keys."
        ),
        format!(
            "To make it an admin, restart the sidecar with --admin-principal {list} (or KMS_SIDECAR_ADMIN_PRINCIPALS={list}, or admin_principals in the config file)."
        ),
    ]
}

fn serve(config: Config, options: Options) -> anyhow::Result<()> {
    let _telemetry = observe::telemetry::init(
        config.log_format(),
        config.log_level(),
        config.otlp_endpoint(),
    )?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let region = config.arn_scope().region;
        let data_dir = config.data_dir().to_path_buf();
        let admins = config.admin_principals().to_vec();
        let mut sidecar = Sidecar::start(config).await?;
        let endpoint = Endpoint {
            url: sidecar.kms_endpoint(),
            ca: sidecar.tls().map(|t| t.cert_path.clone()),
        };
        if let Some(tls) = sidecar.tls() {
            let what = if tls.generated { "generated a self-signed" } else { "using the" };
            println!(
                "kms-sidecar: TLS: {what} certificate {}; clients trust it with AWS_CA_BUNDLE={}",
                tls.cert_path.display(),
                tls.cert_path.display()
            );
        }
        if let Some(issued) = sidecar.take_issued() {
            print_credentials(
                &issued,
                &region,
                &endpoint,
                &admins,
                &format!(
                    "kms-sidecar: first run: issued a client credential (shown once; stored sealed in {}):",
                    data_dir.join("clients.json").display()
                ),
            );
        }
        // Installed before "listening" is printed: from then on a SIGHUP reloads, never kills.
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(hup) => {
                tokio::spawn(reload_on_sighup(hup, sidecar.reloader(), options));
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot install the SIGHUP handler; reload needs a restart")
            }
        }
        let kmsv2 = sidecar
            .kmsv2_socket()
            .map(|p| format!(" kmsv2=unix://{}", p.display()))
            .unwrap_or_default();
        let kmsv2 = match sidecar.xks_addr() {
            Some(addr) => {
                let scheme = if sidecar.tls().is_some() { "https" } else { "http" };
                format!("{kmsv2} xks={scheme}://{addr}")
            }
            None => kmsv2,
        };
        println!(
            "kms-sidecar: listening: kms={} admin=http://{} data_dir={}{kmsv2}",
            endpoint.url,
            sidecar.admin_addr(),
            data_dir.display()
        );
        tracing::info!(kms = %sidecar.kms_addr(), admin = %sidecar.admin_addr(), "serving");
        sidecar.run(shutdown_signal()).await
    })
}

/// SIGHUP re-reads the configuration (file, environment, the original flags) and applies what can
/// change at run time; a file that does not validate is logged and the running settings stay.
async fn reload_on_sighup(
    mut hup: tokio::signal::unix::Signal,
    reloader: Reloader,
    options: Options,
) {
    while hup.recv().await.is_some() {
        let result = Config::load(&options, Secrets::from_env()).and_then(|c| reloader.apply(&c));
        if let Err(e) = result {
            tracing::error!(error = %format!("{e:#}"), "reload failed; keeping the running settings");
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            tracing::warn!("cannot install signal handlers; only Ctrl-C stops the sidecar");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// `audit verify`: "broken" only for a log that fails the check; a missing or unreadable log is
/// reported as what it is (with its cause), since telling someone their audit trail was tampered
/// with when it is merely elsewhere sends them on the wrong hunt.
fn verify_audit(path: &std::path::Path) -> anyhow::Result<()> {
    match audit::verify(path) {
        Ok(report) => {
            println!("{report}");
            Ok(())
        }
        Err(e) if e.is_broken() => anyhow::bail!("audit chain broken: {e}"),
        Err(e) => Err(e.into()),
    }
}

fn manage_clients(config: &Config, command: ClientsCommand) -> anyhow::Result<()> {
    let dir = Arc::new(DataDir::open(config.data_dir(), config.root_key())?);
    match command {
        ClientsCommand::Add { name, tags } => {
            let tags = tags
                .iter()
                .map(|t| {
                    t.split_once('=')
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .ok_or_else(|| anyhow::anyhow!("--tag {t:?} must be KEY=VALUE"))
                })
                .collect::<anyhow::Result<_>>()?;
            let issued = clients::add(&dir, &name, tags)?;
            let endpoint = Endpoint::configured(config);
            print_credentials(
                &issued,
                &config.arn_scope().region,
                &endpoint,
                config.admin_principals(),
                "Issued a client credential (shown once):",
            );
        }
        ClientsCommand::RotateSecret { access_key_id } => {
            let issued = clients::rotate_secret(&dir, &access_key_id)?;
            let endpoint = Endpoint::configured(config);
            print_credentials(
                &issued,
                &config.arn_scope().region,
                &endpoint,
                config.admin_principals(),
                "Rotated the secret (shown once; the old one stops working within a second):",
            );
        }
        ClientsCommand::List => {
            println!("{:<22} {:<24} created", "access key id", "principal");
            for c in clients::list(&dir)? {
                let created = time::OffsetDateTime::from_unix_timestamp(c.created as i64)
                    .map(|t| t.to_string())
                    .unwrap_or_default();
                println!("{:<22} {:<24} {created}", c.access_key_id, c.name);
            }
        }
        ClientsCommand::Revoke { access_key_id } => {
            clients::revoke(&dir, &access_key_id)?;
            println!("Revoked {access_key_id}; a running sidecar rejects it within a second.");
        }
    }
    Ok(())
}
