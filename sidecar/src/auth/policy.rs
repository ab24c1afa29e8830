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

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::protocol::{EncryptionContext, ErrorKind, KmsError, Operation};

/// The largest policy document KMS accepts, in bytes.
pub const MAX_POLICY_BYTES: usize = 32 * 1024;

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
    fn bit(self) -> u64 {
        1u64 << (self as u32)
    }

    /// The action a call of `op` is authorized as.
    ///
    /// `ReEncrypt` maps to `kms:ReEncryptFrom` (the source key); AWS also requires
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
            Operation::TagResource => Action::TagResource,
            Operation::UntagResource => Action::UntagResource,
            Operation::UpdateAlias => Action::UpdateAlias,
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

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
// A JSON tree that keeps duplicate object members, so `{"Effect":"Deny","Effect":"Allow"}` is an
// error instead of whichever member came last.

enum J {
    Null,
    Bool(bool),
    Num,
    Str(String),
    Arr(Vec<J>),
    Obj(Vec<(String, J)>),
}

impl J {
    fn kind(&self) -> &'static str {
        match self {
            J::Null => "null",
            J::Bool(_) => "a boolean",
            J::Num => "a number",
            J::Str(_) => "a string",
            J::Arr(_) => "an array",
            J::Obj(_) => "an object",
        }
    }
}

impl<'de> Deserialize<'de> for J {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(JVisitor)
    }
}

struct JVisitor;

