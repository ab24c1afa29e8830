//! Fetching, off the UI thread: one thread per sidecar admin endpoint (a dead one never delays
//! the others), or one thread asking a Prometheus server's HTTP API for the fleet. Each thread
//! writes into the shared [`Model`] under a short lock and asks the UI to repaint. Every request
//! has connect and overall timeouts, so a slow source shows up as an error, not a frozen window.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ureq::http::HeaderValue;
use ureq::http::header::AUTHORIZATION;

use crate::model::backfill::HistoryDoc;
use crate::model::prom::{self, Kind, Labels, Sample};
use crate::model::status::{AuditPage, AuditRecord, Status};
use crate::model::{Endpoint, Model, ModelConfig};

/// Where the data comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum Sources {
    /// Sidecar admin base URLs, e.g. `http://127.0.0.1:7301`.
    Sidecars(Vec<String>),
    /// A Prometheus server's base URL.
    Prometheus(String),
}

/// What the fetch threads read on every round; the UI changes it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FetchSettings {
    /// Seconds between scrapes.
    pub interval_secs: f64,
    /// The window the views show (Prometheus fetches at least 6 h for burn rates).
    pub window_secs: f64,
}

/// State shared by the fetch threads and the UI.
#[derive(Debug)]
pub struct Shared {
    model: Mutex<Model>,
    settings: Mutex<FetchSettings>,
    stop: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking fetch thread must not take the window down with it.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    /// Shared state with an empty model.
    pub fn new(model: Model, settings: FetchSettings) -> Arc<Self> {
        Arc::new(Self {
            model: Mutex::new(model),
            settings: Mutex::new(settings),
            stop: AtomicBool::new(false),
        })
    }

    /// The model, locked; keep the guard short.
    pub fn model(&self) -> MutexGuard<'_, Model> {
        lock(&self.model)
    }

    /// Current fetch settings.
    pub fn settings(&self) -> FetchSettings {
        *lock(&self.settings)
    }

    /// Changes the fetch settings; threads pick them up within 100 ms.
    pub fn set_settings(&self, s: FetchSettings) {
        *lock(&self.settings) = s;
    }

    /// Asks the fetch threads to end.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Unix seconds now (only the fetch threads and the app shell read the clock).
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// An HTTP agent with timeouts; non-2xx answers are returned, not errors.
pub fn agent(timeout: Duration) -> ureq::Agent {
    agent_with_token(timeout, None)
}

/// An agent that also sends `Authorization: Bearer <token>` (a sidecar's admin token) on every
/// request. The token is never logged or shown.
pub fn agent_with_token(timeout: Duration, token: Option<&str>) -> ureq::Agent {
    let mut config = ureq::Agent::config_builder()
        .timeout_connect(Some(timeout.min(Duration::from_secs(2))))
        .timeout_global(Some(timeout))
        .http_status_as_error(false);
    if let Some(value) = token.and_then(|t| HeaderValue::from_str(&format!("Bearer {t}")).ok()) {
        config = config.middleware(
            move |mut req: ureq::http::Request<ureq::SendBody>,
                  next: ureq::middleware::MiddlewareNext| {
                req.headers_mut().insert(AUTHORIZATION, value.clone());
                next.handle(req)
            },
        );
    }
    config.build().into()
}

fn get(agent: &ureq::Agent, url: &str) -> Result<(u16, String), String> {
    let mut resp = agent.get(url).call().map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp
        .body_mut()
        .with_config()
        .limit(64 * 1024 * 1024)
        .read_to_string()
        .map_err(|e| e.to_string())?;
    Ok((status, body))
}

