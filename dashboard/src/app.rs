//! The window around the views: tabs, window and refresh selectors, the unreachable-source
//! banner, and the cache that recomputes the derived numbers only when the data, the settings
//! or the clock (by a second) changed. `show` takes "now", so UI tests run on a fixed clock.

use std::path::PathBuf;
use std::sync::Arc;

use egui::{RichText, Ui};

use crate::model::{Derived, Settings, SourceHealth};
use crate::source::{FetchSettings, Shared};
use crate::views::{View, fmt};

/// Selectable windows (5 min .. 24 h).
pub const WINDOWS: [f64; 6] = [300.0, 900.0, 3600.0, 6.0 * 3600.0, 12.0 * 3600.0, 86_400.0];
/// Selectable refresh intervals in seconds.
pub const REFRESH: [f64; 6] = [1.0, 2.0, 5.0, 10.0, 30.0, 60.0];

/// The sidecar (fleet row) and the front-end the views are scoped to.
type Scopes = (Option<String>, Option<String>);

/// Taking one screenshot and exiting (`--screenshot`).
#[derive(Debug)]
pub struct ScreenshotPlan {
    pub path: PathBuf,
    /// Frames to draw after data arrived, so layout and plots settle.
    pub settle_frames: u32,
    /// Successful scrapes to wait for, so rates and plots have points.
    pub min_scrapes: u64,
    requested: bool,
    done: Arc<std::sync::atomic::AtomicBool>,
}

impl ScreenshotPlan {
    /// A plan to save the window to `path`.
    pub fn new(path: PathBuf, min_scrapes: u64) -> Self {
        Self {
            path,
            min_scrapes,
            settle_frames: 5,
            requested: false,
            done: Arc::default(),
        }
    }
}

/// The application state.
#[derive(Debug)]
pub struct DashboardApp {
    shared: Arc<Shared>,
    /// The view on screen.
    pub view: View,
    settings: Settings,
    refresh_secs: f64,
    description: String,
    /// Data version, settings, time, sidecar scope and front-end scope of `Derived`.
    cached: Option<(u64, Settings, f64, Scopes, Derived)>,
    /// One row per sidecar when there are several (the fleet table).
    fleet: Vec<crate::model::fleet::FleetRow>,
    /// The sidecar every view is scoped to (clicked in the fleet table); `None`: the whole fleet.
    pub scope: Option<String>,
    /// The front-end every view is scoped to (the "Front-end" selector); `None`: all of them.
    pub frontend: Option<String>,
    /// The front-ends seen in the data, for the selector.
    frontends: Vec<String>,
    sources: Vec<(String, SourceHealth)>,
    /// Set when the window should save a screenshot and close.
    pub screenshot: Option<ScreenshotPlan>,
    /// Time spent computing the derived numbers last time (for the frame-time bench).
    pub last_derive_secs: f64,
    /// A frozen clock for the window (fixture layout screenshots); `None` reads the real one.
    pub fixed_now: Option<f64>,
}

impl DashboardApp {
    /// A dashboard reading `shared`; `description` names the sources in the title bar.
    pub fn new(
        shared: Arc<Shared>,
        settings: Settings,
        refresh_secs: f64,
        description: String,
    ) -> Self {
        Self {
            shared,
            view: View::Overview,
            settings,
            refresh_secs,
            description,
            cached: None,
            fleet: Vec::new(),
            scope: None,
            frontend: None,
            frontends: Vec::new(),
            sources: Vec::new(),
            screenshot: None,
            last_derive_secs: 0.0,
            fixed_now: None,
        }
    }