impl<'de> Visitor<'de> for JVisitor {
    type Value = J;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<J, E> {
        Ok(J::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<J, E> {
        Ok(J::Num)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<J, E> {
        Ok(J::Num)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<J, E> {
        Ok(J::Num)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<J, E> {
        Ok(J::Str(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<J, E> {
        Ok(J::Str(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<J, E> {
        Ok(J::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<J, E> {
        Ok(J::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<J, D::Error> {
        J::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<J, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(J::Arr(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<J, A::Error> {
        let mut members = Vec::new();
        while let Some(member) = map.next_entry::<String, J>()? {
            members.push(member);
        }
        Ok(J::Obj(members))
    }
}

/// The members of an object, after refusing duplicate names.
fn members<'j>(j: &'j J, element: &str, at: At) -> Result<&'j [(String, J)], PolicyError> {
    let J::Obj(members) = j else {
        return Err(invalid(
            element,
            at,
            format!("expected an object, found {}", j.kind()),
        ));
    };
    for (i, (name, _)) in members.iter().enumerate() {
        if members[..i].iter().any(|(n, _)| n == name) {
            return Err(PolicyError::Duplicate {
                element: clip(name),
                at,
            });
        }
    }
    Ok(members)
}

/// A string or a non-empty array of strings.
fn strings<'j>(j: &'j J, element: &str, at: At) -> Result<Vec<&'j str>, PolicyError> {
    let bad = || {
        invalid(
            element,
            at,
            "expected a string or a non-empty array of strings",
        )
    };
    match j {
        J::Str(s) => Ok(vec![s.as_str()]),
        J::Arr(items) if !items.is_empty() => items
            .iter()
            .map(|i| match i {
                J::Str(s) => Ok(s.as_str()),
                _ => Err(bad()),
            })
            .collect(),
        _ => Err(bad()),
    }
}

// ---------------------------------------------------------------------------------------------
// Patterns: `*` matches any run of characters, `?` exactly one.

#[derive(Clone, Debug, PartialEq, Eq)]
enum Tok {
    Star,
    One,
    Ch(char),
}

fn compile_glob(pattern: &str, out: &mut Vec<Tok>) {
    out.extend(pattern.chars().map(|c| match c {
        '*' => Tok::Star,
        '?' => Tok::One,
        c => Tok::Ch(c),
    }));
}

fn chars_eq(a: char, b: char, ignore_case: bool) -> bool {
    a == b || (ignore_case && a.to_lowercase().eq(b.to_lowercase()))
}

fn str_eq(a: &str, b: &str, ignore_case: bool) -> bool {
    a == b
        || (ignore_case
            && a.chars()
                .flat_map(char::to_lowercase)
                .eq(b.chars().flat_map(char::to_lowercase)))
}

/// Glob match without allocation or recursion: O(pattern × text) in the worst case.
fn glob_match(toks: &[Tok], text: &str, ignore_case: bool) -> bool {
    let (mut p, mut t) = (0usize, 0usize);
    // Where the last `*` was and the text position it has absorbed up to.
    let mut star: Option<(usize, usize)> = None;
    loop {
        let c = text.get(t..).and_then(|s| s.chars().next());
        match (toks.get(p), c) {
            (Some(Tok::Star), _) => {
                star = Some((p, t));
                p += 1;
                continue;
            }
            (Some(Tok::One), Some(c)) => {
                p += 1;
                t += c.len_utf8();
                continue;
            }
            (Some(Tok::Ch(pc)), Some(c)) if chars_eq(*pc, c, ignore_case) => {
                p += 1;
                t += c.len_utf8();
                continue;
            }
            (None, None) => return true,
            _ => {}
        }
        let Some((sp, st)) = star else { return false };
        let Some(c) = text.get(st..).and_then(|s| s.chars().next()) else {
            return false;
        };
        let next = st + c.len_utf8();
        star = Some((sp, next));
        p = sp + 1;
        t = next;
    }
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

fn tag<'a>(tags: &'a BTreeMap<String, String>, name: &str) -> Option<&'a str> {
    tags.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn context_value<'a>(ctx: &RequestContext<'a>, key: &str) -> Option<&'a str> {
    ctx.encryption_context?
        .iter()
        .find(|(k, _)| str_eq(k, key, true))
        .map(|(_, v)| v.as_str())
}

impl Var {
    fn resolve<'a>(&self, ctx: &RequestContext<'a>) -> Option<&'a str> {
        match self {
            Var::PrincipalTag(t) => tag(ctx.principal_tags, t),
            Var::PrincipalArn => Some(ctx.principal_arn),
            Var::CallerAccount => Some(ctx.caller_account),
        }
    }
}

impl CondValue {
    /// Whether the request value `v` matches. A variable the request cannot resolve (a missing
    /// principal tag) makes the value match nothing: an Allow on it does not apply, and a negated
    /// operator (`StringNotEquals`) in a Deny does.
    fn matches(&self, test: Test, v: &str, ctx: &RequestContext<'_>) -> bool {
        match (self, test) {
            (CondValue::Fixed { text, .. }, Test::Equals { ignore_case }) => {
                str_eq(text, v, ignore_case)
            }
            (CondValue::Fixed { toks, .. }, Test::Like) => glob_match(toks, v, false),
            (CondValue::Dynamic(parts), Test::Equals { ignore_case }) => {
                let text = match parts.as_slice() {
                    [Part::Var(var)] => match var.resolve(ctx) {
                        Some(s) => Cow::Borrowed(s),
                        None => return false,
                    },
                    parts => {
                        let mut s = String::new();
                        for part in parts {
                            match part {
                                Part::Text(t) => s.push_str(t),
                                Part::Escaped(c) => s.push(*c),
                                Part::Var(var) => match var.resolve(ctx) {
                                    Some(r) => s.push_str(r),
                                    None => return false,
                                },
                            }
                        }
                        Cow::Owned(s)
                    }
                };
                str_eq(&text, v, ignore_case)
            }
            (CondValue::Dynamic(parts), Test::Like) => {
                let mut toks = Vec::new();
                for part in parts {
                    match part {
                        Part::Text(t) => compile_glob(t, &mut toks),
                        Part::Escaped(c) => toks.push(Tok::Ch(*c)),
                        // A resolved value is data, never a wildcard: a tag `*` matches only `*`.
                        Part::Var(var) => match var.resolve(ctx) {
                            Some(r) => toks.extend(r.chars().map(Tok::Ch)),
                            None => return false,
                        },
                    }
                }
                glob_match(&toks, v, false)
            }
            (_, Test::Null { .. }) => false,
        }
    }
}

impl Condition {
    fn single_value<'a>(&self, ctx: &RequestContext<'a>) -> Option<&'a str> {
        match &self.key {
            CondKey::ContextValue(k) => context_value(ctx, k),
            CondKey::ContextKeys => None,
            CondKey::CallerAccount => Some(ctx.caller_account),
            CondKey::PrincipalArn => Some(ctx.principal_arn),
            CondKey::PrincipalTag(t) => tag(ctx.principal_tags, t),
        }
    }

    fn value_passes(&self, v: &str, ctx: &RequestContext<'_>) -> bool {
        let any = self.values.iter().any(|pv| pv.matches(self.test, v, ctx));
        any != self.negate
    }

    fn holds(&self, ctx: &RequestContext<'_>) -> bool {
        let context_keys = || {
            ctx.encryption_context
                .into_iter()
                .flat_map(|c| c.keys().map(String::as_str))
        };
        if let Test::Null { absent } = self.test {
            let is_absent = match self.key {
                CondKey::ContextKeys => context_keys().next().is_none(),
                _ => self.single_value(ctx).is_none(),
            };
            return is_absent == absent;
        }
        match self.set {
            SetQualifier::Single => match self.single_value(ctx) {
                // AWS: a missing key fails a positive operator and passes a negated one.
                None => self.negate || self.if_exists,
                Some(v) => self.value_passes(v, ctx),
            },
            // AWS: ForAllValues is true when the request has no values at all.
            SetQualifier::ForAllValues => context_keys().all(|v| self.value_passes(v, ctx)),
            SetQualifier::ForAnyValue => {
                let mut keys = context_keys().peekable();
                if keys.peek().is_none() {
                    return self.if_exists;
                }
                keys.any(|v| self.value_passes(v, ctx))
            }
        }
    }
}

impl Statement {
    fn principal_matches(&self, ctx: &RequestContext<'_>) -> bool {
        match &self.principals {
            None => true,
            Some(list) => list.iter().any(|p| match p {
                PrincipalMatch::Account(a) => a == ctx.caller_account,
                PrincipalMatch::Arn(arn) => arn == ctx.principal_arn,
            }),
        }
    }

    fn resource_matches(&self, key_arn: &str) -> bool {
        match &self.resources {
            None => true,
            Some(list) => list.iter().any(|r| glob_match(r, key_arn, false)),
        }
    }
}

impl std::str::FromStr for Policy {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Policy::parse(s)
    }
}

impl Policy {
    /// Parses and validates a policy document.
    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        if text.len() > MAX_POLICY_BYTES {
            return Err(PolicyError::TooLarge { size: text.len() });
        }
        let doc: J = serde_json::from_str(text).map_err(PolicyError::Json)?;
        let at = At::Document;
        let mut version = None;
        let mut statement = None;
        for (name, value) in members(&doc, "policy document", at)? {
            match name.as_str() {
                "Version" => match value {
                    J::Str(v) if v == "2012-10-17" || v == "2008-10-17" => version = Some(v),
                    _ => {
                        return Err(invalid(
                            "Version",
                            at,
                            "expected \"2012-10-17\" or \"2008-10-17\"",
                        ));
                    }
                },
                "Id" => {
                    if !matches!(value, J::Str(_)) {
                        return Err(invalid("Id", at, "expected a string"));
                    }
                }
                "Statement" => statement = Some(value),
                other => {
                    return Err(PolicyError::UnsupportedElement {
                        element: clip(other),
                        at,
                    });
                }
            }
        }
        // Without a Version, AWS uses 2008-10-17, where `${...}` is plain text.
        let variables = version.is_some_and(|v| v == "2012-10-17");
        let statement = statement.ok_or(PolicyError::Missing {
            element: "Statement",
            at,
        })?;
        let raw: Vec<&J> = match statement {
            J::Obj(_) => vec![statement],
            J::Arr(items) if !items.is_empty() => items.iter().collect(),
            _ => {
                return Err(invalid(
                    "Statement",
                    at,
                    "expected an object or a non-empty array of objects",
                ));
            }
        };
        let statements = raw
            .into_iter()
            .enumerate()
            .map(|(i, s)| parse_statement(s, At::Statement(i + 1), variables))
            .collect::<Result<_, _>>()?;
        Ok(Policy { statements })
    }

    pub fn statement_count(&self) -> usize {
        self.statements.len()
    }

    /// Decides one request. Never panics and allocates only for a condition value that mixes a
    /// policy variable with other text.
    pub fn evaluate(&self, ctx: &RequestContext<'_>) -> Decision {
        let bit = ctx.action.bit();
        let mut allowed = false;
        let mut context_mismatch = false;
        for s in &self.statements {
            if s.actions & bit == 0 || !s.principal_matches(ctx) || !s.resource_matches(ctx.key_arn)
            {
                continue;
            }
            if !s.allow {
                if s.conditions.iter().all(|c| c.holds(ctx)) {
                    let reason = if s.has_context_condition {
                        DenyReason::ContextMismatch
                    } else {
                        DenyReason::PolicyDenied
                    };
                    return Decision::ExplicitDeny {
                        sid: s.sid.clone(),
                        reason,
                    };
                }
                continue;
            }
            if allowed {
                // Only a Deny can change the answer now.
                continue;
            }
            let mut context_failed = false;
            let mut other_failed = false;
            for c in &s.conditions {
                if !c.holds(ctx) {
                    if c.key.is_context() {
                        context_failed = true;
                    } else {
                        other_failed = true;
                        break;
                    }
                }
            }
            if !context_failed && !other_failed {
                allowed = true;
            } else if !other_failed {
                context_mismatch = true;
            }
        }
        if allowed {
            Decision::Allow
        } else {
            let reason = if context_mismatch {
                DenyReason::ContextMismatch
            } else {
                DenyReason::PolicyDenied
            };
            Decision::ImplicitDeny { reason }
        }
    }
}

fn parse_statement(j: &J, at: At, variables: bool) -> Result<Statement, PolicyError> {
    let mut sid = None;
    let mut effect = None;
    let mut principals = None;
    let mut actions = None;
    let mut resources = None;
    let mut conditions = Vec::new();
    for (name, value) in members(j, "Statement", at)? {
        match name.as_str() {
            "Sid" => match value {
                J::Str(s) => sid = Some(Arc::from(s.as_str())),
                _ => return Err(invalid("Sid", at, "expected a string")),
            },
            "Effect" => match value {
                J::Str(s) if s == "Allow" => effect = Some(true),
                J::Str(s) if s == "Deny" => effect = Some(false),
                _ => return Err(invalid("Effect", at, "expected \"Allow\" or \"Deny\"")),
            },
            "Principal" => principals = Some(parse_principal(value, at)?),
            "Action" => actions = Some(parse_actions(value, at)?),
            "Resource" => resources = Some(parse_resources(value, at)?),
            "Condition" => conditions = parse_conditions(value, at, variables)?,
            other => {
                return Err(PolicyError::UnsupportedElement {
                    element: clip(other),
                    at,
                });
            }
        }
    }
    let missing = |element| PolicyError::Missing { element, at };
    Ok(Statement {
        sid,
        allow: effect.ok_or(missing("Effect"))?,
        principals: principals.ok_or(missing("Principal"))?,
        actions: actions.ok_or(missing("Action"))?,
        resources: resources.ok_or(missing("Resource"))?,
        has_context_condition: conditions.iter().any(|c| c.key.is_context()),
        conditions,
    })
}

fn is_account_id(s: &str) -> bool {
    s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit())
}

fn parse_principal(j: &J, at: At) -> Result<Option<Vec<PrincipalMatch>>, PolicyError> {
    if let J::Str(s) = j {
        return if s == "*" {
            Ok(None)
        } else {
            Err(invalid(
                "Principal",
                at,
                "expected \"*\" or an object such as {\"AWS\": [...]}",
            ))
        };
    }
    let mut list = None;
    let mut anyone = false;
    for (kind, value) in members(j, "Principal", at)? {
        if kind != "AWS" {
            return Err(PolicyError::UnsupportedPrincipal {
                kind: clip(kind),
                at,
            });
        }
        let mut out = Vec::new();
        for p in strings(value, "Principal", at)? {
            if p == "*" {
                anyone = true;
            } else {
                out.push(parse_principal_id(p, at)?);
            }
        }
        list = Some(out);
    }
    match list {
        None => Err(invalid("Principal", at, "expected an \"AWS\" member")),
        Some(_) if anyone => Ok(None),
        Some(list) => Ok(Some(list)),
    }
}

fn parse_principal_id(p: &str, at: At) -> Result<PrincipalMatch, PolicyError> {
    if is_account_id(p) {
        return Ok(PrincipalMatch::Account(p.to_owned()));
    }
    let fields: Vec<&str> = p.splitn(6, ':').collect();
    let bad = |why: &str| invalid("Principal", at, format!("\"{}\": {why}", clip(p)));
    match fields.as_slice() {
        ["arn", partition, service, _region, account, resource]
            if !partition.is_empty()
                && (*service == "iam" || *service == "sts")
                && is_account_id(account)
                && !resource.is_empty() =>
        {
            if p.contains(['*', '?']) {
                return Err(bad(
                    "wildcards are not allowed in principal ARNs (use aws:PrincipalArn with StringLike)",
                ));
            }
            if *resource == "root" {
                Ok(PrincipalMatch::Account((*account).to_owned()))
            } else {
                Ok(PrincipalMatch::Arn(p.to_owned()))
            }
        }
        _ => Err(bad(
            "expected \"*\", a 12-digit account id or an IAM ARN (arn:aws:iam::<account>:...)",
        )),
    }
}

fn parse_actions(j: &J, at: At) -> Result<u64, PolicyError> {
    let mut bits = 0u64;
    let mut toks = Vec::new();
    for a in strings(j, "Action", at)? {
        let is_kms = a.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("kms:"));
        if a != "*" && !is_kms {
            return Err(invalid(
                "Action",
                at,
                format!("\"{}\": only kms: actions are supported", clip(a)),
            ));
        }
        toks.clear();
        compile_glob(a, &mut toks);
        let matched = Action::ALL
            .iter()
            .filter(|act| glob_match(&toks, act.name(), true))
            .fold(0u64, |acc, act| acc | act.bit());
        if matched == 0 {
            return Err(invalid(
                "Action",
                at,
                format!("\"{}\" names no KMS action", clip(a)),
            ));
        }
        bits |= matched;
    }
    Ok(bits)
}

fn parse_resources(j: &J, at: At) -> Result<Option<Vec<Vec<Tok>>>, PolicyError> {
    let mut out = Vec::new();
    let mut any = false;
    for r in strings(j, "Resource", at)? {
        if r == "*" {
            any = true;
            continue;
        }
        if !r.starts_with("arn:") {
            return Err(invalid(
                "Resource",
                at,
                format!("\"{}\": expected \"*\" or a key ARN", clip(r)),
            ));
        }
        let mut toks = Vec::new();
        compile_glob(r, &mut toks);
        out.push(toks);
    }
    Ok(if any { None } else { Some(out) })
}

fn parse_operator(op: &str, at: At) -> Result<(Test, SetQualifier, bool, bool), PolicyError> {
    let unsupported = || PolicyError::UnsupportedOperator {
        operator: clip(op),
        at,
    };
    let (set, rest) = if let Some(r) = op.strip_prefix("ForAllValues:") {
        (SetQualifier::ForAllValues, r)
    } else if let Some(r) = op.strip_prefix("ForAnyValue:") {
        (SetQualifier::ForAnyValue, r)
    } else {
        (SetQualifier::Single, op)
    };
    let (base, if_exists) = match rest.strip_suffix("IfExists") {
        Some(b) => (b, true),
        None => (rest, false),
    };
    let (test, negate) = match base {
        "StringEquals" => (Test::Equals { ignore_case: false }, false),
        "StringNotEquals" => (Test::Equals { ignore_case: false }, true),
        "StringEqualsIgnoreCase" => (Test::Equals { ignore_case: true }, false),
        "StringNotEqualsIgnoreCase" => (Test::Equals { ignore_case: true }, true),
        "StringLike" => (Test::Like, false),
        "StringNotLike" => (Test::Like, true),
        "Null" if set == SetQualifier::Single && !if_exists => (Test::Null { absent: true }, false),
        _ => return Err(unsupported()),
    };
    Ok((test, set, negate, if_exists))
}

fn parse_condition_key(key: &str, at: At) -> Result<CondKey, PolicyError> {
    // Condition key names are case-insensitive in AWS; what follows `:` or `/` keeps its text.
    let prefixed = |prefix: &str| {
        key.get(..prefix.len())
            .filter(|p| p.eq_ignore_ascii_case(prefix))
            .and_then(|_| key.get(prefix.len()..))
            .filter(|rest| !rest.is_empty())
    };
    if key.eq_ignore_ascii_case("kms:EncryptionContextKeys") {
        Ok(CondKey::ContextKeys)
    } else if key.eq_ignore_ascii_case("kms:CallerAccount") {
        Ok(CondKey::CallerAccount)
    } else if key.eq_ignore_ascii_case("aws:PrincipalArn") {
        Ok(CondKey::PrincipalArn)
    } else if let Some(k) = prefixed("kms:EncryptionContext:") {
        Ok(CondKey::ContextValue(k.to_owned()))
    } else if let Some(t) = prefixed("aws:PrincipalTag/") {
        Ok(CondKey::PrincipalTag(t.to_owned()))
    } else {
        Err(PolicyError::UnsupportedConditionKey { key: clip(key), at })
    }
}

fn parse_conditions(j: &J, at: At, variables: bool) -> Result<Vec<Condition>, PolicyError> {
    let mut out = Vec::new();
    for (op, block) in members(j, "Condition", at)? {
        let (test, set, negate, if_exists) = parse_operator(op, at)?;
        for (key_name, value) in members(block, op, at)? {
            let key = parse_condition_key(key_name, at)?;
            let multi = matches!(key, CondKey::ContextKeys);
            if let Test::Null { .. } = test {
                let absent = match value {
                    J::Bool(b) => *b,
                    J::Str(s) if s == "true" => true,
                    J::Str(s) if s == "false" => false,
                    _ => return Err(invalid(key_name, at, "Null expects \"true\" or \"false\"")),
                };
                out.push(Condition {
                    key,
                    test: Test::Null { absent },
                    set,
                    negate,
                    if_exists,
                    values: Vec::new(),
                });
                continue;
            }
            if multi && set == SetQualifier::Single {
                return Err(invalid(
                    key_name,
                    at,
                    format!("a multi-valued key needs ForAllValues:{op} or ForAnyValue:{op}"),
                ));
            }
            if !multi && set != SetQualifier::Single {
                return Err(invalid(
                    key_name,
                    at,
                    "ForAllValues/ForAnyValue apply only to kms:EncryptionContextKeys",
                ));
            }
            let values = strings(value, key_name, at)?
                .into_iter()
                .map(|v| parse_value(v, key_name, at, variables))
                .collect::<Result<_, _>>()?;
            out.push(Condition {
                key,
                test,
                set,
                negate,
                if_exists,
                values,
            });
        }
    }
    Ok(out)
}

fn parse_value(v: &str, key: &str, at: At, variables: bool) -> Result<CondValue, PolicyError> {
    if !v.contains("${") {
        let mut toks = Vec::new();
        compile_glob(v, &mut toks);
        return Ok(CondValue::Fixed {
            text: v.to_owned(),
            toks,
        });
    }
    if !variables {
        return Err(invalid(
            key,
            at,
            "policy variables (${...}) need \"Version\": \"2012-10-17\"",
        ));
    }
    let mut parts = Vec::new();
    let mut rest = v;
    while let Some(start) = rest.find("${") {
        if start > 0 {
            parts.push(Part::Text(rest[..start].to_owned()));
        }
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            return Err(invalid(key, at, "unterminated policy variable \"${\""));
        };
        let name = &after[..end];
        let prefix = "aws:PrincipalTag/";
        parts.push(match name {
            "*" => Part::Escaped('*'),
            "?" => Part::Escaped('?'),
            "$" => Part::Escaped('$'),
            n if n.eq_ignore_ascii_case("aws:PrincipalArn") => Part::Var(Var::PrincipalArn),
            n if n.eq_ignore_ascii_case("kms:CallerAccount") => Part::Var(Var::CallerAccount),
            n if n.len() > prefix.len()
                && n.get(..prefix.len())
                    .is_some_and(|p| p.eq_ignore_ascii_case(prefix)) =>
            {
                Part::Var(Var::PrincipalTag(n[prefix.len()..].to_owned()))
            }
            n => {
                return Err(PolicyError::UnsupportedVariable {
                    variable: clip(n),
                    at,
                });
            }
        });
        rest = &after[end + 1..];
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest.to_owned()));
    }
    // Only escapes: no request data involved, so it is a fixed value after all.
    if parts.iter().all(|p| !matches!(p, Part::Var(_))) {
        let mut text = String::new();
        let mut toks = Vec::new();
        for p in &parts {
            match p {
                Part::Text(t) => {
                    text.push_str(t);
                    compile_glob(t, &mut toks);
                }
                Part::Escaped(c) => {
                    text.push(*c);
                    toks.push(Tok::Ch(*c));
                }
                Part::Var(_) => {}
            }
        }
        return Ok(CondValue::Fixed { text, toks });
    }
    Ok(CondValue::Dynamic(parts))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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
        fn eval(&self, policy: &Policy) -> Decision {
            policy.evaluate(&RequestContext {
                principal_arn: self.principal,
                caller_account: self.account,
                action: self.action,
                key_arn: self.key,
                encryption_context: self.context.as_ref(),
                principal_tags: &self.tags,
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
    fn glob_matcher() {
        let m = |p: &str, t: &str| {
            let mut toks = Vec::new();
            compile_glob(p, &mut toks);
            glob_match(&toks, t, false)
        };
        assert!(m("", ""));
        assert!(!m("", "a"));
        assert!(m("*", ""));
        assert!(m("*", "anything"));
        assert!(m("a*c", "abbbc"));
        assert!(m("a*c", "ac"));
        assert!(!m("a*c", "acb"));
        assert!(m("a?c", "abc"));
        assert!(!m("a?c", "ac"));
        assert!(m("*a*b*", "xxaxxbxx"));
        assert!(!m("*a*b*", "xxbxxaxx"));
        assert!(m("t-?", "t-é"), "? is one character, not one byte");
        assert!(m("é*", "éte"));
        assert!(!m("abc", "ABC"));
        let mut toks = Vec::new();
        compile_glob("KMS:generatedatakey*", &mut toks);
        assert!(glob_match(&toks, "kms:GenerateDataKeyPair", true));
        // Pathological backtracking stays fast (quadratic, not exponential).
        let text = "a".repeat(2000);
        assert!(!m(&format!("{}b", "*a".repeat(50)), &text));
    }

    #[test]
    fn allow_deny_and_implicit_deny() {
        let p = policy(
            r#"[
              {"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:user/alice"},
               "Action":["kms:Encrypt","kms:Decrypt"],"Resource":"*"},
              {"Sid":"NoDecryptForBob","Effect":"Deny","Principal":{"AWS":"arn:aws:iam::111122223333:user/bob"},
               "Action":"kms:Decrypt","Resource":"*"},
              {"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:user/bob"},
               "Action":"kms:*","Resource":"*"}
            ]"#,
        );
        assert_eq!(req(ALICE, Action::Encrypt).eval(&p), Decision::Allow);
        assert_eq!(req(ALICE, Action::Decrypt).eval(&p), Decision::Allow);
        assert_eq!(req(ALICE, Action::GenerateDataKey).eval(&p), IMPLICIT);
        assert_eq!(req(OTHER, Action::Encrypt).eval(&p), IMPLICIT);
        // Explicit Deny beats an Allow that comes after it, and one that comes before.
        let deny = Decision::ExplicitDeny {
            sid: Some("NoDecryptForBob".into()),
            reason: DenyReason::PolicyDenied,
        };
        assert_eq!(req(BOB, Action::Decrypt).eval(&p), deny);
        assert_eq!(req(BOB, Action::Encrypt).eval(&p), Decision::Allow);
        let p2 = policy(
            r#"[
              {"Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*"},
              {"Effect":"Deny","Principal":"*","Action":"kms:Decrypt","Resource":"*"}
            ]"#,
        );
        assert_eq!(
            req(ALICE, Action::Decrypt).eval(&p2),
            Decision::ExplicitDeny {
                sid: None,
                reason: DenyReason::PolicyDenied
            }
        );
        assert!(req(ALICE, Action::Encrypt).eval(&p2).is_allowed());
    }

