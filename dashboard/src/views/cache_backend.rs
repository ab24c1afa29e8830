//! Cache and backend: hit ratio and entries (stale ones too), and what reaches the backend:
//! calls, errors, retries, breaker state and transitions, estimated cost.

use egui::Ui;

use super::{Unit, fmt, no_data, plot, section, table, tile};
use crate::model::Derived;
use crate::model::sli::Health;

/// Draws the Cache and backend view.
pub fn show(ui: &mut Ui, d: &Derived) {
    ui.heading("Cache and backend");
    let w = fmt::window(d.settings.window_secs);
    ui.horizontal_wrapped(|ui| {
        tile(
            ui,
            "Cache hit ratio",
            &fmt::pct(d.cache_hit_ratio, 1),
            &w,
            Health::Unknown,
        );
        tile(
            ui,
            "Estimated backend cost",
            &d.cost_per_hour.map_or(fmt::NO_DATA.into(), |c| {
                format!("{}/h", fmt::dollars(Some(c)))
            }),
            "at the configured price",
            Health::Unknown,
        );
    });
    plot(
        ui,
        d,
        "cache_hit",
        "Cache hit ratio",
        &d.hit_ratio_lines,
        Unit::Ratio,
    );
    plot(
        ui,
        d,
        "cache_entries",
        "Cache entries (and stale entries)",
        &d.cache_entry_lines,
        Unit::Count,
    );
    section(ui, &format!("Caches, last {w}"));
    if d.caches.is_empty() {
        no_data(ui, "kms_sidecar_cache_* not exported yet");
    } else {
        table(
            ui,
            "caches",
            &["cache", "lookups", "hit ratio", "entries", "stale entries"],
            |ui| {
                for c in &d.caches {
                    ui.label(&c.cache);
                    ui.label(c.requests.map_or("—".into(), |n| fmt::count(Some(n))));
                    ui.label(c.hit_ratio.map_or("—".into(), |h| fmt::pct(Some(h), 1)));
                    ui.label(c.entries.map_or("—".into(), |n| fmt::count(Some(n))));
                    let stale = c.stale.map_or("—".into(), |n| fmt::count(Some(n)));
                    if c.stale.is_some_and(|s| s > 0.0) {
                        ui.colored_label(super::color(Health::Warn), stale);
                    } else {
                        ui.label(stale);
                    }
                    ui.end_row();
                }
            },
        );
    }
    plot(
        ui,
        d,
        "backend_rates",
        "Backend calls and retries per second",
        &d.backend_lines,
        Unit::PerSecond,
    );
    section(ui, &format!("Backends, last {w}"));
    if d.backends.is_empty() {
        no_data(ui, "kms_sidecar_backend_* not exported yet");
        return;
    }
    table(
        ui,
        "backends",
        &[
            "backend",
            "breaker",
            "calls",
            "errors",
            "retries",
            "transitions",
            "cost",
        ],
        |ui| {
            for b in &d.backends {
                ui.label(&b.backend);
                match b.circuit {
                    Some(c) => ui.colored_label(super::color(c.health()), c.label()),
                    None => ui.label("—"),
                };
                let n = |v: Option<f64>| v.map_or("—".into(), |x| fmt::count(Some(x)));
                ui.label(n(b.calls));
                ui.label(n(b.errors));
                ui.label(n(b.retries));
                ui.label(n(b.transitions));
                ui.label(b.cost.map_or("—".into(), |c| fmt::dollars(Some(c))));
                ui.end_row();
            }
        },
    );
}