    fn derived(&mut self, now: f64) -> Derived {
        let model = self.shared.model();
        let scopes = (self.scope.clone(), self.frontend.clone());
        let fresh = match &self.cached {
            Some((v, s, t, sc, _)) => {
                *v == model.version
                    && *s == self.settings
                    && now >= *t
                    && now - *t < 1.0
                    && *sc == scopes
            }
            None => false,
        };
        if !fresh {
            let started = std::time::Instant::now();
            let scoped = self.scope.as_deref().and_then(|s| model.scoped(s));
            if scoped.is_none() {
                self.scope = None;
            }
            let one = scoped.as_ref().unwrap_or(&model);
            self.frontends = crate::model::frontend::frontends_seen(one);
            if self
                .frontend
                .as_ref()
                .is_some_and(|f| !self.frontends.contains(f))
            {
                self.frontend = None;
            }
            let by_frontend = self.frontend.as_deref().map(|f| one.for_frontend(f));
            let d = Derived::compute(by_frontend.as_ref().unwrap_or(one), self.settings, now);
            self.fleet = if model.per_source.len() > 1 {
                crate::model::fleet::rows(&model, self.settings.window_secs, self.settings.slo, now)
            } else {
                Vec::new()
            };
            self.last_derive_secs = started.elapsed().as_secs_f64();
            let scopes = (self.scope.clone(), self.frontend.clone());
            self.cached = Some((model.version, self.settings, now, scopes, d));
            self.sources = model
                .sources
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
        }
        drop(model);
        match &self.cached {
            Some((_, _, _, _, d)) => d.clone(),
            None => Derived::compute(&crate::model::Model::default(), self.settings, now),
        }
    }

    /// Draws one frame at time `now` (Unix seconds).
    pub fn show(&mut self, ui: &mut Ui, now: f64) {
        let d = self.derived(now);
        egui::Panel::top("top").show(ui, |ui| {
            ui.add_space(4.0);
            ui.horizontal(|ui| {
                ui.label(RichText::new("kms-sidecar dashboard").strong().size(16.0));
                ui.label(RichText::new(&self.description).weak());
            });
            ui.horizontal_wrapped(|ui| {
                for v in View::ALL {
                    if ui.selectable_label(self.view == v, v.tab()).clicked() {
                        self.view = v;
                    }
                }
                ui.separator();
                self.selectors(ui);
            });
            ui.add_space(2.0);
        });
        let failing: Vec<(String, SourceHealth)> = self
            .sources
            .iter()
            .filter(|(_, h)| h.error.is_some())
            .cloned()
            .collect();
        if !failing.is_empty() {
            egui::Panel::top("banner")
                .frame(
                    egui::Frame::new()
                        .fill(egui::Color32::from_rgb(0x5a, 0x16, 0x16))
                        .inner_margin(egui::Margin::same(6)),
                )
                .show(ui, |ui| {
                    for (url, h) in &failing {
                        let last = h.last_ok.map_or("never".to_string(), |t| {
                            format!("{} UTC ({})", fmt::time(t), fmt::ago(now, t))
                        });
                        ui.label(
                            RichText::new(format!(
                                "Source unreachable: {url} — {} — last good scrape: {last}",
                                h.error.as_deref().unwrap_or("")
                            ))
                            .color(egui::Color32::WHITE),
                        );
                    }
                });
        }
        egui::CentralPanel::default().show(ui, |ui| {
            egui::ScrollArea::vertical()
                .auto_shrink([false, false])
                .show(ui, |ui| {
                    if self.sources.iter().all(|(_, h)| h.last_attempt.is_none())
                        && !self.sources.is_empty()
                    {
                        ui.label(RichText::new("Waiting for the first scrape…").weak());
                    }
                    if !self.fleet.is_empty() {
                        let window = self.settings.window_secs;
                        match crate::views::fleet::show(
                            ui,
                            &self.fleet,
                            self.scope.as_deref(),
                            window,
                        ) {
                            Some(crate::views::fleet::Click::Scope(s)) => self.scope = Some(s),
                            Some(crate::views::fleet::Click::Fleet) => self.scope = None,
                            None => {}
                        }
                        ui.separator();
                    }
                    if let Some(fe) = &d.frontend {
                        ui.label(
                            RichText::new(format!(
                                "Front-end {fe}: requests, availability, latency and denials are \
                                 {fe}'s (throttled calls: its ThrottlingException answers). Rate \
                                 limiters, caches, backends, keys and audit records are shared by \
                                 every front-end and shown whole."
                            ))
                            .color(crate::views::palette::BLUE),
                        );
                    }
                    self.view.show(ui, &d);
                    ui.add_space(12.0);
                    ui.label(
                        RichText::new(format!(
                            "Data as of {} UTC · window {} · SLO {}",
                            fmt::time(now),
                            fmt::window(self.settings.window_secs),
                            fmt::pct(Some(self.settings.slo), 2),
                        ))
                        .small()
                        .weak(),
                    );
                });
        });
    }