fn endpoint<T>(
    agent: &ureq::Agent,
    url: &str,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Endpoint<T> {
    match get(agent, url) {
        Ok((200, body)) => match parse(&body) {
            Ok(v) => Endpoint::Ok(v),
            Err(e) => Endpoint::Failed(format!("{url}: {e}")),
        },
        Ok((404, _)) => Endpoint::NotServed,
        Ok((code, _)) => Endpoint::Failed(format!("{url}: HTTP {code}")),
        Err(e) => Endpoint::Failed(format!("{url}: {e}")),
    }
}

/// One round against a sidecar's admin port.
#[derive(Debug)]
pub struct SidecarScrape {
    pub metrics: Result<Vec<Sample>, String>,
    pub status: Endpoint<Status>,
    pub denied: Endpoint<Vec<AuditRecord>>,
}

/// Scrapes `/metrics`, `/v1/status` and `/v1/audit?outcome=denied` of one sidecar.
pub fn scrape_sidecar(agent: &ureq::Agent, base: &str) -> SidecarScrape {
    let base = base.trim_end_matches('/');
    let metrics = match get(agent, &format!("{base}/metrics")) {
        Ok((200, body)) => prom::parse(&body).map_err(|e| e.to_string()),
        Ok((code, _)) => Err(format!("GET {base}/metrics: HTTP {code}")),
        Err(e) => Err(format!("GET {base}/metrics: {e}")),
    };
    if metrics.is_err() {
        // an unreachable sidecar will not answer the rest either; do not wait twice more
        return SidecarScrape {
            metrics,
            status: Endpoint::Unknown,
            denied: Endpoint::Unknown,
        };
    }
    let status = endpoint(agent, &format!("{base}/v1/status"), |b| {
        serde_json::from_str::<Status>(b).map_err(|e| e.to_string())
    });
    let denied = endpoint(
        agent,
        &format!("{base}/v1/audit?outcome=denied&limit=100"),
        |b| {
            serde_json::from_str::<AuditPage>(b)
                .map(|p| p.records)
                .map_err(|e| e.to_string())
        },
    );
    SidecarScrape {
        metrics,
        status,
        denied,
    }
}

/// Applies one sidecar round to the model at time `t`. Admin documents keep their last good
/// value while the sidecar is down (the banner says so).
pub fn apply_sidecar(model: &mut Model, source: &str, t: f64, scrape: SidecarScrape) {
    match scrape.metrics {
        Ok(samples) => {
            model.ingest(source, t, &samples);
            model.record_attempt(source, t, Ok(()));
            model.status.insert(source.to_string(), scrape.status);
            model.denied.insert(source.to_string(), scrape.denied);
        }
        Err(e) => model.record_attempt(source, t, Err(e)),
    }
}

/// Reads `/v1/history?since=T` of one sidecar: its samples and events after `T` (all of them with
/// `T` = 0). A 404 is an older sidecar without one.
pub fn fetch_history(agent: &ureq::Agent, base: &str, since: f64) -> Endpoint<HistoryDoc> {
    let base = base.trim_end_matches('/');
    endpoint(agent, &format!("{base}/v1/history?since={since}"), |b| {
        serde_json::from_str::<HistoryDoc>(b).map_err(|e| e.to_string())
    })
}

/// Merges a history answer into the model (before that round's scrape, so the scrape comes
/// after it in time) and returns the time to ask from next round.
pub fn apply_history(
    model: &mut Model,
    source: &str,
    since: f64,
    history: Endpoint<HistoryDoc>,
) -> f64 {
    let (state, next) = match history {
        Endpoint::Ok(doc) => {
            let added = model.backfill(source, &doc);
            // a little overlap: a rotation is logged at its version's creation time, found up to
            // one sample later; repeated samples and events are skipped by the merge
            let next = doc.times.last().map_or(since, |t| (t - 30.0).max(since));
            (Endpoint::Ok(added), next)
        }
        Endpoint::Failed(e) => (Endpoint::Failed(e), since),
        other => (
            match other {
                Endpoint::NotServed => Endpoint::NotServed,
                _ => Endpoint::Unknown,
            },
            since,
        ),
    };
    model.history.insert(source.to_string(), state);
    next
}

#[derive(serde::Deserialize)]
struct PromResponse {
    status: String,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    data: Option<PromData>,
}

#[derive(serde::Deserialize)]
struct PromData {
    #[serde(default)]
    result: Vec<PromSeries>,
}

#[derive(serde::Deserialize)]
struct PromSeries {
    metric: BTreeMap<String, String>,
    #[serde(default)]
    values: Vec<(f64, String)>,
    #[serde(default)]
    value: Option<(f64, String)>,
}

/// Points of a Prometheus answer grouped by time, then by source (`job/instance`).
pub type Steps = BTreeMap<u64, BTreeMap<String, Vec<Sample>>>;

/// Adds a `/api/v1/query` or `/api/v1/query_range` JSON answer to `steps`.
pub fn parse_prometheus(body: &str, steps: &mut Steps) -> Result<(), String> {
    let r: PromResponse = serde_json::from_str(body).map_err(|e| format!("bad JSON: {e}"))?;
    if r.status != "success" {
        return Err(r.error.unwrap_or_else(|| "query failed".into()));
    }
    for s in r.data.map(|d| d.result).unwrap_or_default() {
        let mut labels: Labels = s.metric;
        let Some(name) = labels.remove("__name__") else {
            continue;
        };
        let job = labels.remove("job").unwrap_or_default();
        let instance = labels.remove("instance").unwrap_or_default();
        let source = format!("{job}/{instance}");
        let kind: Kind = prom::kind_from_name(&name);
        for (t, v) in s.values.into_iter().chain(s.value) {
            let Some(value) = prom::parse_value(&v) else {
                continue;
            };
            // millisecond keys keep the steps ordered and exact
            let key = (t * 1000.0).round() as u64;
            steps
                .entry(key)
                .or_default()
                .entry(source.clone())
                .or_default()
                .push(Sample {
                    name: name.clone(),
                    labels: labels.clone(),
                    value,
                    kind,
                });
        }
    }
    Ok(())
}

/// Replays Prometheus steps into a fresh model (fleet mode re-reads the whole range each round,
/// so a Prometheus restart or a late scrape can never leave a hole). A source whose first point
/// comes well after `range_start` started inside the range: its counters count from zero (an
/// empty scrape one `step` earlier says so), otherwise a young sidecar's first calls would vanish.
pub fn replay(steps: &Steps, cfg: ModelConfig, range_start: f64, step: f64) -> Model {
    let mut m = Model::new(cfg);
    let mut seen = std::collections::HashSet::new();
    for (t, by_source) in steps {
        let t = *t as f64 / 1000.0;
        for (source, samples) in by_source {
            if seen.insert(source.clone()) && t > range_start + 1.5 * step {
                m.ingest(source, t - step, &[]);
            }
            m.ingest(source, t, samples);
        }
    }
    m
}

fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The selector for every family of the metrics contract.
pub const PROM_SELECTOR: &str = "{__name__=~\"kms_sidecar_.+\"}";

/// Fetches `[now - max(window, 6 h), now]`: the window at a fine step (about 300 points, at
/// least 5 s), the rest of the 6 h that burn rates need at a coarse one, and an instant query for
/// the newest point.
pub fn fetch_prometheus(
    agent: &ureq::Agent,
    base: &str,
    now: f64,
    window_secs: f64,
) -> Result<(Model, f64), String> {
    let base = base.trim_end_matches('/');
    let q = encode(PROM_SELECTOR);
    let mut steps = Steps::new();
    let mut range = |start: f64, end: f64, step: f64| -> Result<(), String> {
        let url =
            format!("{base}/api/v1/query_range?query={q}&start={start}&end={end}&step={step}");
        let (code, body) = get(agent, &url)?;
        if code != 200 && !body.trim_start().starts_with('{') {
            return Err(format!("GET {url}: HTTP {code}"));
        }
        parse_prometheus(&body, &mut steps)
    };
    let fine = (window_secs / 300.0).max(5.0).round();
    let end = (now / fine).floor() * fine;
    let window_start = end - window_secs;
    range(window_start, end, fine)?;
    let burn = 6.0 * 3600.0;
    let mut range_start = window_start;
    if window_secs < burn {
        let coarse = (burn / 360.0).round();
        let cend = (window_start / coarse).floor() * coarse;
        range_start = cend - (burn - window_secs);
        range(range_start, cend, coarse)?;
    }
    let url = format!("{base}/api/v1/query?query={q}&time={now}");
    let (_, body) = get(agent, &url)?;
    parse_prometheus(&body, &mut steps)?;
    let mut m = replay(&steps, ModelConfig::default(), range_start, fine);
    m.interval_secs = fine;
    Ok((m, fine))
}

fn sleep_until_next(shared: &Shared, started: Instant) {
    loop {
        let interval = Duration::from_secs_f64(shared.settings().interval_secs.max(0.2));
        if shared.stop.load(Ordering::Relaxed) || started.elapsed() >= interval {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts the fetch threads; `repaint` is called whenever new data is in the model. `admin_token`
/// is sent to sidecar admin endpoints (never to Prometheus).
pub fn spawn(
    sources: &Sources,
    shared: &Arc<Shared>,
    admin_token: Option<&str>,
    repaint: Arc<dyn Fn() + Send + Sync>,
) {
    match sources {
        Sources::Sidecars(urls) => {
            for url in urls {
                shared.model().add_source(url);
                let (url, shared, repaint) = (url.clone(), shared.clone(), repaint.clone());
                let agent = agent_with_token(Duration::from_secs(3), admin_token);
                std::thread::spawn(move || {
                    // history first (the hours before the dashboard opened), then newer
                    // samples and events each round; a sidecar without /v1/history is not asked again
                    let mut since = 0.0;
                    let mut history = true;
                    while !shared.stop.load(Ordering::Relaxed) {
                        let started = Instant::now();
                        if history {
                            let answer = fetch_history(&agent, &url, since);
                            history = !matches!(answer, Endpoint::NotServed);
                            since = apply_history(&mut shared.model(), &url, since, answer);
                        }
                        let scrape = scrape_sidecar(&agent, &url);
                        let t = unix_now();
                        apply_sidecar(&mut shared.model(), &url, t, scrape);
                        repaint();
                        sleep_until_next(&shared, started);
                    }
                });
            }
        }
        Sources::Prometheus(url) => {
            shared.model().add_source(url);
            let (url, shared, repaint) = (url.clone(), shared.clone(), repaint.clone());
            std::thread::spawn(move || {
                let agent = agent(Duration::from_secs(10));
                while !shared.stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let now = unix_now();
                    let result = fetch_prometheus(&agent, &url, now, shared.settings().window_secs);
                    {
                        let mut model = shared.model();
                        match result {
                            Ok((mut fresh, _)) => {
                                fresh.sources = std::mem::take(&mut model.sources);
                                fresh.version = model.version + 1;
                                fresh.status.insert(url.clone(), Endpoint::Unsupported);
                                fresh.denied.insert(url.clone(), Endpoint::Unsupported);
                                *model = fresh;
                                model.record_attempt(&url, now, Ok(()));
                            }
                            Err(e) => model.record_attempt(&url, now, Err(e)),
                        }
                    }
                    repaint();
                    sleep_until_next(&shared, started);
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_answers_replay_into_the_model() {
        let range = r#"{"status":"success","data":{"resultType":"matrix","result":[
          {"metric":{"__name__":"kms_sidecar_requests_total","job":"kms","instance":"a:7301",
                     "operation":"Encrypt","outcome":"ok"},
           "values":[[1000,"10"],[1015,"40"],[1030,"5"]]},
          {"metric":{"__name__":"kms_sidecar_requests_total","job":"kms","instance":"b:7301",
                     "operation":"Encrypt","outcome":"ok"},
           "values":[[1000,"0"],[1015,"15"],[1030,"30"]]}]}}"#;
        let mut steps = Steps::new();
        parse_prometheus(range, &mut steps).unwrap();
        let m = replay(&steps, ModelConfig::default(), 1000.0, 15.0);
        // a: +30, reset to 5 (+5); b: +15, +15 -> 65
        assert_eq!(
            m.total(
                "kms_sidecar_requests_total",
                &[("operation", "Encrypt")],
                1000.0,
                1030.0
            ),
            Some(65.0)
        );
        // an instance that appears mid-range started there: its first values are increases
        let young = r#"{"status":"success","data":{"resultType":"matrix","result":[
          {"metric":{"__name__":"kms_sidecar_requests_total","job":"kms","instance":"c:7301",
                     "operation":"Decrypt","outcome":"ok"},"values":[[1060,"4"],[1075,"9"]]}]}}"#;
        let mut steps = Steps::new();
        parse_prometheus(young, &mut steps).unwrap();
        let m = replay(&steps, ModelConfig::default(), 1000.0, 15.0);
        assert_eq!(
            m.total("kms_sidecar_requests_total", &[], 1000.0, 1075.0),
            Some(9.0)
        );
        let err = r#"{"status":"error","errorType":"bad_data","error":"parse error"}"#;
        assert_eq!(
            parse_prometheus(err, &mut steps).unwrap_err(),
            "parse error"
        );
        assert_eq!(encode("{a=~\"b\"}"), "%7Ba%3D~%22b%22%7D");
    }

    #[test]
    fn dead_sidecar_is_an_error_quickly_and_keeps_last_good_time() {
        // a port nobody listens on: bind, read the port, close
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        let s = scrape_sidecar(&agent(Duration::from_secs(2)), &url);
        assert!(started.elapsed() < Duration::from_secs(3));
        let mut m = Model::new(ModelConfig::default());
        m.record_attempt(&url, 1.0, Ok(()));
        apply_sidecar(&mut m, &url, 2.0, s);
        let h = &m.sources[&url];
        assert_eq!(h.last_ok, Some(1.0));
        assert!(h.error.as_deref().unwrap().contains("/metrics"), "{h:?}");
    }
}