    #[test]
    fn wildcard_and_case_insensitive_actions() {
        let p = policy(
            r#"{"Effect":"Allow","Principal":"*","Action":["KMS:generatedatakey*","kms:Re?ncrypt*"],"Resource":"*"}"#,
        );
        for a in [
            Action::GenerateDataKey,
            Action::GenerateDataKeyWithoutPlaintext,
            Action::GenerateDataKeyPair,
            Action::ReEncryptFrom,
            Action::ReEncryptTo,
        ] {
            assert!(req(ALICE, a).eval(&p).is_allowed(), "{a}");
        }
        assert_eq!(req(ALICE, Action::Encrypt).eval(&p), IMPLICIT);
        let all = policy(r#"{"Effect":"Allow","Principal":"*","Action":"*","Resource":"*"}"#);
        for a in Action::ALL {
            assert!(req(ALICE, *a).eval(&all).is_allowed());
        }
    }

    #[test]
    fn principals_accounts_and_resources() {
        let p = policy(
            r#"[{"Effect":"Allow","Principal":{"AWS":"111122223333"},"Action":"kms:Encrypt","Resource":"*"},
                {"Effect":"Allow","Principal":{"AWS":["arn:aws:iam::444455556666:root"]},"Action":"kms:Decrypt",
                 "Resource":"arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"}]"#,
        );
        assert!(req(ALICE, Action::Encrypt).eval(&p).is_allowed());
        assert!(req(BOB, Action::Encrypt).eval(&p).is_allowed());
        assert_eq!(req(OTHER, Action::Encrypt).eval(&p), IMPLICIT);
        assert!(req(OTHER, Action::Decrypt).eval(&p).is_allowed());
        let mut other_key = req(OTHER, Action::Decrypt);
        other_key.key = "arn:aws:kms:us-east-1:111122223333:key/other";
        assert_eq!(other_key.eval(&p), IMPLICIT);
        let any = policy(
            r#"{"Effect":"Allow","Principal":{"AWS":"*"},"Action":"kms:Encrypt","Resource":["arn:aws:kms:*:111122223333:key/*"]}"#,
        );
        assert!(req(OTHER, Action::Encrypt).eval(&any).is_allowed());
    }

