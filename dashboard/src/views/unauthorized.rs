//! Unauthorized access: denial rate by reason, who and which keys are denied most, and the
//! latest denied calls straight from the audit log.

use egui::Ui;

use super::{Unit, fmt, no_data, plot, section, table, tile};
use crate::model::Derived;
use crate::model::derive::EndpointState;
use crate::model::sli::Health;

/// Draws the Unauthorized access view.
pub fn show(ui: &mut Ui, d: &Derived) {
    ui.heading("Unauthorized access");
    let w = fmt::window(d.settings.window_secs);
    ui.horizontal_wrapped(|ui| {
        tile(
            ui,
            &format!("Denied calls ({w})"),
            &d.windowed(fmt::count(d.unauthorized)),
            "bad signature, unknown key id, policy",
            match d.unauthorized {
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
        "unauth_reason",
        "Denials per second by reason",
        &d.denials_by_reason,
        Unit::PerSecond,
    );
    ui.columns(2, |cols| {
        top_table(
            &mut cols[0],
            "Top principals",
            "principal",
            &d.top_principals,
        );
        top_table(&mut cols[1], "Top keys", "key", &d.top_keys);
    });
    section(ui, "Latest denied calls (audit log)");
    match &d.audit {
        EndpointState::Ok if d.denied_records.is_empty() => {
            ui.label("The audit log has no denied calls.");
        }
        EndpointState::Ok => {
            table(
                ui,
                "denied",
                &[
                    "time (UTC)",
                    "principal",
                    "operation",
                    "key",
                    "reason",
                    "error",
                    "source",
                    "request id",
                ],
                |ui| {
                    for r in &d.denied_records {
                        ui.label(fmt::time(r.time));
                        ui.label(&r.principal);
                        ui.label(&r.operation);
                        ui.label(short(&r.key_id));
                        ui.label(&r.reason);
                        ui.label(&r.error_type);
                        ui.label(&r.source);
                        ui.label(&r.request_id);
                        ui.end_row();
                    }
                },
            );
        }
        EndpointState::NotServed => {
            ui.label("/v1/audit is not available from this sidecar yet.");
        }
        EndpointState::Unsupported => {
            ui.label("The audit log is not available through Prometheus; use --sidecar to see it.");
        }
        EndpointState::Failed(e) => {
            ui.colored_label(super::ALERT, format!("Could not read the audit log: {e}"));
        }
        EndpointState::Waiting => no_data(ui, "waiting for the first answer"),
    }
}

fn top_table(ui: &mut Ui, title: &str, what: &str, rows: &[(String, f64)]) {
    section(ui, title);
    if rows.is_empty() {
        no_data(ui, "no denials counted");
        return;
    }
    table(ui, title, &[what, "denied"], |ui| {
        for (k, n) in rows {
            ui.label(short(k));
            ui.label(fmt::count(Some(*n)));
            ui.end_row();
        }
    });
}

/// Key ids are long; the first 8 characters identify one in practice.
fn short(id: &str) -> String {
    if id.len() > 13 && id.is_char_boundary(8) {
        format!("{}…", &id[..8])
    } else {
        id.to_string()
    }
}
