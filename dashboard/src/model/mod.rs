//! The dashboard's data model, free of any UI code so every number can be unit-tested exactly:
//! parsing scrapes, histories, rates, quantiles, SLI maths, rotation compliance, and the
//! per-view numbers derived from them. Time is always passed in; nothing here reads a clock.

pub mod backfill;
pub mod derive;
pub mod fleet;
pub mod frontend;
pub mod history;
pub mod palette;
pub mod prom;
pub mod quantile;
pub mod query;
pub mod rows;
pub mod sli;
pub mod status;
pub mod store;
pub mod view;

pub use derive::{Derived, Settings};
pub use store::{Endpoint, Model, ModelConfig, SourceHealth};