    #[test]
    fn tenant_isolation_with_policy_variables() {
        let p = Policy::parse(TENANT_POLICY).unwrap();
        let alice = || req(ALICE, Action::Encrypt).tag("tenant", "A");
        assert!(alice().ctx(&[("tenant", "A")]).eval(&p).is_allowed());
        // The context key in the condition key is case-insensitive, the value is not.
        assert!(alice().ctx(&[("Tenant", "A")]).eval(&p).is_allowed());
        assert_eq!(alice().ctx(&[("tenant", "a")]).eval(&p), MISMATCH);
        assert_eq!(alice().ctx(&[("tenant", "B")]).eval(&p), MISMATCH);
        assert_eq!(alice().eval(&p), MISMATCH, "no context at all");
        // A caller without the tag matches no tenant.
        assert_eq!(
            req(ALICE, Action::Encrypt).ctx(&[("tenant", "")]).eval(&p),
            MISMATCH
        );
        // An action the statement does not grant is a plain policy denial.
        assert_eq!(
            alice()
                .ctx(&[("tenant", "A")])
                .action(Action::DescribeKey)
                .eval(&p),
            IMPLICIT
        );
        // The explicit Deny on a context-less Decrypt carries the context reason.
        assert_eq!(
            req(BOB, Action::Decrypt).tag("tenant", "B").eval(&p),
            Decision::ExplicitDeny {
                sid: Some("NoForeignContext".into()),
                reason: DenyReason::ContextMismatch
            }
        );
        assert!(
            req(BOB, Action::Decrypt)
                .tag("tenant", "B")
                .ctx(&[("tenant", "B"), ("order", "1")])
                .eval(&p)
                .is_allowed()
        );
    }