    fn selectors(&mut self, ui: &mut Ui) {
        let before = (self.settings.window_secs, self.refresh_secs);
        egui::ComboBox::from_label("Window")
            .selected_text(fmt::window(self.settings.window_secs))
            .show_ui(ui, |ui| {
                for w in WINDOWS {
                    ui.selectable_value(&mut self.settings.window_secs, w, fmt::window(w));
                }
            });
        egui::ComboBox::from_label("Refresh")
            .selected_text(format!("{:.0} s", self.refresh_secs))
            .show_ui(ui, |ui| {
                for r in REFRESH {
                    ui.selectable_value(&mut self.refresh_secs, r, format!("{r:.0} s"));
                }
            });
        if !self.frontends.is_empty() || self.frontend.is_some() {
            egui::ComboBox::from_label("Front-end")
                .selected_text(self.frontend.as_deref().unwrap_or("All"))
                .show_ui(ui, |ui| {
                    ui.selectable_value(&mut self.frontend, None, "All");
                    for f in &self.frontends {
                        ui.selectable_value(&mut self.frontend, Some(f.clone()), f.as_str());
                    }
                });
        }
        if before != (self.settings.window_secs, self.refresh_secs) {
            self.shared.set_settings(FetchSettings {
                interval_secs: self.refresh_secs,
                window_secs: self.settings.window_secs,
            });
        }
    }

    /// Screenshot bookkeeping for one frame: requests a screenshot once data is in and the
    /// layout settled; the callback saves it; the next frame closes the window.
    fn screenshot_step(&mut self, ctx: &egui::Context) {
        let scrapes: u64 = self.sources.iter().map(|(_, h)| h.scrapes).sum();
        let all_failing =
            !self.sources.is_empty() && self.sources.iter().all(|(_, h)| h.error.is_some());
        let Some(plan) = self.screenshot.as_mut() else {
            return;
        };
        let has_data = scrapes >= plan.min_scrapes || all_failing;
        if plan.done.load(std::sync::atomic::Ordering::Acquire) {
            ctx.send_viewport_cmd(egui::ViewportCommand::Close);
            return;
        }
        if !has_data {
            ctx.request_repaint_after(std::time::Duration::from_millis(100));
            return;
        }
        if plan.settle_frames > 0 {
            plan.settle_frames -= 1;
            ctx.request_repaint();
        } else if !plan.requested {
            plan.requested = true;
            let (path, done, repaint) = (plan.path.clone(), plan.done.clone(), ctx.clone());
            ctx.request_screenshot(move |image| {
                match save_png(&path, &image) {
                    Ok(()) => eprintln!("kms-dashboard: saved {}", path.display()),
                    Err(e) => eprintln!("kms-dashboard: screenshot failed: {e}"),
                }
                done.store(true, std::sync::atomic::Ordering::Release);
                repaint.request_repaint();
            });
        } else {
            ctx.request_repaint_after(std::time::Duration::from_millis(50));
        }
    }
}

/// Writes an egui image as an RGBA PNG.
pub fn save_png(path: &std::path::Path, image: &egui::ColorImage) -> Result<(), String> {
    let file = std::fs::File::create(path).map_err(|e| e.to_string())?;
    let [w, h] = image.size;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), w as u32, h as u32);
    enc.set_color(png::ColorType::Rgba);
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc.write_header().map_err(|e| e.to_string())?;
    let bytes: Vec<u8> = image.pixels.iter().flat_map(|c| c.to_array()).collect();
    writer.write_image_data(&bytes).map_err(|e| e.to_string())?;
    writer.finish().map_err(|e| e.to_string())
}

impl eframe::App for DashboardApp {
    fn ui(&mut self, ui: &mut Ui, _frame: &mut eframe::Frame) {
        self.show(ui, self.fixed_now.unwrap_or_else(crate::source::unix_now));
        let ctx = ui.ctx().clone();
        self.screenshot_step(&ctx);
        // keep "n s ago" and the moving window current even without new data
        ctx.request_repaint_after(std::time::Duration::from_secs(1));
    }
}
