//! Key policies: a documented subset of the AWS key-policy JSON language, parsed once and evaluated on
//! every call (cache hits included).
//!
//! Why a parser of our own: the sidecar must accept the documents AWS tools already write, and it must
//! refuse everything it does not understand. A policy element that is silently ignored is an access
//! rule that silently does not apply, so every unsupported element, operator, condition key, principal
//! type or variable is a [`PolicyError`] naming it (which becomes `MalformedPolicyDocumentException`).
//! The subset is listed in `docs/policy.md`.
//!
//! Parsing compiles the document into a small structure: actions become a bit set over [`Action`],
//! patterns become token lists, so [`Policy::evaluate`] does no allocation unless a condition value
//! mixes a policy variable with other text. Evaluation follows AWS: an explicit Deny wins, otherwise
//! any matching Allow allows, otherwise the request is implicitly denied.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use crate::kms::{EncryptionContext, ErrorKind, KmsError};

/// The largest policy document KMS accepts, in bytes.
pub const MAX_POLICY_BYTES: usize = 32 * 1024;

mod action;
mod eval;
mod json;
mod parse;
#[cfg(test)]
mod tests;

pub use action::Action;
use eval::Tok;

/// Where in the document an error is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum At {
    Document,
    /// A statement, numbered from 1 as people count them.
    Statement(usize),
}

impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            At::Document => f.write_str("at the top level"),
            At::Statement(n) => write!(f, "in statement {n}"),
        }
    }
}

/// Why a policy document was rejected. The message names the element; it becomes the message of
/// `MalformedPolicyDocumentException`.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("the policy document is {size} bytes; the limit is {MAX_POLICY_BYTES} bytes")]
    TooLarge { size: usize },
    #[error("the policy document is not valid JSON: {0}")]
    Json(#[source] serde_json::Error),
    #[error("unsupported policy element \"{element}\" {at}")]
    UnsupportedElement { element: String, at: At },
    #[error("duplicate policy element \"{element}\" {at}")]
    Duplicate { element: String, at: At },
    #[error("missing policy element \"{element}\" {at}")]
    Missing { element: &'static str, at: At },
    #[error("invalid \"{element}\" {at}: {problem}")]
    Invalid {
        element: String,
        at: At,
        problem: String,
    },
    #[error("unsupported principal type \"{kind}\" {at}: only \"AWS\" principals are supported")]
    UnsupportedPrincipal { kind: String, at: At },
    #[error("unsupported condition operator \"{operator}\" {at}")]
    UnsupportedOperator { operator: String, at: At },
    #[error("unsupported condition key \"{key}\" {at}")]
    UnsupportedConditionKey { key: String, at: At },
    #[error("unsupported policy variable \"${{{variable}}}\" {at}")]
    UnsupportedVariable { variable: String, at: At },
}

impl From<PolicyError> for KmsError {
    fn from(e: PolicyError) -> Self {
        KmsError::new(ErrorKind::MalformedPolicyDocument, e.to_string()).with_source(e)
    }
}

/// Names copied from a document into an error are clipped so a 32 KiB name cannot fill a log line.
fn clip(s: &str) -> String {
    const MAX: usize = 64;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_owned(),
    }
}

fn invalid(element: &str, at: At, problem: impl Into<String>) -> PolicyError {
    PolicyError::Invalid {
        element: clip(element),
        at,
        problem: problem.into(),
    }
}

/// Why a request was denied, a bounded label value for `kms_sidecar_unauthorized_total{reason}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DenyReason {
    /// No statement allows the call, or a Deny statement without an encryption-context condition
    /// matched.
    PolicyDenied,
    /// The call would have been allowed but for an encryption-context condition, or a Deny
    /// statement with an encryption-context condition matched.
    ContextMismatch,
}

impl DenyReason {
    pub const fn as_str(self) -> &'static str {
        match self {
            DenyReason::PolicyDenied => "policy_denied",
            DenyReason::ContextMismatch => "context_mismatch",
        }
    }
}

