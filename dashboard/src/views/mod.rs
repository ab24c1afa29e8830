//! The six views and the widgets they share. A view gets a [`Derived`] (and the source health)
//! and draws it: no fetching, no arithmetic beyond formatting.

pub mod cache_backend;
pub mod fleet;
pub mod fmt;
pub mod latency;
pub mod overview;
pub mod palette;
pub mod rotation;
pub mod throttling;
pub mod unauthorized;

use egui::{Color32, RichText, Ui};
use egui_plot::{Legend, Plot, PlotPoints};

use crate::model::Derived;
use crate::model::query::Line;
use crate::model::sli::Health;

/// The views, in tab order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    Overview,
    Latency,
    Throttling,
    Unauthorized,
    Rotation,
    CacheBackend,
}

impl View {
    /// All views in tab order.
    pub const ALL: [View; 6] = [
        View::Overview,
        View::Latency,
        View::Throttling,
        View::Unauthorized,
        View::Rotation,
        View::CacheBackend,
    ];

    /// Tab label (what tests click).
    pub fn tab(self) -> &'static str {
        match self {
            View::Overview => "Overview",
            View::Latency => "Latency",
            View::Throttling => "Throttling",
            View::Unauthorized => "Unauthorized",
            View::Rotation => "Rotation",
            View::CacheBackend => "Cache & backend",
        }
    }

    /// Short name for `--view` and screenshot files.
    pub fn slug(self) -> &'static str {
        match self {
            View::Overview => "overview",
            View::Latency => "latency",
            View::Throttling => "throttling",
            View::Unauthorized => "unauthorized",
            View::Rotation => "rotation",
            View::CacheBackend => "cache-backend",
        }
    }

    /// Parses a slug.
    pub fn from_slug(s: &str) -> Option<View> {
        View::ALL.into_iter().find(|v| v.slug() == s)
    }

    /// Draws this view.
    pub fn show(self, ui: &mut Ui, d: &Derived) {
        match self {
            View::Overview => overview::show(ui, d),
            View::Latency => latency::show(ui, d),
            View::Throttling => throttling::show(ui, d),
            View::Unauthorized => unauthorized::show(ui, d),
            View::Rotation => rotation::show(ui, d),
            View::CacheBackend => cache_backend::show(ui, d),
        }
    }
}

/// Traffic-light colours, readable on the dark theme.
pub fn color(h: Health) -> Color32 {
    palette::health(h)
}

/// Red for problems in tables.
pub const ALERT: Color32 = palette::RED;

/// Outer width of a tile; fixed so a row of tiles wraps instead of widening the page.
const TILE_W: f32 = 210.0;

/// A small card: title, big value, optional note; its border carries the health colour.
pub fn tile(ui: &mut Ui, title: &str, value: &str, note: &str, health: Health) {
    // a known size lets the wrapping layout move the tile to the next row before drawing it
    ui.allocate_ui(egui::vec2(TILE_W, 74.0), |ui| {
        egui::Frame::group(ui.style())
            .stroke(egui::Stroke::new(2.0, color(health)))
            .inner_margin(egui::Margin::same(8))
            .show(ui, |ui| {
                let inner = TILE_W - 20.0;
                ui.set_min_size(egui::vec2(inner, 56.0));
                ui.set_max_width(inner);
                ui.vertical(|ui| {
                    ui.label(RichText::new(title).small());
                    ui.label(
                        RichText::new(value)
                            .size(19.0)
                            .strong()
                            .color(color(health)),
                    );
                    if !note.is_empty() {
                        ui.label(RichText::new(note).small().weak());
                    }
                });
            });
    });
}

/// A section heading inside a view.
pub fn section(ui: &mut Ui, title: &str) {
    ui.add_space(8.0);
    ui.label(RichText::new(title).strong().size(15.0));
}

/// The placeholder for missing data.
pub fn no_data(ui: &mut Ui, why: &str) {
    ui.label(
        RichText::new(format!("{} — {why}", fmt::NO_DATA))
            .weak()
            .italics(),
    );
}

/// Value format of a plot's y axis.
#[derive(Clone, Copy, Debug)]
pub enum Unit {
    PerSecond,
    Seconds,
    Ratio,
    Count,
}

fn y_fmt(unit: Unit, v: f64) -> String {
    match unit {
        Unit::PerSecond => format!("{v:.2}/s"),
        Unit::Seconds => fmt::secs(Some(v)),
        Unit::Ratio => format!("{:.0} %", v * 100.0),
        Unit::Count => format!("{v:.0}"),
    }
}