    impl Req {
        fn action(mut self, a: Action) -> Self {
            self.action = a;
            self
        }
    }

    #[test]
    fn variables_are_data_not_wildcards() {
        let p = policy(
            r#"{"Effect":"Allow","Principal":"*","Action":"kms:Encrypt","Resource":"*",
                "Condition":{"StringLike":{"kms:EncryptionContext:path":"${aws:PrincipalTag/team}/*"}}}"#,
        );
        let r = |team: &str, path: &str| {
            req(ALICE, Action::Encrypt)
                .tag("team", team)
                .ctx(&[("path", path)])
                .eval(&p)
                .is_allowed()
        };
        assert!(r("ops", "ops/db"));
        assert!(!r("ops", "dev/db"));
        assert!(
            !r("*", "dev/db"),
            "a tag value * must not act as a wildcard"
        );
        assert!(r("*", "*/db"));
        let esc = policy(
            r#"{"Effect":"Allow","Principal":"*","Action":"kms:Encrypt","Resource":"*",
                "Condition":{"StringLike":{"kms:EncryptionContext:x":"a${*}b*"}}}"#,
        );
        let ok = |v: &str| {
            req(ALICE, Action::Encrypt)
                .ctx(&[("x", v)])
                .eval(&esc)
                .is_allowed()
        };
        assert!(ok("a*bzzz"));
        assert!(!ok("aXbzzz"));
        let arn = policy(
            r#"{"Effect":"Allow","Principal":"*","Action":"kms:Encrypt","Resource":"*",
                "Condition":{"StringEquals":{"kms:EncryptionContext:owner":"${aws:PrincipalArn}",
                                            "kms:EncryptionContext:acct":"acct-${kms:CallerAccount}"}}}"#,
        );
        assert!(
            req(ALICE, Action::Encrypt)
                .ctx(&[("owner", ALICE), ("acct", "acct-111122223333")])
                .eval(&arn)
                .is_allowed()
        );
        assert_eq!(
            req(BOB, Action::Encrypt)
                .ctx(&[("owner", ALICE), ("acct", "acct-111122223333")])
                .eval(&arn),
            MISMATCH
        );
    }

    #[test]
    fn operators_follow_aws_semantics() {
        let cond = |c: &str| {
            policy(&format!(
                r#"{{"Effect":"Allow","Principal":"*","Action":"kms:Encrypt","Resource":"*","Condition":{c}}}"#
            ))
        };
        let ok = |p: &Policy, pairs: &[(&str, &str)]| {
            req(ALICE, Action::Encrypt)
                .tag("Dept", "Ops")
                .ctx(pairs)
                .eval(p)
                .is_allowed()
        };
        // StringNotEquals: a missing key passes; several values are "none of".
        let p = cond(r#"{"StringNotEquals":{"kms:EncryptionContext:env":["prod","stage"]}}"#);
        assert!(ok(&p, &[]));
        assert!(ok(&p, &[("env", "dev")]));
        assert!(!ok(&p, &[("env", "stage")]));
        // IfExists: a missing key passes, a present one is tested.
        let p = cond(r#"{"StringEqualsIfExists":{"kms:EncryptionContext:env":"dev"}}"#);
        assert!(ok(&p, &[]));
        assert!(ok(&p, &[("env", "dev")]));
        assert!(!ok(&p, &[("env", "prod")]));
        let p = cond(r#"{"StringEqualsIgnoreCase":{"kms:EncryptionContext:env":"DEV"}}"#);
        assert!(ok(&p, &[("env", "dev")]));
        let p = cond(r#"{"StringNotLike":{"kms:EncryptionContext:env":"pr*"}}"#);
        assert!(ok(&p, &[("env", "dev")]));
        assert!(!ok(&p, &[("env", "prod")]));
        // ForAllValues: every request key is in the set (true for an empty context, as in AWS).
        let p = cond(
            r#"{"ForAllValues:StringEquals":{"kms:EncryptionContextKeys":["tenant","order"]}}"#,
        );
        assert!(ok(&p, &[("tenant", "A")]));
        assert!(ok(&p, &[("tenant", "A"), ("order", "1")]));
        assert!(!ok(&p, &[("tenant", "A"), ("extra", "1")]));
        assert!(ok(&p, &[]));
        // Paired with Null it requires a context.
        let p = cond(
            r#"{"ForAllValues:StringEquals":{"kms:EncryptionContextKeys":"tenant"},"Null":{"kms:EncryptionContextKeys":false}}"#,
        );
        assert!(!ok(&p, &[]));
        assert!(ok(&p, &[("tenant", "A")]));
        let p = cond(r#"{"ForAnyValue:StringLike":{"kms:EncryptionContextKeys":"ten*"}}"#);
        assert!(ok(&p, &[("x", "1"), ("tenant", "A")]));
        assert!(!ok(&p, &[("x", "1")]));
        assert!(!ok(&p, &[]));
        // Caller and principal keys.
        let p = cond(
            r#"{"StringEquals":{"kms:CallerAccount":"111122223333","aws:principaltag/dept":"Ops"},
                "StringLike":{"aws:PrincipalArn":"arn:aws:iam::111122223333:user/a*"}}"#,
        );
        assert!(ok(&p, &[]));
        assert!(
            !req(BOB, Action::Encrypt)
                .tag("Dept", "Ops")
                .eval(&p)
                .is_allowed()
        );
        // A non-context condition failing is a policy denial, not a context mismatch.
        assert_eq!(
            req(BOB, Action::Encrypt)
                .ctx(&[("tenant", "A")])
                .eval(&p)
                .deny_reason(),
            Some(DenyReason::PolicyDenied)
        );
    }

    #[test]
    fn context_mismatch_only_when_context_alone_failed() {
        let p = policy(
            r#"{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:user/alice"},"Action":"kms:Encrypt","Resource":"*",
                "Condition":{"StringEquals":{"kms:EncryptionContext:tenant":"A","aws:PrincipalTag/tier":"gold"}}}"#,
        );
        let alice = || req(ALICE, Action::Encrypt);
        assert!(
            alice()
                .tag("tier", "gold")
                .ctx(&[("tenant", "A")])
                .eval(&p)
                .is_allowed()
        );
        assert_eq!(
            alice().tag("tier", "gold").ctx(&[("tenant", "B")]).eval(&p),
            MISMATCH
        );
        assert_eq!(
            alice().tag("tier", "iron").ctx(&[("tenant", "B")]).eval(&p),
            IMPLICIT
        );
        assert_eq!(
            req(BOB, Action::Encrypt)
                .tag("tier", "gold")
                .ctx(&[("tenant", "B")])
                .eval(&p),
            IMPLICIT,
            "a statement for another principal is not a near miss"
        );
    }

    #[test]
    fn valid_documents_parse() {
        let d = default_policy(ACCOUNT, ALICE, &[BOB.to_string(), ALICE.to_string()]);
        let p = Policy::parse(&d).unwrap();
        assert_eq!(p.statement_count(), 1);
        for who in [ALICE, BOB] {
            for a in Action::ALL {
                assert!(req(who, *a).eval(&p).is_allowed());
            }
        }
        assert_eq!(req(OTHER, Action::Decrypt).eval(&p), IMPLICIT);
        let v: serde_json::Value = serde_json::from_str(&d).unwrap();
        assert_eq!(
            v["Statement"][0]["Principal"]["AWS"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        // 2008-10-17 and no Version are accepted when no variables are used.
        Policy::parse(r#"{"Version":"2008-10-17","Statement":{"Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*"}}"#).unwrap();
        Policy::parse(
            r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*"}]}"#,
        )
        .unwrap();
        let big = format!(
            r#"{{"Version":"2012-10-17","Id":"{}","Statement":{{"Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*"}}}}"#,
            "x".repeat(MAX_POLICY_BYTES - 150)
        );
        assert!(big.len() <= MAX_POLICY_BYTES);
        Policy::parse(&big).unwrap();
        let p: Policy = TENANT_POLICY.parse().unwrap();
        assert_eq!(p.statement_count(), 3);
    }

    #[test]
    fn unsupported_and_malformed_documents_are_rejected_by_name() {
        let base = r#""Effect":"Allow","Principal":"*","Action":"kms:Encrypt","Resource":"*""#;
        let cases: &[(String, &str)] = &[
            (
                format!(r#"[{{{base}}},{{"Effect":"Allow","Principal":"*","NotAction":"kms:Encrypt","Resource":"*"}}]"#),
                r#"unsupported policy element "NotAction" in statement 2"#,
            ),
            (
                format!(r#"{{"Effect":"Deny","NotPrincipal":{{"AWS":"{ALICE}"}},"Action":"kms:*","Resource":"*"}}"#),
                r#"unsupported policy element "NotPrincipal" in statement 1"#,
            ),
            (
                r#"{"Effect":"Allow","Principal":"*","Action":"kms:*","NotResource":"*"}"#.into(),
                r#"unsupported policy element "NotResource" in statement 1"#,
            ),
            (
                format!(r#"{{{base},"Sid":"x","Foo":1}}"#),
                r#"unsupported policy element "Foo" in statement 1"#,
            ),
            (
                format!(r#"{{{base},"Condition":{{"NumericEquals":{{"kms:CallerAccount":"1"}}}}}}"#),
                r#"unsupported condition operator "NumericEquals" in statement 1"#,
            ),
            (
                format!(r#"{{{base},"Condition":{{"StringEquals":{{"aws:SourceIp":"1.2.3.4"}}}}}}"#),
                r#"unsupported condition key "aws:SourceIp" in statement 1"#,
            ),
            (
                r#"{"Effect":"Allow","Principal":{"Service":"s3.amazonaws.com"},"Action":"kms:*","Resource":"*"}"#.into(),
                r#"unsupported principal type "Service" in statement 1"#,
            ),
            (
                r#"{"Effect":"Allow","Principal":{"AWS":"*","Service":"s3.amazonaws.com"},"Action":"kms:*","Resource":"*"}"#.into(),
                r#"unsupported principal type "Service" in statement 1"#,
            ),
            (
                format!(r#"{{{base},"Condition":{{"StringEquals":{{"kms:EncryptionContext:t":"${{aws:username}}"}}}}}}"#),
                r#"unsupported policy variable "${aws:username}" in statement 1"#,
            ),
            (
                r#"{"Effect":"allow","Principal":"*","Action":"kms:*","Resource":"*"}"#.into(),
                r#"invalid "Effect" in statement 1"#,
            ),
            (
                r#"{"Effect":"Allow","Principal":"*","Action":7,"Resource":"*"}"#.into(),
                r#"invalid "Action" in statement 1"#,
            ),
            (
                r#"{"Effect":"Allow","Principal":"*","Action":[],"Resource":"*"}"#.into(),
                r#"invalid "Action" in statement 1"#,
            ),
            (
                r#"{"Effect":"Allow","Principal":"*","Action":"kms:Encrpyt","Resource":"*"}"#.into(),
                r#""kms:Encrpyt" names no KMS action"#,
            ),
            (
                r#"{"Effect":"Allow","Principal":"*","Action":"s3:GetObject","Resource":"*"}"#.into(),
                "only kms: actions are supported",
            ),
            (
                r#"{"Effect":"Allow","Principal":"*","Action":"kms:*"}"#.into(),
                r#"missing policy element "Resource" in statement 1"#,
            ),
            (
                r#"{"Effect":"Allow","Principal":"me","Action":"kms:*","Resource":"*"}"#.into(),
                r#"invalid "Principal" in statement 1"#,
            ),
            (
                r#"{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:user/*"},"Action":"kms:*","Resource":"*"}"#.into(),
                "wildcards are not allowed",
            ),
            (
                r#"{"Effect":"Allow","Principal":{"AWS":"bob"},"Action":"kms:*","Resource":"*"}"#.into(),
                r#"invalid "Principal" in statement 1"#,
            ),
            (
                r#"{"Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"key/1"}"#.into(),
                r#"invalid "Resource" in statement 1"#,
            ),
            (
                r#"{"Effect":"Deny","Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*"}"#.into(),
                r#"duplicate policy element "Effect" in statement 1"#,
            ),
            (
                format!(r#"{{{base},"Condition":{{"StringEquals":{{"kms:EncryptionContext:t":5}}}}}}"#),
                r#"invalid "kms:EncryptionContext:t" in statement 1"#,
            ),
            (
                format!(r#"{{{base},"Condition":{{"StringEquals":{{"kms:EncryptionContextKeys":"t"}}}}}}"#),
                "multi-valued key needs ForAllValues:StringEquals",
            ),
            (
                format!(r#"{{{base},"Condition":{{"ForAnyValue:StringEquals":{{"kms:CallerAccount":"1"}}}}}}"#),
                "apply only to kms:EncryptionContextKeys",
            ),
            (
                format!(r#"{{{base},"Condition":{{"ForAllValues:Null":{{"kms:EncryptionContextKeys":"true"}}}}}}"#),
                r#"unsupported condition operator "ForAllValues:Null""#,
            ),
            (
                format!(r#"{{{base},"Condition":{{"Null":{{"kms:EncryptionContextKeys":"maybe"}}}}}}"#),
                "Null expects",
            ),
            (
                format!(r#"{{{base},"Condition":{{"StringEquals":{{"kms:EncryptionContext:t":"${{aws:PrincipalTag/t"}}}}}}"#),
                "unterminated policy variable",
            ),
            ("[]".into(), r#"invalid "Statement" at the top level"#),
            ("\"x\"".into(), r#"invalid "Statement" at the top level"#),
            ("[1]".into(), r#"invalid "Statement" in statement 1"#),
        ];
        for (statements, want) in cases {
            let got = err(statements);
            assert!(
                got.contains(want),
                "{statements}\n  got: {got}\n  want: {want}"
            );
        }
        let top = |doc: &str| Policy::parse(doc).unwrap_err().to_string();
        assert!(
            top(r#"{"Version":"2012-10-17"}"#)
                .contains(r#"missing policy element "Statement" at the top level"#)
        );
        assert!(top(r#"{"Version":"2019-01-01","Statement":[]}"#).contains(r#"invalid "Version""#));
        assert!(
            top(r#"{"Statement":{},"Extra":{}}"#)
                .contains(r#"unsupported policy element "Extra" at the top level"#)
        );
        assert!(top("[]").contains(r#"invalid "policy document""#));
        assert!(top("{").contains("not valid JSON"));
        assert!(top(&" ".repeat(MAX_POLICY_BYTES + 1)).contains("the limit is 32768 bytes"));
        assert!(
            top(r#"{"Version":"2008-10-17","Statement":{"Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*",
                "Condition":{"StringEquals":{"kms:EncryptionContext:t":"${aws:PrincipalTag/t}"}}}}"#)
            .contains("2012-10-17")
        );
        let long = format!(r#"{{"{}":1,"Statement":{{}}}}"#, "N".repeat(5000));
        assert!(top(&long).len() < 200, "element names are clipped");
    }

    #[test]
    fn errors_become_malformed_policy_document() {
        let e: KmsError = Policy::parse(r#"{"Statement":{"NotAction":"kms:*"}}"#)
            .unwrap_err()
            .into();
        assert_eq!(e.kind(), ErrorKind::MalformedPolicyDocument);
        assert_eq!(
            e.wire_message(),
            r#"unsupported policy element "NotAction" in statement 1"#
        );
        assert!(std::error::Error::source(&e).is_some());
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

    fn arb_json() -> impl Strategy<Value = serde_json::Value> {
        let words = prop_oneof![
            Just("Version"),
            Just("Statement"),
            Just("Effect"),
            Just("Allow"),
            Just("Deny"),
            Just("Principal"),
            Just("AWS"),
            Just("*"),
            Just("Action"),
            Just("kms:*"),
            Just("kms:Encrypt"),
            Just("Resource"),
            Just("Condition"),
            Just("StringEquals"),
            Just("StringLike"),
            Just("ForAllValues:StringEquals"),
            Just("Null"),
            Just("kms:EncryptionContext:tenant"),
            Just("kms:EncryptionContextKeys"),
            Just("${aws:PrincipalTag/tenant}"),
            Just("2012-10-17"),
            Just("111122223333"),
            Just("arn:aws:iam::111122223333:user/alice"),
            Just("a*?${*}${"),
        ]
        .prop_map(str::to_owned);
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::Bool),
            any::<i64>().prop_map(serde_json::Value::from),
            words.clone().prop_map(serde_json::Value::String),
            ".{0,12}".prop_map(serde_json::Value::String),
        ];
        leaf.prop_recursive(5, 64, 6, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(serde_json::Value::Array),
                prop::collection::vec((words.clone(), inner), 0..6)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn eval_all(p: &Policy) {
        let ctx: EncryptionContext = [("tenant".to_string(), "A".to_string())].into();
        let tags: BTreeMap<String, String> = [("tenant".to_string(), "A".to_string())].into();
        for a in Action::ALL {
            for c in [None, Some(&ctx)] {
                let _ = p.evaluate(&RequestContext {
                    principal_arn: ALICE,
                    caller_account: ACCOUNT,
                    action: *a,
                    key_arn: KEY,
                    encryption_context: c,
                    principal_tags: &tags,
                });
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn random_json_never_panics(doc in arb_json()) {
            if let Ok(p) = Policy::parse(&doc.to_string()) {
                eval_all(&p);
            }
            let wrapped = serde_json::json!({"Version": "2012-10-17", "Statement": doc});
            if let Ok(p) = Policy::parse(&wrapped.to_string()) {
                eval_all(&p);
            }
        }

        #[test]
        fn mutated_policies_never_panic(
            edits in prop::collection::vec((any::<prop::sample::Index>(), 0u8..3, any::<u8>()), 1..8)
        ) {
            let mut bytes = TENANT_POLICY.as_bytes().to_vec();
            for (at, kind, byte) in edits {
                let i = at.index(bytes.len() + 1);
                match kind {
                    0 => bytes.insert(i, byte),
                    1 if i < bytes.len() => { bytes.remove(i); }
                    _ if i < bytes.len() => bytes[i] = byte,
                    _ => {}
                }
            }
            let text = String::from_utf8_lossy(&bytes);
            if let Ok(p) = Policy::parse(&text) {
                eval_all(&p);
            }
        }

        #[test]
        fn glob_never_panics(p in ".{0,10}", t in ".{0,20}") {
            let mut toks = Vec::new();
            compile_glob(&p, &mut toks);
            let _ = glob_match(&toks, &t, true);
            let _ = glob_match(&toks, &t, false);
        }
    }
}
