//! Who is calling: client credentials the sidecar issued (`clients`) and the AWS Signature V4 that
//! proves a request came from one of them (`sigv4`). Key policies (authorization) arrive here too.

pub mod admin_token;
pub mod clients;
pub mod policy;
pub mod sigv4;
