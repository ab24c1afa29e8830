//! One typed request and one typed reply per KMS operation: what a front-end hands the core and
//! what it gets back. [`Request::decode`] builds a request from any [`Decode`] source (the AWS
//! front-end's JSON body); other front-ends build the variants directly.

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::model::*;
use super::xks::*;
use crate::kms::{KmsError, Operation};

/// A source of a typed request member set (a JSON body, for the AWS front-end). A wrong shape is
/// the source's own client error (`SerializationException` for JSON).
pub trait Decode {
    fn decode<T: DeserializeOwned>(self) -> Result<T, KmsError>;
}

/// The key a request names before any work is done: what the rate limits charge per key.
#[derive(Debug, Clone, Copy)]
pub enum Subject<'a> {
    /// Account-level calls (CreateKey, ListKeys, GenerateRandom).
    None,
    /// A key id, key ARN, alias name or alias ARN.
    KeyId(&'a str),
    /// A ciphertext whose header names the key (Decrypt, ReEncrypt).
    Ciphertext(&'a [u8]),
}

macro_rules! requests {
    ($($op:ident($req:ty) -> $reply:ty;)*) => {
        /// A decoded request of one operation.
        #[derive(Debug)]
        pub enum Request {
            $($op($req),)*
        }

        /// The answer to a [`Request`]; serializes as the operation's reply members.
        #[derive(Debug, Serialize)]
        #[serde(untagged)]
        pub enum Response {
            $($op($reply),)*
        }

        impl Request {
            /// Decodes `op`'s members from `source`.
            pub fn decode(op: Operation, source: impl Decode) -> Result<Self, KmsError> {
                Ok(match op {
                    $(Operation::$op => Request::$op(source.decode()?),)*
                })
            }

            pub fn operation(&self) -> Operation {
                match self {
                    $(Request::$op(_) => Operation::$op,)*
                }
            }
        }
    };
}

requests! {
    CancelKeyDeletion(KeyIdOnly) -> KeyIdResponse;
    CreateAlias(AliasRequest) -> Empty;
    CreateKey(CreateKeyRequest) -> KeyMetadataResponse;
    Decrypt(DecryptRequest) -> DecryptResponse;
    DeleteAlias(AliasRequest) -> Empty;
    DescribeKey(KeyIdOnly) -> KeyMetadataResponse;
    DisableKey(KeyIdOnly) -> Empty;
    DisableKeyRotation(KeyIdOnly) -> Empty;
    EnableKey(KeyIdOnly) -> Empty;
    EnableKeyRotation(EnableKeyRotationRequest) -> Empty;
    Encrypt(EncryptRequest) -> EncryptResponse;
    GenerateDataKey(GenerateDataKeyRequest) -> GenerateDataKeyResponse;
    GenerateDataKeyWithoutPlaintext(GenerateDataKeyRequest) -> GenerateDataKeyResponse;
    GenerateRandom(GenerateRandomRequest) -> GenerateRandomResponse;
    GetKeyPolicy(KeyPolicyRequest) -> GetKeyPolicyResponse;
    GetKeyRotationStatus(KeyIdOnly) -> GetKeyRotationStatusResponse;
    ListAliases(ListRequest) -> ListAliasesResponse;
    ListKeyPolicies(ListRequest) -> ListKeyPoliciesResponse;
    ListKeyRotations(ListRequest) -> ListKeyRotationsResponse;
    ListKeys(ListRequest) -> ListKeysResponse;
    ListResourceTags(ListRequest) -> ListResourceTagsResponse;
    PutKeyPolicy(KeyPolicyRequest) -> Empty;
    ReEncrypt(ReEncryptRequest) -> ReEncryptResponse;
    RotateKeyOnDemand(KeyIdOnly) -> KeyIdResponse;
    ScheduleKeyDeletion(ScheduleKeyDeletionRequest) -> ScheduleKeyDeletionResponse;
    Status(StatusRequest) -> StatusResponse;
    TagResource(TagResourceRequest) -> Empty;
    UntagResource(UntagResourceRequest) -> Empty;
    UpdateAlias(AliasRequest) -> Empty;
    XksDecrypt(XksDecryptRequest) -> XksDecryptResponse;
    XksEncrypt(XksEncryptRequest) -> XksEncryptResponse;
    XksGetHealthStatus(XksHealthRequest) -> XksHealthResponse;
    XksGetKeyMetadata(XksKeyMetadataRequest) -> XksKeyMetadataResponse;
}

fn key(k: &Option<String>) -> Subject<'_> {
    k.as_deref().map_or(Subject::None, Subject::KeyId)
}

impl Request {
    /// The key this request names, as far as it can be told without doing the work.
    pub fn subject(&self) -> Subject<'_> {
        use Request::*;
        match self {
            CancelKeyDeletion(r)
            | DescribeKey(r)
            | DisableKey(r)
            | DisableKeyRotation(r)
            | EnableKey(r)
            | GetKeyRotationStatus(r)
            | RotateKeyOnDemand(r) => key(&r.key_id),
            CreateAlias(r) | UpdateAlias(r) => key(&r.target_key_id),
            DeleteAlias(r) => key(&r.alias_name),
            CreateKey(_) | GenerateRandom(_) | ListKeys(_) => Subject::None,
            Decrypt(r) => r
                .ciphertext_blob
                .as_ref()
                .map_or(Subject::None, |b| Subject::Ciphertext(&b.0)),
            ReEncrypt(r) => r
                .ciphertext_blob
                .as_ref()
                .map_or(Subject::None, |b| Subject::Ciphertext(&b.0)),
            EnableKeyRotation(r) => key(&r.key_id),
            Encrypt(r) => key(&r.key_id),
            GenerateDataKey(r) | GenerateDataKeyWithoutPlaintext(r) => key(&r.key_id),
            GetKeyPolicy(r) | PutKeyPolicy(r) => key(&r.key_id),
            ListAliases(r) | ListKeyPolicies(r) | ListKeyRotations(r) | ListResourceTags(r) => {
                key(&r.key_id)
            }
            ScheduleKeyDeletion(r) => key(&r.key_id),
            Status(r) => key(&r.key_id),
            TagResource(r) => key(&r.key_id),
            UntagResource(r) => key(&r.key_id),
            XksDecrypt(r) => key(&r.key_id),
            XksEncrypt(r) => key(&r.key_id),
            XksGetKeyMetadata(r) => key(&r.key_id),
            XksGetHealthStatus(_) => Subject::None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Empty;
    impl Decode for Empty {
        fn decode<T: DeserializeOwned>(self) -> Result<T, KmsError> {
            serde_json::from_str("{}").map_err(KmsError::internal)
        }
    }

    #[test]
    fn every_operation_decodes_to_its_own_variant() {
        for op in Operation::ALL {
            let request = Request::decode(*op, Empty).unwrap();
            assert_eq!(request.operation(), *op);
            assert!(matches!(request.subject(), Subject::None), "{op:?}");
        }
    }

    #[test]
    fn subjects_name_the_key_or_the_ciphertext() {
        let r = Request::Encrypt(EncryptRequest {
            key_id: Some("alias/a".into()),
            ..Default::default()
        });
        assert!(matches!(r.subject(), Subject::KeyId("alias/a")));
        let r = Request::Decrypt(DecryptRequest {
            ciphertext_blob: Some(Blob(vec![1, 2, 3])),
            key_id: Some("ignored-for-the-subject".into()),
            ..Default::default()
        });
        assert!(matches!(r.subject(), Subject::Ciphertext([1, 2, 3])));
    }
}
