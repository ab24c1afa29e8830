//! Opens the dashboard on the synthetic fixture (the whole metrics contract, 50 keys, 1 h) with a
//! frozen clock, to review the layout of views that today's sidecar cannot fill yet. Never
//! connects anywhere. `--screenshot PATH --view SLUG` saves one frame and exits (under xvfb-run).
#![forbid(unsafe_code)]

use kms_dashboard::app::{DashboardApp, ScreenshotPlan};
use kms_dashboard::fixture::{self, NOW};
use kms_dashboard::model::Settings;
use kms_dashboard::source::{FetchSettings, Shared};
use kms_dashboard::views::View;

fn main() -> eframe::Result {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let shared = Shared::new(
        fixture::model(50, 3600.0, 10.0),
        FetchSettings {
            interval_secs: 10.0,
            window_secs: 3600.0,
        },
    );
    let mut app = DashboardApp::new(
        shared,
        Settings::default(),
        10.0,
        "FIXTURE DATA (layout review)".into(),
    );
    app.fixed_now = Some(NOW);
    app.view = arg("--view")
        .and_then(|v| View::from_slug(&v))
        .unwrap_or(View::Overview);
    app.screenshot = arg("--screenshot").map(|p| ScreenshotPlan::new(p.into(), 0));
    eframe::run_native(
        "kms-dashboard-fixture",
        eframe::NativeOptions {
            viewport: egui::ViewportBuilder::default().with_inner_size([1280.0, 960.0]),
            ..Default::default()
        },
        Box::new(move |_| Ok(Box::new(app))),
    )
}
