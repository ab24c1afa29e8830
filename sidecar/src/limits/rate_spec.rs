//! The inbound rate limits as configured ([`RateSpec`], plain data the config layer fills in) and as
//! validated ([`ValidRateSpec`], which only `TryFrom` can build, so a zero rate, a zero burst, a NaN
//! or an absurd window never reaches a limiter).

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::Quota;

/// AWS KMS's default shared quota for symmetric cryptographic operations (Decrypt, Encrypt,
/// GenerateDataKey*, GenerateMac, GenerateRandom, ReEncrypt, VerifyMac): requests per second per
/// account and Region. Some Regions have a higher default (20,000 req/s); check Service Quotas for yours.
pub const AWS_SYMMETRIC_QUOTA_PER_SECOND: u32 = 10_000;
/// The higher default that some AWS Regions apply to the same shared quota.
pub const AWS_SYMMETRIC_QUOTA_PER_SECOND_LARGE_REGIONS: u32 = 20_000;

/// The shortest window a limit may have (shorter ones measure timer noise, not load).
pub const MIN_PERIOD: Duration = Duration::from_millis(1);
/// The longest window a limit may have: a limiter is in-memory and resets on restart or reload, so
/// a window longer than a month promises something it cannot keep.
pub const MAX_PERIOD: Duration = Duration::from_secs(31 * 86_400);
/// The fastest sustained rate a window may allow (one request per nanosecond is the limiter's grain).
pub const MAX_RATE_PER_SECOND: f64 = 1e9;
/// How many keys at most get a limiter of their own (beyond them, keys share `other`).
pub const MAX_TRACKED_KEYS: usize = 1_000_000;

/// One window as written in config: `rate` requests per `period`, at most `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WindowSpec {
    pub rate: f64,
    pub period: Duration,
    /// Requests allowed at one instant. `None`: one period's worth (`ceil(rate)`).
    pub burst: Option<u32>,
}

impl WindowSpec {
    /// `rate` requests per second with an explicit burst.
    pub fn per_second(rate: f64, burst: u32) -> Self {
        Self {
            rate,
            period: Duration::from_secs(1),
            burst: Some(burst),
        }
    }

    /// `rate` requests per day, burst one day's worth.
    pub fn per_day(rate: f64) -> Self {
        Self {
            rate,
            period: Duration::from_secs(86_400),
            burst: None,
        }
    }
}

/// The inbound limits as configured. Every scope is a list of windows; an empty list means that
/// scope is not limited. A call passes only if every window of every applicable scope has room.
#[derive(Debug, Clone, PartialEq)]
pub struct RateSpec {
    /// One limit shared by every caller.
    pub global: Vec<WindowSpec>,
    /// The limit each principal gets unless overridden.
    pub principal_default: Vec<WindowSpec>,
    /// Principals known at build (the configured clients). Each gets its own limiter; any other
    /// name shares one `other` limiter, so attacker-chosen names cannot grow memory or labels.
    pub principals: Vec<String>,
    /// Per-principal limits replacing the default (the name is known too).
    pub principal_overrides: BTreeMap<String, Vec<WindowSpec>>,
    /// The limit each key gets unless overridden.
    pub key_default: Vec<WindowSpec>,
    /// Per-key limits replacing the default, by key id.
    pub key_overrides: BTreeMap<String, Vec<WindowSpec>>,
    /// Keys without an override that get a limiter of their own; later ones share `other`.
    pub max_tracked_keys: usize,
}

/// Default for [`RateSpec::max_tracked_keys`].
pub const DEFAULT_MAX_TRACKED_KEYS: usize = 1_000;

impl Default for RateSpec {
    /// No limits at all.
    fn default() -> Self {
        Self {
            global: Vec::new(),
            principal_default: Vec::new(),
            principals: Vec::new(),
            principal_overrides: BTreeMap::new(),
            key_default: Vec::new(),
            key_overrides: BTreeMap::new(),
            max_tracked_keys: DEFAULT_MAX_TRACKED_KEYS,
        }
    }
}

impl RateSpec {
    /// The `emulate_aws_quotas` profile: the AWS KMS shared quota for symmetric cryptographic
    /// operations as one global limit (the sidecar plays one account in one Region), with a burst of
    /// one second's worth. Pass [`AWS_SYMMETRIC_QUOTA_PER_SECOND`] (most Regions) or
    /// [`AWS_SYMMETRIC_QUOTA_PER_SECOND_LARGE_REGIONS`].
    pub fn emulate_aws_quotas(per_second: u32) -> Self {
        Self {
            global: vec![WindowSpec::per_second(f64::from(per_second), per_second)],
            ..Self::default()
        }
    }
}

/// Which window of which scope a validation error is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub scope: String,
    pub window: usize,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} window {}", self.scope, self.window + 1)
    }
}

