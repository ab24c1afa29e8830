//! Service-level arithmetic: availability, error budget and burn rate, as defined in
//! `docs/dashboard.md` and used by the alert rules (multi-window burn rates).

/// Outcomes that count against availability: the sidecar failed (the 5xx class). Client mistakes
/// such as `InvalidCiphertextException` or `AccessDeniedException` are correct answers and count as
/// available. Throttling counts only when a shared limiter refused a caller that was within its own
/// quota ([`SHARED_THROTTLE_SCOPES`]), as in the alert rules (`alerts/kms-sidecar.rules.yml`).
pub const BAD_OUTCOMES: [&str; 3] = [
    "KMSInternalException",
    "DependencyTimeoutException",
    "KeyUnavailableException",
];

/// `kms_sidecar_throttled_total` scopes that count against availability: the global limit and the
/// outbound budget. A caller over its own principal or key quota was answered correctly.
pub const SHARED_THROTTLE_SCOPES: [&str; 2] = ["global", "backend"];

/// True for an outcome label that counts against availability.
pub fn is_bad(outcome: &str) -> bool {
    BAD_OUTCOMES.contains(&outcome)
}

/// True for a throttling scope that counts against availability.
pub fn is_shared_throttle(scope: &str) -> bool {
    SHARED_THROTTLE_SCOPES.contains(&scope)
}

/// Good / all; `None` without traffic (no traffic is not 100 %).
pub fn availability(total: f64, bad: f64) -> Option<f64> {
    (total > 0.0).then(|| ((total - bad) / total).clamp(0.0, 1.0))
}

/// How fast the error budget burns: the error ratio divided by the allowed ratio `1 - slo`.
/// A burn rate of 1 spends exactly the budget over the SLO period.
pub fn burn_rate(total: f64, bad: f64, slo: f64) -> Option<f64> {
    let allowed = 1.0 - slo;
    (total > 0.0 && allowed > 0.0).then(|| (bad / total) / allowed)
}

/// The SLO period of the alert rules (`alerts/kms-sidecar.rules.yml`: burn-rate thresholds are
/// shares of a 30-day budget).
pub const SLO_PERIOD_SECS: f64 = 30.0 * 86_400.0;

/// Share of the SLO period's error budget spent by a window that burned at `burn` for
/// `window_secs` (the SRE workbook's arithmetic: 14.4 for an hour is 2 % of 30 days), assuming
/// the window's traffic is typical of the period.
pub fn budget_spent(burn: f64, window_secs: f64) -> f64 {
    burn * window_secs / SLO_PERIOD_SECS
}

/// Traffic-light state used by every view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// Within target.
    Good,
    /// Needs a look.
    Warn,
    /// Out of target.
    Bad,
    /// Nothing to judge.
    Unknown,
}

impl Health {
    /// At least amber: keeps red, turns anything else amber.
    pub fn at_least_warn(self) -> Self {
        match self {
            Health::Bad => Health::Bad,
            _ => Health::Warn,
        }
    }
}

/// Page when the 1 h burn rate reaches 14.4 (2 % of a 30-day budget in an hour) or the window
/// spent the whole 30-day budget; warn at a 6 h burn of 6 or any window burning faster than 1.
pub fn slo_health(budget_spent: Option<f64>, burns: [Option<f64>; 3]) -> Health {
    let [b5m, b1h, b6h] = burns;
    if budget_spent.is_none() && burns.iter().all(Option::is_none) {
        return Health::Unknown;
    }
    if budget_spent.is_some_and(|l| l >= 1.0) || b1h.is_some_and(|b| b >= 14.4) {
        return Health::Bad;
    }
    if b6h.is_some_and(|b| b >= 6.0) || [b5m, b1h, b6h].iter().flatten().any(|b| *b > 1.0) {
        return Health::Warn;
    }
    Health::Good
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn availability_budget_and_burn() {
        // 10 000 calls, 5 bad, SLO 99.9 %: availability 99.95 %, half the budget left, burn 0.5
        let a = availability(10_000.0, 5.0).unwrap();
        assert!((a - 0.9995).abs() < 1e-12);
        assert!((burn_rate(10_000.0, 5.0, 0.999).unwrap() - 0.5).abs() < 1e-9);
        // 144 bad of 10 000 at 99.9 %: burn 14.4; an hour of it spends 2 % of 30 days' budget
        assert!((burn_rate(10_000.0, 144.0, 0.999).unwrap() - 14.4).abs() < 1e-9);
        assert!((budget_spent(14.4, 3600.0) - 0.02).abs() < 1e-12);
        assert!((budget_spent(6.0, 6.0 * 3600.0) - 0.05).abs() < 1e-12);
        assert_eq!(availability(0.0, 0.0), None);
        assert_eq!(burn_rate(0.0, 0.0, 0.999), None);
        assert_eq!(burn_rate(10.0, 1.0, 1.0), None);
    }

    #[test]
    fn which_outcomes_are_bad() {
        assert!(!is_bad("ThrottlingException"), "only by scope, below");
        assert!(is_bad("KMSInternalException"));
        assert!(is_bad("DependencyTimeoutException"));
        assert!(is_shared_throttle("global"));
        assert!(is_shared_throttle("backend"));
        assert!(!is_shared_throttle("principal"));
        assert!(!is_shared_throttle("key"));
        assert!(!is_bad("ok"));
        assert!(!is_bad("InvalidCiphertextException"));
        assert!(!is_bad("AccessDeniedException"));
    }

    #[test]
    fn traffic_lights() {
        assert_eq!(slo_health(None, [None; 3]), Health::Unknown);
        assert_eq!(slo_health(Some(0.5), [Some(0.5); 3]), Health::Good);
        assert_eq!(
            slo_health(Some(0.5), [Some(2.0), Some(0.5), Some(0.5)]),
            Health::Warn
        );
        assert_eq!(
            slo_health(Some(0.5), [Some(20.0), Some(14.4), Some(1.0)]),
            Health::Bad
        );
        assert_eq!(slo_health(Some(1.1), [Some(0.1); 3]), Health::Bad);
    }
}
