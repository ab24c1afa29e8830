//! Throttling: who is being throttled, at which scope, and how close traffic runs to each
//! configured limit (headroom), including the outbound budget towards the backend.

use egui::{RichText, Ui};

use super::{Unit, fmt, no_data, plot, section, table, tile};
use crate::model::Derived;
use crate::model::derive::Bound;
use crate::model::sli::Health;

/// Draws the Throttling view.
pub fn show(ui: &mut Ui, d: &Derived) {
    ui.heading("Throttling");
    let w = fmt::window(d.settings.window_secs);
    ui.horizontal_wrapped(|ui| {
        tile(
            ui,
            &format!("Throttled calls ({w})"),
            &d.windowed(fmt::count(d.throttled)),
            "ThrottlingException answers",
            match d.throttled {
                _ if d.short => Health::Unknown,
                None => Health::Unknown,
                Some(0.0) => Health::Good,
                Some(_) => Health::Warn,
            },
        );
    });
    plot(
        ui,
        d,
        "thr_scope",
        "Throttled per second by scope",
        &d.throttled_by_scope,
        Unit::PerSecond,
    );
    plot(
        ui,
        d,
        "thr_principal",
        "Throttled per second by principal",
        &d.throttled_by_principal,
        Unit::PerSecond,
    );
    section(ui, &format!("Throttled by scope and principal, last {w}"));
    if d.throttle_rows.is_empty() {
        no_data(ui, "kms_sidecar_throttled_total not exported yet");
    } else {
        table(
            ui,
            "thr_rows",
            &["scope", "principal", "throttled", "per second"],
            |ui| {
                for r in &d.throttle_rows {
                    ui.label(&r.scope);
                    ui.label(&r.principal);
                    ui.label(fmt::count(Some(r.count)));
                    ui.label(fmt::rate(Some(r.per_second)));
                    ui.end_row();
                }
            },
        );
    }
    section(
        ui,
        "Configured limits and headroom (observed over the last minute; a principal's rate is \
         what it asked for: admitted + throttled calls; ≥ / ≤ marks a bound from a sidecar \
         that does not count admitted calls)",
    );
    if d.limits.is_empty() {
        no_data(
            ui,
            "no limits exported (rate_limit_per_second or /v1/status)",
        );
        return;
    }
    let peak_title = format!("busiest minute ({w})");
    table(
        ui,
        "limits",
        &[
            "scope",
            "name",
            "limit",
            "burst",
            "observed",
            "headroom",
            "use of the limit",
            peak_title.as_str(),
        ],
        |ui| {
            for l in &d.limits {
                ui.label(&l.scope);
                ui.label(&l.name);
                ui.label(fmt::rate(Some(l.rate_per_second)));
                ui.label(l.burst.map_or("—".into(), |b| fmt::count(Some(b))));
                let (obs, head) = match l.bound {
                    Bound::Exact => ("", ""),
                    Bound::AtLeast => ("≥ ", "≤ "),
                    Bound::AtMost => ("≤ ", "≥ "),
                };
                let who = l
                    .principal
                    .as_ref()
                    .filter(|p| **p != l.name)
                    .map_or(String::new(), |p| format!(" ({p})"));
                ui.label(l.observed.map_or("not measured".into(), |o| {
                    format!("{obs}{}{who}", fmt::rate(Some(o)))
                }));
                let health = headroom_health(l.headroom);
                match l.headroom {
                    Some(h) => {
                        ui.label(
                            RichText::new(format!("{head}{}", fmt::pct(Some(h), 0)))
                                .color(super::color(health)),
                        );
                    }
                    None => {
                        ui.label("—");
                    }
                }
                match l.observed.filter(|_| l.rate_per_second > 0.0) {
                    Some(o) => {
                        let used = (o / l.rate_per_second) as f32;
                        ui.add(
                            egui::ProgressBar::new(used.clamp(0.0, 1.0))
                                .desired_width(140.0)
                                .fill(super::color(health))
                                .text(format!("{:.0} %", used * 100.0)),
                        );
                    }
                    None => {
                        ui.label("—");
                    }
                }
                match l.peak.filter(|_| l.rate_per_second > 0.0) {
                    Some(p) => {
                        let head = 1.0 - p / l.rate_per_second;
                        ui.label(
                            RichText::new(format!(
                                "{} ({} headroom)",
                                fmt::rate(Some(p)),
                                fmt::pct(Some(head), 0)
                            ))
                            .color(super::color(headroom_health(Some(head)))),
                        );
                    }
                    None => {
                        ui.label("—");
                    }
                }
                ui.end_row();
            }
        },
    );
}

/// Green, amber under 20 % headroom, red over the limit.
fn headroom_health(headroom: Option<f64>) -> Health {
    match headroom {
        None => Health::Unknown,
        Some(h) if h < 0.0 => Health::Bad,
        Some(h) if h < 0.2 => Health::Warn,
        Some(_) => Health::Good,
    }
}
