//! Tests of the key-policy language: shared fixtures and helpers, the action table and the
//! AccessDenied messages here; evaluation and parsing in their own files.

use super::*;
use crate::kms::Operation;

mod eval;
mod parse;

const ACCOUNT: &str = "111122223333";
const ALICE: &str = "arn:aws:iam::111122223333:user/alice";
const BOB: &str = "arn:aws:iam::111122223333:user/bob";
const OTHER: &str = "arn:aws:iam::444455556666:user/mallory";
const KEY: &str = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";

struct Req {
    principal: &'static str,
    account: &'static str,
    action: Action,
    context: Option<EncryptionContext>,
    tags: BTreeMap<String, String>,
    key: &'static str,
    xks: Option<XksMetadata<'static>>,
}

fn req(principal: &'static str, action: Action) -> Req {
    Req {
        principal,
        account: if principal == OTHER {
            "444455556666"
        } else {
            ACCOUNT
        },
        action,
        context: None,
        tags: BTreeMap::new(),
        key: KEY,
        xks: None,
    }
}

impl Req {
    fn ctx(mut self, pairs: &[(&str, &str)]) -> Self {
        self.context = Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        self
    }
    fn tag(mut self, k: &str, v: &str) -> Self {
        self.tags.insert(k.into(), v.into());
        self
    }
    fn xks(mut self, m: XksMetadata<'static>) -> Self {
        self.xks = Some(m);
        self
    }
    fn eval(&self, policy: &Policy) -> Decision {
        policy.evaluate(&RequestContext {
            principal_arn: self.principal,
            caller_account: self.account,
            action: self.action,
            key_arn: self.key,
            encryption_context: self.context.as_ref(),
            principal_tags: &self.tags,
            xks: self.xks,
        })
    }
}

fn policy(statements: &str) -> Policy {
    Policy::parse(&format!(
        r#"{{"Version":"2012-10-17","Statement":{statements}}}"#
    ))
    .unwrap()
}

fn err(statements: &str) -> String {
    Policy::parse(&format!(
        r#"{{"Version":"2012-10-17","Statement":{statements}}}"#
    ))
    .unwrap_err()
    .to_string()
}

const IMPLICIT: Decision = Decision::ImplicitDeny {
    reason: DenyReason::PolicyDenied,
};
const MISMATCH: Decision = Decision::ImplicitDeny {
    reason: DenyReason::ContextMismatch,
};

const TENANT_POLICY: &str = r#"{
      "Version": "2012-10-17",
      "Id": "tenant-isolation",
      "Statement": [
        {
          "Sid": "Admins",
          "Effect": "Allow",
          "Principal": {"AWS": "arn:aws:iam::111122223333:user/admin"},
          "Action": "kms:*",
          "Resource": "*"
        },
        {
          "Sid": "TenantCrypto",
          "Effect": "Allow",
          "Principal": {"AWS": ["arn:aws:iam::111122223333:user/alice", "arn:aws:iam::111122223333:user/bob"]},
          "Action": ["kms:Encrypt", "kms:Decrypt", "kms:GenerateDataKey*", "kms:ReEncrypt*"],
          "Resource": "*",
          "Condition": {
            "StringEquals": {"kms:EncryptionContext:tenant": "${aws:PrincipalTag/tenant}"}
          }
        },
        {
          "Sid": "NoForeignContext",
          "Effect": "Deny",
          "Principal": "*",
          "Action": "kms:Decrypt",
          "Resource": "*",
          "Condition": {"Null": {"kms:EncryptionContextKeys": "true"}}
        }
      ]
    }"#;