/// The result of evaluating a policy for one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// A Deny statement matched; `sid` is its Sid, if it has one.
    ExplicitDeny {
        sid: Option<Arc<str>>,
        reason: DenyReason,
    },
    /// No statement allowed the request.
    ImplicitDeny {
        reason: DenyReason,
    },
}

impl Decision {
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow)
    }

    /// The metric label for a denial; `None` for Allow.
    pub fn deny_reason(&self) -> Option<DenyReason> {
        match self {
            Decision::Allow => None,
            Decision::ExplicitDeny { reason, .. } | Decision::ImplicitDeny { reason } => {
                Some(*reason)
            }
        }
    }
}

/// What a policy is evaluated against. Everything is borrowed: building one costs nothing.
#[derive(Clone, Copy, Debug)]
pub struct RequestContext<'a> {
    /// The authenticated principal, e.g. `arn:aws:iam::111122223333:user/billing`.
    pub principal_arn: &'a str,
    /// The principal's account id (`kms:CallerAccount`).
    pub caller_account: &'a str,
    pub action: Action,
    /// The ARN of the key whose policy is evaluated (matched against `Resource`).
    pub key_arn: &'a str,
    /// The request's encryption context; `None` for operations that have none.
    pub encryption_context: Option<&'a EncryptionContext>,
    /// The principal's attributes (`aws:PrincipalTag/<tag>`).
    pub principal_tags: &'a BTreeMap<String, String>,
    /// The XKS proxy API's request metadata (`xks:` condition keys); `None` for other front-ends,
    /// so a statement conditioned on it never allows their calls.
    pub xks: Option<XksMetadata<'a>>,
}

/// What AWS KMS says about the call behind an XKS proxy request (its `requestMetadata`), as the
/// `xks:` condition keys read it: a second authorization on who asked AWS KMS, for what, and
/// through which AWS service ("only EBS may decrypt with this key").
#[derive(Clone, Copy, Debug, Default)]
pub struct XksMetadata<'a> {
    pub aws_principal_arn: Option<&'a str>,
    pub aws_source_vpc: Option<&'a str>,
    pub aws_source_vpce: Option<&'a str>,
    pub kms_key_arn: Option<&'a str>,
    pub kms_operation: Option<&'a str>,
    pub kms_via_service: Option<&'a str>,
}

/// One `xks:` condition key: a member of [`XksMetadata`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum XksField {
    AwsPrincipalArn,
    AwsSourceVpc,
    AwsSourceVpce,
    KmsKeyArn,
    KmsOperation,
    KmsViaService,
}

impl XksField {
    /// The condition key names (matched case-insensitively, like AWS's).
    const NAMES: [(&'static str, XksField); 6] = [
        ("xks:AwsPrincipalArn", XksField::AwsPrincipalArn),
        ("xks:AwsSourceVpc", XksField::AwsSourceVpc),
        ("xks:AwsSourceVpce", XksField::AwsSourceVpce),
        ("xks:KmsKeyArn", XksField::KmsKeyArn),
        ("xks:KmsOperation", XksField::KmsOperation),
        ("xks:KmsViaService", XksField::KmsViaService),
    ];

    fn get<'a>(self, m: &XksMetadata<'a>) -> Option<&'a str> {
        match self {
            XksField::AwsPrincipalArn => m.aws_principal_arn,
            XksField::AwsSourceVpc => m.aws_source_vpc,
            XksField::AwsSourceVpce => m.aws_source_vpce,
            XksField::KmsKeyArn => m.kms_key_arn,
            XksField::KmsOperation => m.kms_operation,
            XksField::KmsViaService => m.kms_via_service,
        }
    }
}

/// AWS's AccessDeniedException message.
pub fn access_denied_message(
    principal_arn: &str,
    action: Action,
    key_arn: &str,
    explicit: bool,
) -> String {
    let tail = if explicit {
        "with an explicit deny in a resource-based policy".to_owned()
    } else {
        format!("because no resource-based policy allows the {action} action")
    };
    format!(
        "User: {principal_arn} is not authorized to perform: {action} on resource: {key_arn} {tail}"
    )
}

