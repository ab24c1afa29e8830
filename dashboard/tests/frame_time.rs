//! Frame-time measurement: 1 h of history (2 s scrapes) for 50 keys over the whole metrics
//! contract, every view drawn and tessellated headless. Prints the numbers; in a release build
//! (`cargo test --release -p kms-dashboard --test frame_time -- --nocapture`) it also asserts
//! the 16 ms budget. Debug builds only check that it runs (they are several times slower).
#![forbid(unsafe_code)]

use std::time::Instant;

use kms_dashboard::app::DashboardApp;
use kms_dashboard::fixture::{self, NOW};
use kms_dashboard::model::{Derived, Settings};
use kms_dashboard::source::{FetchSettings, Shared};
use kms_dashboard::views::View;

fn frame(ctx: &egui::Context, app: &mut DashboardApp, input: egui::RawInput) {
    let mut out = ctx.run_ui(input, |ui| app.show(ui, NOW));
    // no GPU here: the font atlas upload is dropped on purpose
    out.textures_delta.clear();
    let _ = ctx.tessellate(std::mem::take(&mut out.shapes), out.pixels_per_point);
}

#[test]
fn frame_time_with_an_hour_of_history_for_50_keys() {
    let t = Instant::now();
    let model = fixture::model(50, 3600.0, 2.0);
    let build = t.elapsed();
    let series = model.series_count();

    let t = Instant::now();
    let d = Derived::compute(&model, Settings::default(), NOW);
    let derive = t.elapsed();
    assert_eq!(d.rotation_rows.len(), 50);

    let shared = Shared::new(
        model,
        FetchSettings {
            interval_secs: 2.0,
            window_secs: 3600.0,
        },
    );
    let mut app = DashboardApp::new(shared, Settings::default(), 2.0, "bench".into());
    let ctx = egui::Context::default();
    let input = || egui::RawInput {
        screen_rect: Some(egui::Rect::from_min_size(
            egui::Pos2::ZERO,
            egui::vec2(1280.0, 900.0),
        )),
        ..Default::default()
    };
    let mut worst = Vec::new();
    for view in View::ALL {
        app.view = view;
        // warm-up frames (fonts, layout caches), then measure
        for _ in 0..3 {
            frame(&ctx, &mut app, input());
        }
        let n = 20;
        let t = Instant::now();
        for _ in 0..n {
            frame(&ctx, &mut app, input());
        }
        worst.push((view, t.elapsed() / n));
    }
    let release = !cfg!(debug_assertions);
    println!(
        "frame_time ({}): {series} series, model build {build:?}, derive (once per data change) {derive:?}",
        if release { "release" } else { "debug" }
    );
    for (view, ft) in &worst {
        println!(
            "frame_time: {:<16} {:?} per frame (layout + tessellation)",
            view.slug(),
            ft
        );
    }
    if release {
        for (view, ft) in &worst {
            assert!(ft.as_secs_f64() < 0.016, "{view:?} takes {ft:?} per frame");
        }
    }
}
