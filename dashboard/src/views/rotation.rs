//! Rotation compliance: one row per key, non-compliant keys first and in red, and the share of
//! enabled keys that rotate on schedule.

use egui::{Color32, RichText, Ui};
use egui_plot::{Bar, BarChart, Plot};

use super::{ALERT, fmt, no_data, section, table, tile};
use crate::model::Derived;
use crate::model::derive::{EndpointState, RotationSource};
use crate::model::sli::Health;

/// Draws the Rotation compliance view.
pub fn show(ui: &mut Ui, d: &Derived) {
    ui.heading("Rotation compliance");
    let rows = &d.rotation_rows;
    // keys pending deletion or disabled need no rotation: counted as compliance counts them
    let counted = rows.iter().filter(|r| r.counts()).count();
    let non_compliant = rows.iter().filter(|r| r.counts() && !r.compliant()).count();
    ui.horizontal_wrapped(|ui| {
        tile(
            ui,
            "Compliance",
            &fmt::pct(d.compliance, 1),
            "enabled keys rotating on schedule",
            match d.compliance {
                None => Health::Unknown,
                Some(c) if c >= 1.0 => Health::Good,
                Some(_) => Health::Bad,
            },
        );
        tile(
            ui,
            "Overdue keys",
            &d.overdue_keys
                .map_or(fmt::NO_DATA.to_string(), |n| n.to_string()),
            "",
            match d.overdue_keys {
                None => Health::Unknown,
                Some(0) => Health::Good,
                Some(_) => Health::Bad,
            },
        );
        tile(
            ui,
            "Non-compliant",
            &if counted == 0 {
                fmt::NO_DATA.to_string()
            } else {
                format!("{non_compliant} of {counted}")
            },
            "enabled keys overdue or not rotating",
            if counted == 0 {
                Health::Unknown
            } else if non_compliant == 0 {
                Health::Good
            } else {
                Health::Warn
            },
        );
    });
    match d.rotation_source {
        RotationSource::Status => {}
        RotationSource::Metrics => {
            ui.label(
                RichText::new("From the key_rotation_* metrics (versions need /v1/status).").weak(),
            );
        }
        RotationSource::None => {
            let why = match &d.status {
                EndpointState::NotServed => {
                    "/v1/status is not available from this sidecar yet, and it exports no key_rotation_* metrics".to_string()
                }
                EndpointState::Failed(e) => format!("/v1/status failed: {e}"),
                _ => "no key metadata received".to_string(),
            };
            no_data(ui, &why);
            return;
        }
    }
    section(ui, "Days until rotation is due (negative: overdue)");
    let bars: Vec<Bar> = rows
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            let due = r.next_due?;
            let days = (due - d.now) / 86_400.0;
            let c = if days < 0.0 {
                ALERT
            } else {
                Color32::from_rgb(0x4c, 0x8e, 0xda)
            };
            Some(Bar::new(i as f64, days).name(label(r)).fill(c))
        })
        .collect();
    if bars.is_empty() {
        no_data(ui, "no key has a rotation due date");
    } else {
        Plot::new("rotation_due")
            .height(150.0)
            .allow_scroll(false)
            .show_axes([false, true])
            .show(ui, |p| p.bar_chart(BarChart::new("days until due", bars)));
    }
    section(ui, "Keys");
    table(
        ui,
        "rotation_keys",
        &[
            "alias",
            "key id",
            "state",
            "rotation",
            "last rotation",
            "next due",
            "days overdue",
            "versions",
        ],
        |ui| {
            for r in rows {
                let bad = !r.compliant();
                let cell = |ui: &mut Ui, s: String| {
                    let t = RichText::new(s);
                    ui.label(if bad { t.color(ALERT).strong() } else { t });
                };
                cell(
                    ui,
                    if r.alias.is_empty() {
                        "—".into()
                    } else {
                        r.alias.clone()
                    },
                );
                cell(ui, r.key_id.clone());
                cell(
                    ui,
                    if r.state.is_empty() {
                        "—".into()
                    } else {
                        r.state.clone()
                    },
                );
                cell(
                    ui,
                    if r.rotation_enabled {
                        "on".into()
                    } else {
                        "off".into()
                    },
                );
                cell(ui, fmt::date(r.last_rotation));
                cell(ui, fmt::date(r.next_due));
                cell(
                    ui,
                    if r.overdue {
                        format!("{:.0}", r.days_overdue)
                    } else {
                        "—".into()
                    },
                );
                cell(ui, r.versions.map_or("—".into(), |v| v.to_string()));
                ui.end_row();
            }
        },
    );
}

fn label(r: &crate::model::status::RotationRow) -> String {
    if r.alias.is_empty() {
        r.key_id.clone()
    } else {
        r.alias.clone()
    }
}