/// Why a [`RateSpec`] was rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpecError {
    #[error("rate limit {at}: rate must be a finite number, got {rate}")]
    NotFinite { at: Location, rate: f64 },
    #[error("rate limit {at}: rate must be greater than zero, got {rate}")]
    NonPositiveRate { at: Location, rate: f64 },
    #[error("rate limit {at}: burst must be at least 1")]
    ZeroBurst { at: Location },
    #[error("rate limit {at}: period {period:?} is outside {MIN_PERIOD:?}..={MAX_PERIOD:?}")]
    Period { at: Location, period: Duration },
    #[error(
        "rate limit {at}: {per_second} requests per second is outside what a limiter can count \
         (at most {MAX_RATE_PER_SECOND}/s, and at least one request per {MAX_PERIOD:?})"
    )]
    RateOutOfRange { at: Location, per_second: f64 },
    #[error("rate limit: `{name}` is reserved for the shared limiter and cannot be a {what} name")]
    ReservedName { what: &'static str, name: String },
    #[error("rate limit: a {what} name must not be empty")]
    EmptyName { what: &'static str },
    #[error("rate limit: max_tracked_keys {0} is more than {MAX_TRACKED_KEYS}")]
    TooManyKeys(usize),
}

/// One validated window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    rate: f64,
    period: Duration,
    burst: NonZeroU32,
    quota: Quota,
}

impl Window {
    /// Validates one window; `at` names it in the error.
    pub fn new(spec: &WindowSpec, at: Location) -> Result<Self, SpecError> {
        let WindowSpec {
            rate,
            period,
            burst,
        } = *spec;
        if !rate.is_finite() {
            return Err(SpecError::NotFinite { at, rate });
        }
        if rate <= 0.0 {
            return Err(SpecError::NonPositiveRate { at, rate });
        }
        if !(MIN_PERIOD..=MAX_PERIOD).contains(&period) {
            return Err(SpecError::Period { at, period });
        }
        let per_second = rate / period.as_secs_f64();
        // One cell per `period / rate`; it must be a whole nanosecond and at most MAX_PERIOD.
        let interval = period.as_secs_f64() / rate;
        if per_second > MAX_RATE_PER_SECOND || interval > MAX_PERIOD.as_secs_f64() {
            return Err(SpecError::RateOutOfRange { at, per_second });
        }
        let burst = match burst {
            Some(b) => NonZeroU32::new(b).ok_or(SpecError::ZeroBurst { at: at.clone() })?,
            // ceil(rate) is >= 1 and, rate being <= 1e9 * 31 days, may exceed u32: clamp.
            None => NonZeroU32::new(rate.ceil().min(f64::from(u32::MAX)) as u32)
                .unwrap_or(NonZeroU32::MIN),
        };
        let interval = Duration::from_secs_f64(interval).max(Duration::from_nanos(1));
        let quota = Quota::with_period(interval)
            .ok_or(SpecError::RateOutOfRange { at, per_second })?
            .allow_burst(burst);
        Ok(Self {
            rate,
            period,
            burst,
            quota,
        })
    }

    /// The sustained rate in requests per second.
    pub fn per_second(&self) -> f64 {
        self.rate / self.period.as_secs_f64()
    }

    pub fn period(&self) -> Duration {
        self.period
    }

    pub fn burst(&self) -> u32 {
        self.burst.get()
    }

    pub(crate) fn quota(&self) -> Quota {
        self.quota
    }
}

/// The label shared by every principal or key that has no limiter of its own.
pub const OTHER: &str = "other";
/// The gauge name of the per-key default limit.
pub const DEFAULT: &str = "default";

/// A [`RateSpec`] whose every window is valid. Only `TryFrom<RateSpec>` builds one.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidRateSpec {
    pub(crate) global: Vec<Window>,
    pub(crate) principal_default: Vec<Window>,
    /// Every known principal with its effective windows (default or override), sorted by name.
    pub(crate) principals: Vec<(Box<str>, Vec<Window>)>,
    pub(crate) key_default: Vec<Window>,
    pub(crate) key_overrides: Vec<(Box<str>, Vec<Window>)>,
    pub(crate) max_tracked_keys: usize,
}

fn windows(scope: String, specs: &[WindowSpec]) -> Result<Vec<Window>, SpecError> {
    specs
        .iter()
        .enumerate()
        .map(|(window, w)| {
            Window::new(
                w,
                Location {
                    scope: scope.clone(),
                    window,
                },
            )
        })
        .collect()
}

fn check_name(what: &'static str, name: &str, reserved: &[&str]) -> Result<(), SpecError> {
    if name.is_empty() {
        return Err(SpecError::EmptyName { what });
    }
    if reserved.contains(&name) {
        return Err(SpecError::ReservedName {
            what,
            name: name.to_owned(),
        });
    }
    Ok(())
}

impl TryFrom<RateSpec> for ValidRateSpec {
    type Error = SpecError;

