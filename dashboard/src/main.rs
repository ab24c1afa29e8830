//! `kms-dashboard`: parses the command line, starts the fetch threads and opens the window.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;
use kms_dashboard::app::DashboardApp;
use kms_dashboard::model::{Model, ModelConfig, Settings};
use kms_dashboard::source::{self, FetchSettings, Shared, Sources};
use kms_dashboard::views::View;

/// Desktop dashboard for kms-sidecar: SLIs, latency, throttling, unauthorized access, rotation
/// compliance, cache and backend.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Sidecar admin endpoint to scrape (repeatable). Default: http://127.0.0.1:7301.
    #[arg(long = "sidecar", value_name = "URL", conflicts_with = "prometheus")]
    sidecars: Vec<String>,
    /// Read the fleet from a Prometheus server's HTTP API instead (e.g. http://127.0.0.1:9090).
    #[arg(long, value_name = "URL")]
    prometheus: Option<String>,
    /// Availability objective in percent.
    #[arg(long, default_value_t = 99.9, value_parser = parse_slo)]
    slo: f64,
    /// p95 latency target in milliseconds (amber above it, red above twice it).
    #[arg(long, default_value_t = 25.0)]
    p95_target_ms: f64,
    /// Initial time window in minutes (5 .. 1440).
    #[arg(long, default_value_t = 60.0, value_parser = parse_window)]
    window_minutes: f64,
    /// Initial refresh interval in seconds.
    #[arg(long, default_value_t = 2.0)]
    refresh_secs: f64,
    /// View shown first: overview, latency, throttling, unauthorized, rotation, cache-backend.
    #[arg(long, default_value = "overview", value_parser = parse_view)]
    view: View,
    /// Render the window once data arrived, save it as PNG and exit (needs a display; use
    /// xvfb-run on a headless machine).
    #[arg(long, value_name = "PATH")]
    screenshot: Option<PathBuf>,
    /// With --screenshot: successful scrapes to wait for before taking it.
    #[arg(long, default_value_t = 3)]
    screenshot_scrapes: u64,
    /// File holding the sidecars' admin bearer token (KMS_SIDECAR_ADMIN_TOKEN gives the token
    /// itself), for sidecars started with an admin token.
    #[arg(long, value_name = "PATH")]
    admin_token_file: Option<PathBuf>,
    /// Window size as WIDTHxHEIGHT.
    #[arg(long, default_value = "1280x900", value_parser = parse_size)]
    size: (f32, f32),
}

fn parse_slo(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("not a number: {s}"))?;
    if (50.0..100.0).contains(&v) {
        Ok(v)
    } else {
        Err("the SLO must be at least 50 and below 100 (percent)".into())
    }
}

fn parse_window(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("not a number: {s}"))?;
    if (5.0..=1440.0).contains(&v) {
        Ok(v)
    } else {
        Err("the window must be 5 .. 1440 minutes".into())
    }
}

fn parse_view(s: &str) -> Result<View, String> {
    View::from_slug(s).ok_or_else(|| format!("unknown view {s}"))
}

fn parse_size(s: &str) -> Result<(f32, f32), String> {
    let (w, h) = s.split_once('x').ok_or("expected WIDTHxHEIGHT")?;
    let p = |v: &str| v.parse::<f32>().map_err(|_| format!("bad size {s}"));
    Ok((p(w)?, p(h)?))
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let sources = match cli.prometheus.clone() {
        Some(url) => Sources::Prometheus(url),
        None if cli.sidecars.is_empty() => Sources::Sidecars(vec!["http://127.0.0.1:7301".into()]),
        None => Sources::Sidecars(cli.sidecars.clone()),
    };
    let admin_token = match (
        &cli.admin_token_file,
        std::env::var("KMS_SIDECAR_ADMIN_TOKEN"),
    ) {
        (Some(path), _) => match std::fs::read_to_string(path) {
            Ok(t) => Some(t.trim().to_string()),
            Err(e) => {
                eprintln!("kms-dashboard: cannot read {}: {e}", path.display());
                return std::process::ExitCode::FAILURE;
            }
        },
        (None, Ok(t)) => Some(t.trim().to_string()),
        (None, Err(_)) => None,
    };
    let description = match &sources {
        Sources::Sidecars(u) => format!("sidecar: {}", u.join(", ")),
        Sources::Prometheus(u) => format!("Prometheus: {u}"),
    };
    let settings = Settings {
        window_secs: cli.window_minutes * 60.0,
        slo: cli.slo / 100.0,
        p95_target_secs: cli.p95_target_ms / 1000.0,
    };
    let shared = Shared::new(
        Model::new(ModelConfig::default()),
        FetchSettings {
            interval_secs: cli.refresh_secs,
            window_secs: settings.window_secs,
        },
    );
    let options = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_title("kms-sidecar dashboard")
            .with_inner_size([cli.size.0, cli.size.1]),
        ..Default::default()
    };
    let run = eframe::run_native(
        "kms-dashboard",
        options,
        Box::new(move |cc| {
            let ctx = cc.egui_ctx.clone();
            source::spawn(
                &sources,
                &shared,
                admin_token.as_deref(),
                Arc::new(move || ctx.request_repaint()),
            );
            let mut app = DashboardApp::new(shared, settings, cli.refresh_secs, description);
            app.view = cli.view;
            app.screenshot = cli
                .screenshot
                .map(|p| kms_dashboard::app::ScreenshotPlan::new(p, cli.screenshot_scrapes));
            Ok(Box::new(app))
        }),
    );
    match run {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kms-dashboard: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
