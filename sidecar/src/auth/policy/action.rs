//! The `kms:` actions a key policy names, and the action each sidecar operation is authorized as.
//!
//! Kept apart from parsing and evaluation because it is a table: one list of names, the bit each
//! one occupies in a compiled statement, and the `Operation` mapping used for metrics and messages.

use std::fmt;

use crate::kms::Operation;

macro_rules! kms_actions {
    ($($variant:ident),* $(,)?) => {
        /// Every `kms:` action a key policy may name, whether or not the sidecar serves it yet.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Action {
            $($variant,)*
        }

        impl Action {
            /// All actions, in a fixed order (the bit position in a compiled statement).
            pub const ALL: &'static [Action] = &[$(Action::$variant),*];

            /// The policy name, `kms:Encrypt` etc.; also the action in AWS's AccessDenied message.
            pub const fn name(self) -> &'static str {
                match self { $(Action::$variant => concat!("kms:", stringify!($variant)),)* }
            }
        }
    };
}

kms_actions!(
    CancelKeyDeletion,
    ConnectCustomKeyStore,
    CreateAlias,
    CreateCustomKeyStore,
    CreateGrant,
    CreateKey,
    Decrypt,
    DeleteAlias,
    DeleteCustomKeyStore,
    DeleteImportedKeyMaterial,
    DeriveSharedSecret,
    DescribeCustomKeyStores,
    DescribeKey,
    DisableKey,
    DisableKeyRotation,
    DisconnectCustomKeyStore,
    EnableKey,
    EnableKeyRotation,
    Encrypt,
    GenerateDataKey,
    GenerateDataKeyPair,
    GenerateDataKeyPairWithoutPlaintext,
    GenerateDataKeyWithoutPlaintext,
    GenerateMac,
    GenerateRandom,
    GetKeyPolicy,
    GetKeyRotationStatus,
    GetParametersForImport,
    GetPublicKey,
    ImportKeyMaterial,
    ListAliases,
    ListGrants,
    ListKeyPolicies,
    ListKeyRotations,
    ListKeys,
    ListResourceTags,
    ListRetirableGrants,
    PutKeyPolicy,
    ReEncryptFrom,
    ReEncryptTo,
    ReplicateKey,
    RetireGrant,
    RevokeGrant,
    RotateKeyOnDemand,
    ScheduleKeyDeletion,
    Sign,
    SynchronizeMultiRegionKey,
    TagResource,
    UntagResource,
    UpdateAlias,
    UpdateCustomKeyStore,
    UpdateKeyDescription,
    UpdatePrimaryRegion,
    Verify,
    VerifyMac,
);

// A compiled statement keeps its actions as one u64 bit set.
const _: () = assert!(Action::ALL.len() <= 64);

impl Action {
    pub(super) fn bit(self) -> u64 {
        1u64 << (self as u32)
    }

    /// The action a call of `op` is authorized as.
    ///
    /// `Status` (Kubernetes KMS v2) maps to `kms:DescribeKey`. `ReEncrypt` maps to `kms:ReEncryptFrom` (the source key); AWS also requires
    /// `kms:ReEncryptTo` on the destination key, which the caller checks with
    /// [`Action::ReEncryptTo`] against that key's policy. `CreateKey`, `ListKeys`, `ListAliases` and
    /// `GenerateRandom` are account-level in AWS (no key policy applies); they are mapped anyway so
    /// every operation has a name for metrics and messages.
    pub const fn for_operation(op: Operation) -> Action {
        match op {
            Operation::CancelKeyDeletion => Action::CancelKeyDeletion,
            Operation::CreateAlias => Action::CreateAlias,
            Operation::CreateKey => Action::CreateKey,
            Operation::Decrypt => Action::Decrypt,
            Operation::DeleteAlias => Action::DeleteAlias,
            Operation::DescribeKey => Action::DescribeKey,
            Operation::DisableKey => Action::DisableKey,
            Operation::DisableKeyRotation => Action::DisableKeyRotation,
            Operation::EnableKey => Action::EnableKey,
            Operation::EnableKeyRotation => Action::EnableKeyRotation,
            Operation::Encrypt => Action::Encrypt,
            Operation::GenerateDataKey => Action::GenerateDataKey,
            Operation::GenerateDataKeyWithoutPlaintext => Action::GenerateDataKeyWithoutPlaintext,
            Operation::GenerateRandom => Action::GenerateRandom,
            Operation::GetKeyRotationStatus => Action::GetKeyRotationStatus,
            Operation::ListAliases => Action::ListAliases,
            Operation::ListKeyRotations => Action::ListKeyRotations,
            Operation::ListKeys => Action::ListKeys,
            Operation::ListResourceTags => Action::ListResourceTags,
            Operation::PutKeyPolicy => Action::PutKeyPolicy,
            Operation::GetKeyPolicy => Action::GetKeyPolicy,
            Operation::ListKeyPolicies => Action::ListKeyPolicies,
            Operation::ReEncrypt => Action::ReEncryptFrom,
            Operation::RotateKeyOnDemand => Action::RotateKeyOnDemand,
            Operation::ScheduleKeyDeletion => Action::ScheduleKeyDeletion,
            // KMS v2 Status reads the key's current version and checks the key works: the
            // read-only action on key metadata, so a policy for the API server's principal names
            // kms:Encrypt, kms:Decrypt and kms:DescribeKey.
            Operation::Status => Action::DescribeKey,
            Operation::TagResource => Action::TagResource,
            Operation::UntagResource => Action::UntagResource,
            Operation::UpdateAlias => Action::UpdateAlias,
            // The XKS proxy API (`frontend/xks/`): AWS KMS asks the proxy to use a key, so the
            // proxy's own key policy sees the cryptographic action, or reading the key's metadata.
            // GetHealthStatus names no key; its action is only a name for messages.
            Operation::XksDecrypt => Action::Decrypt,
            Operation::XksEncrypt => Action::Encrypt,
            Operation::XksGetKeyMetadata => Action::DescribeKey,
            Operation::XksGetHealthStatus => Action::DescribeCustomKeyStores,
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