#[test]
fn every_operation_has_its_action() {
    for op in Operation::ALL {
        let action = Action::for_operation(*op);
        if *op == Operation::ReEncrypt {
            assert_eq!(action.name(), "kms:ReEncryptFrom");
        } else if *op == Operation::Status {
            assert_eq!(action.name(), "kms:DescribeKey");
        } else if let Some(xks) = op.as_str().strip_prefix("Xks") {
            let expected = match xks {
                "GetKeyMetadata" => "kms:DescribeKey",
                "GetHealthStatus" => "kms:DescribeCustomKeyStores",
                crypto => &format!("kms:{crypto}"),
            };
            assert_eq!(action.name(), expected);
        } else {
            assert_eq!(action.name(), format!("kms:{}", op.as_str()));
        }
    }
    assert_eq!(
        Action::for_operation(Operation::GenerateDataKeyWithoutPlaintext).name(),
        "kms:GenerateDataKeyWithoutPlaintext"
    );
}

#[test]
fn access_denied_messages_have_the_aws_shape() {
    let e = access_denied(ALICE, Action::Decrypt, KEY, &IMPLICIT);
    assert_eq!(e.kind(), ErrorKind::AccessDenied);
    assert_eq!(
        e.wire_message(),
        format!(
            "User: {ALICE} is not authorized to perform: kms:Decrypt on resource: {KEY} because no resource-based policy allows the kms:Decrypt action"
        )
    );
    let explicit = Decision::ExplicitDeny {
        sid: None,
        reason: DenyReason::PolicyDenied,
    };
    assert_eq!(
        access_denied(ALICE, Action::Encrypt, KEY, &explicit).wire_message(),
        format!(
            "User: {ALICE} is not authorized to perform: kms:Encrypt on resource: {KEY} with an explicit deny in a resource-based policy"
        )
    );
    assert_eq!(DenyReason::PolicyDenied.as_str(), "policy_denied");
    assert_eq!(DenyReason::ContextMismatch.as_str(), "context_mismatch");
    assert_eq!(IMPLICIT.deny_reason(), Some(DenyReason::PolicyDenied));
    assert_eq!(Decision::Allow.deny_reason(), None);
}

#[test]
fn xks_conditions_read_the_request_metadata() {
    let p = policy(
        r#"[{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:user/alice"},"Action":"kms:Decrypt","Resource":"*",
            "Condition":{"StringEquals":{"xks:KmsViaService":"ebs","xks:KMSOperation":"Decrypt"},
                         "StringLike":{"xks:AwsPrincipalArn":"arn:aws:iam::123456789012:*"}}},
           {"Effect":"Deny","Principal":"*","Action":"kms:Decrypt","Resource":"*",
            "Condition":{"StringEquals":{"xks:AwsSourceVpce":"vpce-blocked"}}}]"#,
    );
    let ebs = XksMetadata {
        aws_principal_arn: Some("arn:aws:iam::123456789012:user/Alice"),
        kms_operation: Some("Decrypt"),
        kms_via_service: Some("ebs"),
        ..Default::default()
    };
    assert_eq!(
        req(ALICE, Action::Decrypt).xks(ebs).eval(&p),
        Decision::Allow
    );
    let s3 = XksMetadata {
        kms_via_service: Some("s3"),
        ..ebs
    };
    assert_eq!(req(ALICE, Action::Decrypt).xks(s3).eval(&p), IMPLICIT);
    let direct = XksMetadata {
        kms_via_service: None,
        ..ebs
    };
    assert_eq!(req(ALICE, Action::Decrypt).xks(direct).eval(&p), IMPLICIT);
    // Another front-end's call has no XKS metadata: the conditioned Allow does not apply.
    assert_eq!(req(ALICE, Action::Decrypt).eval(&p), IMPLICIT);
    let blocked = XksMetadata {
        aws_source_vpce: Some("vpce-blocked"),
        ..ebs
    };
    assert!(matches!(
        req(ALICE, Action::Decrypt).xks(blocked).eval(&p),
        Decision::ExplicitDeny { .. }
    ));
    assert!(err(r#"[{"Effect":"Allow","Principal":"*","Action":"kms:Decrypt","Resource":"*","Condition":{"StringEquals":{"xks:Nope":"x"}}}]"#).contains("xks:Nope"));
}
