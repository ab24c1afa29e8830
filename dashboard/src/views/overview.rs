//! Overview: is the sidecar fleet meeting its SLO, and is anything on fire (breakers, denials,
//! overdue keys)? Red/amber/green on every tile, and the same SLI split by front-end (AWS JSON, KMS
//! v2, XKS) so one protocol's trouble is not hidden in the fleet's average.

use egui::Ui;

use super::{Unit, fmt, plot, section, table, tile};
use crate::model::Derived;
use crate::model::sli::Health;

/// Draws the Overview.
pub fn show(ui: &mut Ui, d: &Derived) {
    ui.heading("Overview");
    let w = fmt::window(d.settings.window_secs);
    ui.horizontal_wrapped(|ui| {
        tile(
            ui,
            &format!("Availability ({w})"),
            &d.windowed(fmt::pct(d.availability, 3)),
            &format!("SLO {}", fmt::pct(Some(d.settings.slo), 2)),
            match d.availability {
                _ if d.short => Health::Unknown,
                None => Health::Unknown,
                Some(a) if a >= d.settings.slo => Health::Good,
                Some(_) => d.slo_health.at_least_warn(),
            },
        );
        tile(
            ui,
            &format!("Error budget spent ({w})"),
            &d.windowed(fmt::pct(d.budget_spent, 2)),
            "of the 30-day SLO period's budget",
            if d.short {
                Health::Unknown
            } else {
                d.slo_health
            },
        );
        for (i, name) in ["5m", "1h", "6h"].iter().enumerate() {
            tile(
                ui,
                &format!("Burn rate ({name})"),
                &d.burn_text(i),
                "as the alert rules; 1 = lasts 30 days",
                match d.burn[i] {
                    None => Health::Unknown,
                    Some(b) if b >= 14.4 => Health::Bad,
                    Some(b) if b > 1.0 => Health::Warn,
                    Some(_) => Health::Good,
                },
            );
        }
        tile(
            ui,
            &format!("Request rate ({w})"),
            &d.windowed(fmt::rate(d.request_rate)),
            &d.windowed(format!("{} calls", fmt::count(d.requests))),
            if d.requests.is_some() && !d.short {
                Health::Good
            } else {
                Health::Unknown
            },
        );
        tile(
            ui,
            &format!("p95 latency ({w})"),
            &d.windowed(fmt::secs(d.p95)),
            &format!("target {}", fmt::secs(Some(d.settings.p95_target_secs))),
            if d.short {
                Health::Unknown
            } else {
                d.p95_health
            },
        );
        tile(
            ui,
            &format!("Cache hit ratio ({w})"),
            &d.windowed(fmt::pct(d.cache_hit_ratio, 1)),
            "",
            Health::Unknown,
        );
        tile(
            ui,
            &format!("Unauthorized ({w})"),
            &d.windowed(fmt::count(d.unauthorized)),
            "denied calls",
            match d.unauthorized {
                _ if d.short => Health::Unknown,
                None => Health::Unknown,
                Some(0.0) => Health::Good,
                Some(_) => Health::Warn,
            },
        );
        tile(
            ui,
            "Overdue keys",
            &d.overdue_keys
                .map_or(fmt::NO_DATA.to_string(), |n| n.to_string()),
            &format!("compliance {}", fmt::pct(d.compliance, 0)),
            match d.overdue_keys {
                None => Health::Unknown,
                Some(0) => Health::Good,
                Some(_) => Health::Bad,
            },
        );
        let breakers: Vec<_> = d.breakers().collect();
        if breakers.is_empty() {
            tile(ui, "Circuit breaker", fmt::NO_DATA, "", Health::Unknown);
        }
        for (backend, c) in breakers {
            tile(
                ui,
                &format!("Breaker: {backend}"),
                c.map_or(fmt::NO_DATA, |c| c.label()),
                "",
                c.map_or(Health::Unknown, |c| c.health()),
            );
        }
    });
    plot(
        ui,
        d,
        "overview_requests",
        "Requests per second by outcome class",
        &d.requests_by_class,
        Unit::PerSecond,
    );
    by_frontend(ui, d);
    events(ui, d);
    section(ui, &format!("Outcomes in the last {w}"));
    if d.outcomes.values().all(|n| *n <= 0.0) {
        super::no_data(ui, "no requests counted in this window");
        return;
    }
    let total: f64 = d.outcomes.values().sum();
    table(
        ui,
        "outcomes",
        &["outcome", "calls", "share", "counts against SLO"],
        |ui| {
            for (outcome, n) in d.outcomes.iter().filter(|(_, n)| **n > 0.0) {
                ui.label(outcome);
                ui.label(fmt::count(Some(*n)));
                ui.label(fmt::pct((total > 0.0).then(|| n / total), 2));
                ui.label(if crate::model::sli::is_bad(outcome) {
                    "yes"
                } else if outcome == "ThrottlingException" {
                    "global/backend limits only"
                } else {
                    "no"
                });
                ui.end_row();
            }
        },
    );
}

/// One row per front-end with traffic: availability green or red against the SLO, throttled and
/// denied calls amber when there are any (as the Overview's tiles colour them).
fn by_frontend(ui: &mut Ui, d: &Derived) {
    let w = fmt::window(d.settings.window_secs);
    section(ui, &format!("By front-end ({w})"));
    if d.frontends.is_empty() {
        super::no_data(ui, "no requests counted in this window");
        return;
    }
    let amber_if_any = |ui: &mut Ui, n: f64| {
        let text = fmt::count(Some(n));
        if n > 0.0 {
            ui.colored_label(super::color(Health::Warn), text);
        } else {
            ui.label(text);
        }
    };
    table(
        ui,
        "by_frontend",
        &[
            "front-end",
            "requests/s",
            "availability",
            "p99",
            "throttled",
            "denied",
        ],
        |ui| {
            for r in &d.frontends {
                ui.label(&r.frontend);
                ui.label(fmt::rate(Some(r.request_rate)));
                ui.colored_label(super::color(r.health), fmt::pct(r.availability, 3));
                ui.label(fmt::secs(r.p99));
                amber_if_any(ui, r.throttled);
                amber_if_any(ui, r.denied);
                ui.end_row();
            }
        },
    );
}

/// The window's events, newest first: what the dashed markers on the charts are.
fn events(ui: &mut Ui, d: &Derived) {
    let w = fmt::window(d.settings.window_secs);
    section(ui, &format!("Events ({w}; dashed markers on the charts)"));
    if d.events.is_empty() {
        super::no_data(
            ui,
            "no breaker, rotation, fault, reload or start events in this window",
        );
        return;
    }
    table(ui, "events", &["when", "event", "what", "sidecar"], |ui| {
        for e in d.events.iter().rev().take(20) {
            ui.label(fmt::ago(d.now, e.time));
            let c = super::palette::of(crate::model::palette::event_meaning(&e.kind, &e.detail))
                .unwrap_or(super::palette::BLUE);
            ui.colored_label(c, e.kind.replace('_', " "));
            ui.label(&e.detail);
            ui.label(&e.source);
            ui.end_row();
        }
    });
}
