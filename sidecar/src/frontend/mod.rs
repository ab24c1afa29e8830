//! Front-ends: one folder per wire format. Each decodes its requests into the core's typed
//! requests and an authenticated principal, hands them to the core, and maps the core's answers and
//! errors to its own wire. Nothing below `core/` imports a front-end.

pub mod aws_json;
pub mod http;
pub mod kmsv2;
pub mod xks;