/// The 1, 2 or 5 times a power of ten nearest above `x`.
fn nice_step(x: f64) -> f64 {
    if !x.is_finite() || x <= 0.0 {
        return 1.0;
    }
    let p = 10f64.powf(x.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * p)
        .find(|s| *s >= x)
        .unwrap_or(10.0 * p)
}

/// A readable time step for the x axis: about `x` seconds, rounded to 1, 2, 5, 10, 15, 30 s,
/// 1, 2, 5, 10, 15, 30 min, 1, 2, 3, 6, 12 h.
fn time_step(x: f64) -> f64 {
    const STEPS: [f64; 17] = [
        1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0,
        10_800.0, 21_600.0, 43_200.0,
    ];
    STEPS.into_iter().find(|s| *s >= x).unwrap_or(86_400.0)
}

/// The x axis label at `x` seconds from now: relative time, nothing right of "now".
pub fn x_label(x: f64) -> String {
    if x > 0.5 { String::new() } else { fmt::rel(x) }
}

/// A time-series plot over the whole window (x from -window to now and a sliver beyond, so the
/// "now" label fits, so a chart never pretends
/// its data spans more than it does), lines in their semantic colours, and the window's events
/// as vertical markers; "no data yet" instead of an empty frame.
pub fn plot(ui: &mut Ui, d: &Derived, id: &str, title: &str, lines: &[Line], unit: Unit) {
    section(ui, title);
    if lines.iter().all(|l| l.points.is_empty()) {
        no_data(ui, "nothing to plot in this window");
        return;
    }
    let window = d.settings.window_secs;
    // y from 0 to just above the highest point (a flat zero line gets 0..1, never negative rates)
    let top = lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p[1]))
        .filter(|v| v.is_finite())
        .fold(0.0_f64, f64::max);
    let top = if top > 0.0 { top * 1.1 } else { 1.0 };
    // egui_plot remembers a plot's bounds from its first frame: keyed by the window and the
    // scale's power of two, a plot first drawn with part of the data (one sidecar of a fleet,
    // before the other's history arrived) is laid out again when the data outgrows it
    let scale = top.log2().ceil() as i64;
    Plot::new((id, window.to_bits(), scale))
        .height(170.0)
        .legend(Legend::default())
        .default_x_bounds(-window, window * 0.015)
        .default_y_bounds(0.0, top)
        .allow_scroll(false)
        .x_axis_formatter(|m, _| x_label(m.value))
        .x_grid_spacer(egui_plot::uniform_grid_spacer(|input| {
            let s = time_step((input.bounds.1 - input.bounds.0).abs() / 5.0);
            [s, s * 5.0, s * 10.0]
        }))
        .y_axis_formatter(move |m, _| y_fmt(unit, m.value))
        // about four labelled lines whatever the scale (the default spacer labels only powers
        // of ten, so a 0..0.8 ratio or a 0.05/s rate showed no label but zero)
        .y_grid_spacer(egui_plot::uniform_grid_spacer(|input| {
            let s = nice_step((input.bounds.1 - input.bounds.0).abs() / 4.0);
            [s / 5.0, s, s * 5.0]
        }))
        .label_formatter(move |hp| match hp {
            egui_plot::HoverPosition::NearDataPoint {
                plot_name,
                position,
                ..
            } => Some(format!(
                "{plot_name}\n{}: {}",
                fmt::rel(position.x),
                y_fmt(unit, position.y)
            )),
            egui_plot::HoverPosition::Elsewhere { .. } => None,
        })
        .show(ui, |p| {
            let mut neutral = 0;
            for l in lines {
                let meaning = crate::model::palette::meaning(&l.name);
                let color = palette::line(&l.name, neutral);
                if meaning == crate::model::palette::Meaning::Neutral {
                    neutral += 1;
                }
                p.line(
                    egui_plot::Line::new(l.name.clone(), PlotPoints::from(l.points.clone()))
                        .color(color),
                );
            }
            for e in &d.events {
                let c = palette::of(crate::model::palette::event_meaning(&e.kind, &e.detail))
                    .unwrap_or(palette::BLUE);
                p.vline(
                    egui_plot::VLine::new(
                        crate::model::palette::event_legend(&e.kind, &e.detail),
                        e.x,
                    )
                    .color(c)
                    .style(egui_plot::LineStyle::dashed_dense()),
                );
            }
        });
}

/// A striped grid with a bold header row.
pub fn table(ui: &mut Ui, id: &str, header: &[&str], rows: impl FnOnce(&mut Ui)) {
    egui::Grid::new(id)
        .striped(true)
        .num_columns(header.len())
        .spacing([18.0, 4.0])
        .show(ui, |ui| {
            for h in header {
                ui.label(RichText::new(*h).strong());
            }
            ui.end_row();
            rows(ui);
        });
}