    fn try_from(spec: RateSpec) -> Result<Self, SpecError> {
        let global = windows("global".into(), &spec.global)?;
        let principal_default = windows("principal default".into(), &spec.principal_default)?;
        let mut principals: BTreeMap<String, Vec<Window>> = BTreeMap::new();
        for name in &spec.principals {
            check_name("principal", name, &[OTHER])?;
            principals.insert(name.clone(), principal_default.clone());
        }
        for (name, specs) in &spec.principal_overrides {
            check_name("principal", name, &[OTHER])?;
            principals.insert(name.clone(), windows(format!("principal `{name}`"), specs)?);
        }
        let key_default = windows("key default".into(), &spec.key_default)?;
        let mut key_overrides = Vec::with_capacity(spec.key_overrides.len());
        for (name, specs) in &spec.key_overrides {
            check_name("key", name, &[OTHER, DEFAULT])?;
            key_overrides.push((
                name.as_str().into(),
                windows(format!("key `{name}`"), specs)?,
            ));
        }
        if spec.max_tracked_keys > MAX_TRACKED_KEYS {
            return Err(SpecError::TooManyKeys(spec.max_tracked_keys));
        }
        Ok(Self {
            global,
            principal_default,
            principals: principals
                .into_iter()
                .map(|(n, w)| (n.into_boxed_str(), w))
                .collect(),
            key_default,
            key_overrides,
            max_tracked_keys: spec.max_tracked_keys,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(w: WindowSpec) -> Result<ValidRateSpec, SpecError> {
        ValidRateSpec::try_from(RateSpec {
            global: vec![w],
            ..RateSpec::default()
        })
    }

    #[test]
    fn rejects_bad_windows_with_clear_messages() {
        let s = Duration::from_secs(1);
        let cases = [
            (
                WindowSpec::per_second(0.0, 1),
                "rate limit global window 1: rate must be greater than zero, got 0",
            ),
            (
                WindowSpec::per_second(f64::NAN, 1),
                "rate limit global window 1: rate must be a finite number, got NaN",
            ),
            (
                WindowSpec::per_second(f64::INFINITY, 1),
                "rate limit global window 1: rate must be a finite number, got inf",
            ),
            (
                WindowSpec::per_second(-3.0, 1),
                "rate limit global window 1: rate must be greater than zero, got -3",
            ),
            (
                WindowSpec::per_second(10.0, 0),
                "rate limit global window 1: burst must be at least 1",
            ),
            (
                WindowSpec {
                    rate: 1.0,
                    period: Duration::ZERO,
                    burst: None,
                },
                "rate limit global window 1: period 0ns is outside 1ms..=2678400s",
            ),
            (
                WindowSpec {
                    rate: 1.0,
                    period: Duration::from_secs(365 * 86_400),
                    burst: None,
                },
                "rate limit global window 1: period 31536000s is outside 1ms..=2678400s",
            ),
            (
                WindowSpec {
                    rate: 1e10,
                    period: s,
                    burst: None,
                },
                "rate limit global window 1: 10000000000 requests per second is outside",
            ),
            (
                WindowSpec {
                    rate: 1e-9,
                    period: s,
                    burst: None,
                },
                "rate limit global window 1: 0.000000001 requests per second is outside",
            ),
        ];
        for (w, message) in cases {
            let err = one(w).unwrap_err().to_string();
            assert!(err.starts_with(message), "{err}");
        }
    }

    #[test]
    fn names_are_checked_and_errors_name_the_scope() {
        let err = ValidRateSpec::try_from(RateSpec {
            principal_overrides: [("alice".into(), vec![WindowSpec::per_second(1.0, 0)])].into(),
            ..RateSpec::default()
        })
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "rate limit principal `alice` window 1: burst must be at least 1"
        );
        let err = ValidRateSpec::try_from(RateSpec {
            principals: vec!["other".into()],
            ..RateSpec::default()
        })
        .unwrap_err();
        assert!(matches!(err, SpecError::ReservedName { .. }), "{err}");
        let err = ValidRateSpec::try_from(RateSpec {
            key_overrides: [("default".into(), vec![])].into(),
            ..RateSpec::default()
        })
        .unwrap_err();
        assert!(matches!(err, SpecError::ReservedName { .. }), "{err}");
    }

    #[test]
    fn defaults_fill_in_and_aws_profile_is_the_shared_quota() {
        let w = Window::new(
            &WindowSpec::per_day(1_000_000.0),
            Location {
                scope: "x".into(),
                window: 0,
            },
        )
        .unwrap();
        assert_eq!(w.burst(), 1_000_000);
        assert!((w.per_second() - 1_000_000.0 / 86_400.0).abs() < 1e-9);

        let aws =
            ValidRateSpec::try_from(RateSpec::emulate_aws_quotas(AWS_SYMMETRIC_QUOTA_PER_SECOND))
                .unwrap();
        assert_eq!(aws.global.len(), 1);
        assert_eq!(aws.global[0].per_second(), 10_000.0);
        assert_eq!(aws.global[0].burst(), 10_000);
        assert!(aws.principals.is_empty() && aws.key_default.is_empty());
    }
}
