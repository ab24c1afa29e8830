//! What the sidecar knows about a key (never its material): the persisted record and its KMS view.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::kms::Timestamp;

/// Key states as KMS names them (only those a symmetric key in this sidecar can reach).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyState {
    Enabled,
    Disabled,
    PendingDeletion,
}

impl KeyState {
    pub const fn as_str(self) -> &'static str {
        match self {
            KeyState::Enabled => "Enabled",
            KeyState::Disabled => "Disabled",
            KeyState::PendingDeletion => "PendingDeletion",
        }
    }
}

/// Why a key version exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RotationType {
    #[serde(rename = "AUTOMATIC")]
    Automatic,
    #[serde(rename = "ON_DEMAND")]
    OnDemand,
}

impl RotationType {
    pub const fn as_str(self) -> &'static str {
        match self {
            RotationType::Automatic => "AUTOMATIC",
            RotationType::OnDemand => "ON_DEMAND",
        }
    }
}

/// One key version. Version 1 is created with the key; each rotation appends one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyVersion {
    pub version: u32,
    pub created: Timestamp,
    /// `None` for the key's first version.
    pub rotation: Option<RotationType>,
}

/// The persisted record of one key (`keys/<id>.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyMeta {
    /// Record format, for future migrations.
    pub format: u32,
    pub id: String,
    /// Which backend holds the material.
    pub backend: String,
    pub created: Timestamp,
    pub description: String,
    pub state: KeyState,
    pub deletion_date: Option<Timestamp>,
    pub pending_window_days: Option<u32>,
    /// Never empty; the last entry is the current version.
    pub versions: Vec<KeyVersion>,
    pub rotation_enabled: bool,
    pub rotation_period_days: Option<u32>,
    pub next_rotation: Option<Timestamp>,
    pub tags: BTreeMap<String, String>,
    /// The key policy document (`None` for keys created before policies: admins only).
    #[serde(default)]
    pub policy: Option<String>,
}

pub const RECORD_FORMAT: u32 = 1;
const DAY: f64 = 86_400.0;

impl KeyMeta {
    /// The version new ciphertexts are made with.
    pub fn current_version(&self) -> u32 {
        self.versions.last().map_or(1, |v| v.version)
    }

    pub fn has_version(&self, version: u32) -> bool {
        self.versions.iter().any(|v| v.version == version)
    }

    /// When the next automatic rotation is due, counted from `from` (enabling or last rotation).
    pub fn next_rotation_from(&self, from: Timestamp) -> Option<Timestamp> {
        self.rotation_period_days
            .filter(|_| self.rotation_enabled)
            .map(|days| from + f64::from(days) * DAY)
    }

    /// Whether automatic rotation is due at `now` (only Enabled keys rotate, as in KMS).
    pub fn rotation_due(&self, now: Timestamp) -> bool {
        self.state == KeyState::Enabled
            && self.rotation_enabled
            && self.next_rotation.is_some_and(|t| t <= now)
    }

    /// Whether the deletion waiting period is over at `now`.
    pub fn deletion_due(&self, now: Timestamp) -> bool {
        self.state == KeyState::PendingDeletion && self.deletion_date.is_some_and(|t| t <= now)
    }
}

/// One alias (`aliases.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AliasEntry {
    pub target: String,
    pub created: Timestamp,
    pub updated: Timestamp,
}

/// The persisted alias table.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AliasFile {
    pub format: u32,
    pub aliases: BTreeMap<String, AliasEntry>,
}

/// Days to seconds, for rotation and deletion dates.
pub fn days(n: u32) -> f64 {
    f64::from(n) * DAY
}
