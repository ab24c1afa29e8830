//! The fleet table above every view when several sidecars (or a Prometheus with several
//! instances) are read: one row per sidecar, worst first. Clicking a sidecar scopes every view to
//! it; clicking it again (or "whole fleet") goes back to the fleet's sums.

use egui::{RichText, Ui};

use super::{color, fmt, section, table};
use crate::model::fleet::FleetRow;
use crate::model::sli::Health;

/// What a click asked for.
#[derive(Clone, Debug, PartialEq)]
pub enum Click {
    /// Show one sidecar only.
    Scope(String),
    /// Show the whole fleet again.
    Fleet,
}

/// Draws the fleet table; returns the click, if any.
pub fn show(ui: &mut Ui, rows: &[FleetRow], scope: Option<&str>, window: f64) -> Option<Click> {
    let mut click = None;
    section(
        ui,
        &format!(
            "Fleet ({}, worst first; click a sidecar to scope every view to it)",
            fmt::window(window)
        ),
    );
    if let Some(s) = scope {
        ui.horizontal(|ui| {
            ui.label(RichText::new(format!("Scoped to {s}")).strong());
            if ui.button("whole fleet").clicked() {
                click = Some(Click::Fleet);
            }
        });
    }
    table(
        ui,
        "fleet",
        &[
            "sidecar",
            "availability",
            "p99",
            "throttled",
            "breaker",
            "overdue keys",
            "version",
        ],
        |ui| {
            for r in rows {
                let selected = scope == Some(r.source.as_str());
                let name = RichText::new(&r.source).color(color(r.health));
                if ui.selectable_label(selected, name).clicked() {
                    click = Some(if selected {
                        Click::Fleet
                    } else {
                        Click::Scope(r.source.clone())
                    });
                }
                if r.reachable {
                    ui.label(fmt::pct(r.availability, 3));
                } else {
                    ui.colored_label(color(Health::Bad), "unreachable");
                }
                ui.label(fmt::secs(r.p99));
                ui.label(fmt::pct(r.throttled_share, 1));
                ui.colored_label(
                    r.breaker
                        .map_or(color(Health::Unknown), |c| color(c.health())),
                    r.breaker.map_or(fmt::NO_DATA, |c| c.label()),
                );
                ui.label(
                    r.overdue_keys
                        .map_or(fmt::NO_DATA.to_string(), |n| n.to_string()),
                );
                ui.label(r.version.as_deref().unwrap_or("—"));
                ui.end_row();
            }
        },
    );
    click
}
