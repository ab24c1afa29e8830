//! Who is calling: client credentials the sidecar issued (`clients`) and the AWS Signature V4 that
//! proves a request came from one of them (`sigv4`). Key policies (authorization) arrive here too.

pub mod admin_token;
mod amz_date;
pub mod clients;
pub mod policy;
pub mod proxy_policy;
pub mod sigv4;

use std::collections::BTreeMap;

/// An authenticated caller, as a front-end hands it to the core: what key policies, rate limits,
/// metrics and the audit log know of it. Built once per credential (not per request).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The principal name: the metrics label, the audit log's `principal`, the rate-limit bucket.
    pub name: String,
    /// `arn:aws:iam::<account>:user/<name>`, as key policies name it.
    pub arn: String,
    /// Principal attributes (`aws:PrincipalTag/<name>` in key policies), e.g. `tenant`.
    pub tags: BTreeMap<String, String>,
}
