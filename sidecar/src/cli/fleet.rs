//! The command-line subcommands that work on the fleet's etcd registry: `registry import|export`
//! and `clients ...` when `--registry etcd` is configured.

use std::sync::Arc;

use anyhow::bail;

use super::{Endpoint, print_credentials};
use crate::config::{ClientsCommand, Config, RegistryCommand};
use crate::datadir::DataDir;
use crate::keys::registry::{EtcdRegistry, RegistrySettings, transfer};

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

async fn connect(config: &Config, dir: &DataDir) -> anyhow::Result<Arc<EtcdRegistry>> {
    let RegistrySettings::Etcd(settings) = config.registry() else {
        bail!("this command needs the etcd registry: --registry etcd --etcd-endpoints ...");
    };
    EtcdRegistry::connect(settings, dir).await
}

/// `registry import --from DIR` / `registry export --to DIR`.
pub(super) fn transfer(config: &Config, command: RegistryCommand) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        match command {
            RegistryCommand::Import { from } => {
                let dir = DataDir::open(&from, config.root_key())?;
                let _lock = dir.lock()?;
                let registry = connect(config, &dir).await?;
                let report = transfer::import(&registry, &dir).await?;
                println!(
                    "Imported {} entries from {} into etcd under {}.",
                    report.copied,
                    from.display(),
                    registry.prefix()
                );
                for s in &report.skipped {
                    println!("  already in etcd, left alone: {s}");
                }
            }
            RegistryCommand::Export { to } => {
                let dir = DataDir::open(&to, config.root_key())?;
                let _lock = dir.lock()?;
                let registry = connect(config, &dir).await?;
                let report = transfer::export(&registry, &dir).await?;
                println!(
                    "Exported {} entries from etcd under {} into {}.",
                    report.copied,
                    registry.prefix(),
                    to.display()
                );
            }
        }
        Ok(())
    })
}

/// `clients add|revoke|list` against the fleet's registry (every sidecar sees it within a second).
pub(super) fn manage_clients(config: &Config, command: ClientsCommand) -> anyhow::Result<()> {
    let dir = DataDir::open(config.data_dir(), config.root_key())?;
    runtime()?.block_on(async {
        let registry = connect(config, &dir).await?;
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
                let issued = transfer::add_client(&registry, &dir, &name, tags).await?;
                print_credentials(
                    &issued,
                    &config.arn_scope().region,
                    &Endpoint::configured(config),
                    config.admin_principals(),
                    "Issued a client credential in the fleet's registry (shown once):",
                );
            }
            ClientsCommand::Revoke { access_key_id } => {
                transfer::revoke_client(&registry, &access_key_id).await?;
                println!("Revoked {access_key_id}; every sidecar of the fleet rejects it within a second.");
            }
            ClientsCommand::List => {
                println!("{:<22} principal", "access key id");
                for (id, name) in transfer::list_clients(&registry).await? {
                    println!("{id:<22} {name}");
                }
            }
            ClientsCommand::RotateSecret { access_key_id } => {
                let issued =
                    transfer::rotate_client_secret(&registry, &dir, &access_key_id).await?;
                print_credentials(
                    &issued,
                    &config.arn_scope().region,
                    &Endpoint::configured(config),
                    config.admin_principals(),
                    "New secret in the fleet's registry (shown once); every sidecar of the fleet rejects the old one within a second:",
                );
            }
        }
        Ok(())
    })
}
