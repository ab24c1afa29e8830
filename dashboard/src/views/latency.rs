//! Latency: p50/p95/p99 per operation from the request histogram, cache hits against misses, and
//! the backend's own latency, so a slow backend and a cold cache can be told apart.

use egui::Ui;

use super::{Unit, fmt, no_data, plot, section, table};
use crate::model::Derived;

/// Draws the Latency view.
pub fn show(ui: &mut Ui, d: &Derived) {
    ui.heading("Latency");
    plot(
        ui,
        d,
        "latency_p95_op",
        "p95 per operation",
        &d.p95_by_op,
        Unit::Seconds,
    );
    section(
        ui,
        &format!(
            "Per operation, last {}",
            fmt::window(d.settings.window_secs)
        ),
    );
    if d.op_latency.is_empty() {
        no_data(ui, "no request latency recorded in this window");
    } else {
        table(
            ui,
            "latency_ops",
            &["operation", "calls", "p50", "p95", "p99"],
            |ui| {
                for o in &d.op_latency {
                    ui.label(&o.operation);
                    ui.label(fmt::count(Some(o.calls)));
                    ui.label(fmt::secs(o.p50));
                    ui.label(fmt::secs(o.p95));
                    ui.label(fmt::secs(o.p99));
                    ui.end_row();
                }
            },
        );
    }
    plot(
        ui,
        d,
        "latency_cache",
        "Cache hit vs miss (p50, p95)",
        &d.latency_by_cache,
        Unit::Seconds,
    );
    plot(
        ui,
        d,
        "latency_backend",
        "Backend latency (p50, p95, p99)",
        &d.backend_latency,
        Unit::Seconds,
    );
}