/// `AccessDeniedException` for a denied `decision` (an explicit deny gets AWS's other wording).
pub fn access_denied(
    principal_arn: &str,
    action: Action,
    key_arn: &str,
    decision: &Decision,
) -> KmsError {
    let explicit = matches!(decision, Decision::ExplicitDeny { .. });
    KmsError::new(
        ErrorKind::AccessDenied,
        access_denied_message(principal_arn, action, key_arn, explicit),
    )
}

/// The policy a key gets when its creator supplies none: the creator and the admin principals may do
/// everything (`kms:*`). Unlike AWS's default policy it does not delegate to the whole account
/// (`arn:aws:iam::<account>:root`), because all of the sidecar's clients usually share one account;
/// `account` only names the policy (`Id`).
pub fn default_policy(account: &str, creator_arn: &str, admin_arns: &[String]) -> String {
    let mut principals: Vec<&str> = vec![creator_arn];
    for admin in admin_arns {
        if !principals.contains(&admin.as_str()) {
            principals.push(admin);
        }
    }
    let doc = serde_json::json!({
        "Version": "2012-10-17",
        "Id": format!("kms-sidecar-default-{account}"),
        "Statement": [{
            "Sid": "Enable full access for the key creator and the admin principals",
            "Effect": "Allow",
            "Principal": { "AWS": principals },
            "Action": "kms:*",
            "Resource": "*"
        }]
    });
    format!("{doc:#}")
}

// ---------------------------------------------------------------------------------------------
// The compiled policy.

/// A parsed, validated key policy. Cheap to evaluate; share it behind an `Arc`.
#[derive(Debug)]
pub struct Policy {
    statements: Vec<Statement>,
}

#[derive(Debug)]
struct Statement {
    sid: Option<Arc<str>>,
    allow: bool,
    /// `None` means any principal.
    principals: Option<Vec<PrincipalMatch>>,
    actions: u64,
    /// `None` means any resource.
    resources: Option<Vec<Vec<Tok>>>,
    conditions: Vec<Condition>,
    has_context_condition: bool,
}

#[derive(Debug)]
enum PrincipalMatch {
    Account(String),
    Arn(String),
}

#[derive(Debug)]
struct Condition {
    key: CondKey,
    test: Test,
    set: SetQualifier,
    negate: bool,
    if_exists: bool,
    values: Vec<CondValue>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Test {
    Equals {
        ignore_case: bool,
    },
    Like,
    /// `Null`: true when the key's absence equals this.
    Null {
        absent: bool,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SetQualifier {
    Single,
    ForAllValues,
    ForAnyValue,
}

#[derive(Debug)]
enum CondKey {
    /// `kms:EncryptionContext:<key>`; the context key is matched case-insensitively, like AWS.
    ContextValue(String),
    ContextKeys,
    CallerAccount,
    PrincipalArn,
    PrincipalTag(String),
    /// `xks:<field>`: the XKS request metadata.
    Xks(XksField),
}

impl CondKey {
    fn is_context(&self) -> bool {
        matches!(self, CondKey::ContextValue(_) | CondKey::ContextKeys)
    }
}

#[derive(Debug)]
enum Var {
    PrincipalTag(String),
    PrincipalArn,
    CallerAccount,
}

#[derive(Debug)]
enum Part {
    /// Policy text: `*` and `?` are wildcards under StringLike.
    Text(String),
    /// `${*}`, `${?}`, `${$}`: a character that is never a wildcard.
    Escaped(char),
    Var(Var),
}

#[derive(Debug)]
enum CondValue {
    /// No variables: compared directly, the glob compiled once.
    Fixed {
        text: String,
        toks: Vec<Tok>,
    },
    Dynamic(Vec<Part>),
}

impl std::str::FromStr for Policy {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Policy::parse(s)
    }
}
