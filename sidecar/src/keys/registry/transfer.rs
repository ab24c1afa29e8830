//! Moving a registry between a data directory and etcd (`kms-sidecar registry import|export`), and
//! managing client credentials in etcd (`kms-sidecar clients ... --registry etcd`).
//!
//! Everything is copied sealed, byte for byte: the data directory and the fleet share one root
//! key, so material and secrets never exist in clear outside a sidecar's memory.

use std::collections::BTreeMap;
use std::fs;

use anyhow::{Context, bail};

use super::etcd::{Guarded, Write};
use super::{EtcdRegistry, Section};
use crate::auth::clients::{self, Issued};
use crate::datadir::{self, DataDir};
use crate::keys::model::{AliasFile, KeyMeta, RECORD_FORMAT};

/// What an import or export did.
#[derive(Debug, Default)]
pub struct Report {
    pub copied: usize,
    /// Entries that already existed at the destination and were left alone.
    pub skipped: Vec<String>,
}

/// Copies the data directory's registry into etcd, never overwriting an entry.
pub async fn import(registry: &EtcdRegistry, dir: &DataDir) -> anyhow::Result<Report> {
    let mut entries: Vec<(Section, String, Vec<u8>)> = Vec::new();
    // Material first: a sidecar watching the import never sees a key version without it.
    let material = dir.path().join("material");
    for entry in
        fs::read_dir(&material).with_context(|| format!("cannot read {}", material.display()))?
    {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let Some((id, version)) = name.strip_suffix(".key").and_then(|s| s.rsplit_once('.')) else {
            bail!(
                "unexpected file {} in the material directory",
                entry.path().display()
            );
        };
        entries.push((
            Section::Material,
            format!("{id}/{version}"),
            fs::read(entry.path())?,
        ));
    }
    let keys = dir.path().join("keys");
    for entry in fs::read_dir(&keys).with_context(|| format!("cannot read {}", keys.display()))? {
        let path = entry?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with('.') || !name.ends_with(".json") {
            continue;
        }
        let bytes = fs::read(&path)?;
        let meta: KeyMeta = serde_json::from_slice(&bytes)
            .with_context(|| format!("key record {} is corrupt", path.display()))?;
        entries.push((Section::Keys, meta.id.clone(), serde_json::to_vec(&meta)?));
    }
    if let Ok(bytes) = fs::read(dir.path().join("aliases.json")) {
        let file: AliasFile = serde_json::from_slice(&bytes).context("aliases.json is corrupt")?;
        for (name, entry) in file.aliases {
            entries.push((Section::Aliases, name, serde_json::to_vec(&entry)?));
        }
    }
    let (issued, revoked) = clients::export(dir)?;
    entries.extend(issued.into_iter().map(|(id, v)| (Section::Clients, id, v)));
    entries.extend(revoked.into_iter().map(|(id, v)| (Section::Revoked, id, v)));
    let mut report = Report::default();
    for (section, name, value) in entries {
        let guard = Guarded {
            section,
            name: name.clone(),
            revision: 0,
        };
        match registry
            .commit(&[guard], vec![Write::Put(section, name.clone(), value)])
            .await
        {
            Ok(_) => report.copied += 1,
            Err(super::etcd::WriteError::Conflict) => {
                report.skipped.push(format!("{}{name}", section.dir()))
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(report)
}

/// Copies the etcd registry into a data directory (files written crash-safe).
pub async fn export(registry: &EtcdRegistry, dir: &DataDir) -> anyhow::Result<Report> {
    let (_, all) = registry.load().await?;
    let mut report = Report::default();
    let mut aliases = BTreeMap::new();
    let mut issued = Vec::new();
    let mut revoked = Vec::new();
    for c in &all {
        let Some(value) = &c.value else { continue };
        match c.section {
            Section::Keys => {
                let meta: KeyMeta = serde_json::from_slice(value)
                    .with_context(|| format!("registry key {} is corrupt", c.name))?;
                let path = dir.path().join("keys").join(format!("{}.json", meta.id));
                datadir::write_atomic(&path, &serde_json::to_vec_pretty(&meta)?)?;
            }
            Section::Material => {
                let Some((id, version)) = c.name.rsplit_once('/') else {
                    continue;
                };
                let path = dir
                    .path()
                    .join("material")
                    .join(format!("{id}.{version}.key"));
                datadir::write_atomic(&path, value)?;
            }
            Section::Aliases => {
                aliases.insert(
                    c.name.clone(),
                    serde_json::from_slice(value)
                        .with_context(|| format!("registry alias {} is corrupt", c.name))?,
                );
            }
            Section::Clients => issued.push(value.as_slice()),
            Section::Revoked => revoked.push(value.as_slice()),
            Section::Other => continue,
        }
        report.copied += 1;
    }
    let file = AliasFile {
        format: RECORD_FORMAT,
        aliases,
    };
    datadir::write_atomic(
        &dir.path().join("aliases.json"),
        &serde_json::to_vec_pretty(&file)?,
    )?;
    clients::import(dir, &issued, &revoked)?;
    Ok(report)
}

/// Issues a credential in the registry; a principal name is unique across the fleet.
pub async fn add_client(
    registry: &EtcdRegistry,
    dir: &DataDir,
    name: &str,
    tags: BTreeMap<String, String>,
) -> anyhow::Result<Issued> {
    for c in registry.read_section(Section::Clients).await? {
        if c.value
            .as_deref()
            .map(clients::record_name)
            .transpose()?
            .as_deref()
            == Some(name)
        {
            bail!("a client named {name} already exists (revoke it first, or choose another name)");
        }
    }
    let (issued, record) = clients::new_record(dir, name, tags)?;
    let guard = Guarded {
        section: Section::Clients,
        name: issued.access_key_id.clone(),
        revision: 0,
    };
    registry
        .commit(
            &[guard],
            vec![Write::Put(
                Section::Clients,
                issued.access_key_id.clone(),
                record,
            )],
        )
        .await?;
    Ok(issued)
}

/// Revokes a credential fleet-wide: the issued record goes and the revoked one appears in one
/// transaction, so no sidecar ever sees it neither issued nor revoked.
pub async fn revoke_client(registry: &EtcdRegistry, access_key_id: &str) -> anyhow::Result<()> {
    let current = registry.read(Section::Clients, &[access_key_id]).await?;
    let Some(found) = current.first().filter(|c| c.value.is_some()) else {
        bail!("no client with access key id {access_key_id}");
    };
    let name = clients::record_name(found.value.as_deref().unwrap_or_default())?;
    let guard = Guarded {
        section: Section::Clients,
        name: access_key_id.to_string(),
        revision: found.revision,
    };
    registry
        .commit(
            &[guard],
            vec![
                Write::Delete(Section::Clients, access_key_id.to_string()),
                Write::Put(
                    Section::Revoked,
                    access_key_id.to_string(),
                    clients::revoked_json(access_key_id, &name)?,
                ),
            ],
        )
        .await?;
    Ok(())
}

/// Issues a new secret for a credential in the registry (same access key id and principal), as a
/// write guarded by the revision read: if the credential changed meanwhile (revoked, or rotated
/// by someone else), this rotation fails and nothing is lost. Every sidecar of the fleet accepts
/// only the new secret within a second.
pub async fn rotate_client_secret(
    registry: &EtcdRegistry,
    dir: &DataDir,
    access_key_id: &str,
) -> anyhow::Result<Issued> {
    let current = registry.read(Section::Clients, &[access_key_id]).await?;
    let Some((found, record)) = current
        .first()
        .and_then(|c| c.value.as_deref().map(|v| (c, v)))
    else {
        bail!("no client with access key id {access_key_id}");
    };
    let (issued, record) = clients::rotated_record(dir, record)?;
    let guard = Guarded {
        section: Section::Clients,
        name: access_key_id.to_string(),
        revision: found.revision,
    };
    match registry
        .commit(
            &[guard],
            vec![Write::Put(
                Section::Clients,
                access_key_id.to_string(),
                record,
            )],
        )
        .await
    {
        Ok(_) => Ok(issued),
        Err(super::etcd::WriteError::Conflict) => bail!(
            "the credential {access_key_id} changed while its secret was being rotated (revoked or rotated elsewhere); nothing was written"
        ),
        Err(e) => Err(e.into()),
    }
}

/// Issued credentials in the registry: (access key id, principal name).
pub async fn list_clients(registry: &EtcdRegistry) -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for c in registry.read_section(Section::Clients).await? {
        if let Some(v) = &c.value {
            out.push((c.name.clone(), clients::record_name(v)?));
        }
    }
    Ok(out)
}
