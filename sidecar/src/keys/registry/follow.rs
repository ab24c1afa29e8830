//! The followers that keep the embedded backend's material and the client credentials current
//! from the registry (the key index follows in `keys/shared.rs`). They adapt the registry's
//! changes to their stores, which know nothing of etcd.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::{Change, Follower, Section};
use crate::auth::clients::ClientStore;
use crate::backend::embedded::Embedded;

/// Feeds sealed material (`material/<key id>/<version>`) to the embedded backend.
#[derive(Debug)]
pub struct MaterialFollower(pub Arc<Embedded>);

fn material_ref(name: &str) -> Option<(&str, u32)> {
    let (id, version) = name.rsplit_once('/')?;
    Some((id, version.parse().ok()?))
}

impl Follower for MaterialFollower {
    fn reset(&self, all: &[Change]) {
        self.0.forget_all();
        self.apply(all);
    }

    fn apply(&self, changes: &[Change]) {
        for c in changes.iter().filter(|c| c.section == Section::Material) {
            let Some((id, version)) = material_ref(&c.name) else {
                tracing::error!(name = %c.name, "unexpected material entry in the registry; skipped");
                continue;
            };
            match &c.value {
                Some(sealed) => {
                    if let Err(e) = self.0.adopt(id, version, sealed) {
                        tracing::error!(error = %format!("{e:#}"), "registry key material skipped");
                    }
                }
                None => self.0.forget(id, version),
            }
        }
    }
}

/// Issued and revoked client records by access key id.
type Tables = (BTreeMap<String, Vec<u8>>, BTreeMap<String, Vec<u8>>);

/// Feeds issued and revoked credentials to the client store (the whole table on each change:
/// it is small, and a revocation must replace the issued record atomically).
#[derive(Debug)]
pub struct ClientFollower {
    store: Arc<ClientStore>,
    tables: Mutex<Tables>,
}

impl ClientFollower {
    pub fn new(store: Arc<ClientStore>) -> Self {
        Self {
            store,
            tables: Mutex::new(Default::default()),
        }
    }

    fn update(&self, changes: &[Change], reset: bool) {
        let relevant = changes
            .iter()
            .filter(|c| matches!(c.section, Section::Clients | Section::Revoked));
        let Ok(mut tables) = self.tables.lock() else {
            return;
        };
        if reset {
            *tables = Default::default();
        }
        let mut touched = reset;
        for c in relevant {
            touched = true;
            let table = if c.section == Section::Clients {
                &mut tables.0
            } else {
                &mut tables.1
            };
            match &c.value {
                Some(v) => table.insert(c.name.clone(), v.clone()),
                None => table.remove(&c.name),
            };
        }
        if touched {
            let clients: Vec<&[u8]> = tables.0.values().map(Vec::as_slice).collect();
            let revoked: Vec<&[u8]> = tables.1.values().map(Vec::as_slice).collect();
            self.store.replace(&clients, &revoked);
        }
    }
}

impl Follower for ClientFollower {
    fn reset(&self, all: &[Change]) {
        self.update(all, true);
    }

    fn apply(&self, changes: &[Change]) {
        self.update(changes, false);
    }
}
