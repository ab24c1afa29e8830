//! Number and time formatting for the views. Every float reaches the screen through here, so a
//! missing or non-finite value prints as "no data yet" and never as `NaN`.

/// What an absent value looks like.
pub const NO_DATA: &str = "no data yet";

fn finite(v: Option<f64>) -> Option<f64> {
    // `+ 0.0` turns -0.0 (an empty f64 sum) into 0.0, so nothing prints as "-0.00"
    v.filter(|x| x.is_finite()).map(|x| x + 0.0)
}

/// `99.95 %`.
pub fn pct(v: Option<f64>, decimals: usize) -> String {
    finite(v).map_or_else(|| NO_DATA.into(), |x| format!("{:.decimals$} %", x * 100.0))
}

/// A duration in seconds with a readable unit.
pub fn secs(v: Option<f64>) -> String {
    match finite(v) {
        None => NO_DATA.into(),
        Some(x) if x < 0.001 => format!("{:.0} µs", x * 1e6),
        Some(x) if x < 1.0 => format!("{:.2} ms", x * 1e3),
        Some(x) => format!("{x:.2} s"),
    }
}

/// Events per second.
pub fn rate(v: Option<f64>) -> String {
    match finite(v) {
        None => NO_DATA.into(),
        Some(x) if x != 0.0 && x.abs() < 0.1 => format!("{x:.3}/s"),
        Some(x) => format!("{x:.1}/s"),
    }
}

/// A count (counters can be fractional after interpolation; shown rounded).
pub fn count(v: Option<f64>) -> String {
    let Some(x) = finite(v) else {
        return NO_DATA.into();
    };
    let n = x.round() as i64;
    let s = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        out.insert(0, '-');
    }
    out
}

/// A plain number with `d` decimals.
pub fn num(v: Option<f64>, d: usize) -> String {
    finite(v).map_or_else(|| NO_DATA.into(), |x| format!("{x:.d$}"))
}

/// Dollars.
pub fn dollars(v: Option<f64>) -> String {
    finite(v).map_or_else(|| NO_DATA.into(), |x| format!("${x:.4}"))
}

/// Unix seconds as `YYYY-MM-DD HH:MM:SS` (UTC).
pub fn time(t: f64) -> String {
    if !t.is_finite() {
        return NO_DATA.into();
    }
    let secs = t.floor() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // civil-from-days (Howard Hinnant), valid for the proleptic Gregorian calendar
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Unix seconds as a date only.
pub fn date(t: Option<f64>) -> String {
    finite(t).map_or_else(|| "—".into(), |t| time(t)[..10].to_string())
}

/// `12 s ago`.
pub fn ago(now: f64, t: f64) -> String {
    let d = (now - t).max(0.0);
    if d < 90.0 {
        format!("{d:.0} s ago")
    } else if d < 5400.0 {
        format!("{:.0} min ago", d / 60.0)
    } else {
        format!("{:.1} h ago", d / 3600.0)
    }
}

/// A relative time axis label: `-5m`, `-1h30m`, `now`.
pub fn rel(x: f64) -> String {
    let s = (-x).round() as i64;
    if s <= 0 {
        return "now".into();
    }
    let (h, m, sec) = (s / 3600, s % 3600 / 60, s % 60);
    match (h, m, sec) {
        (0, 0, s) => format!("-{s}s"),
        (0, m, 0) => format!("-{m}m"),
        (0, m, s) => format!("-{m}m{s:02}s"),
        (h, 0, _) => format!("-{h}h"),
        (h, m, _) => format!("-{h}h{m:02}m"),
    }
}

/// A window length for the selector: `5 min`, `1 h`.
pub fn window(secs: f64) -> String {
    if secs < 3600.0 {
        format!("{:.0} min", secs / 60.0)
    } else {
        format!("{:.0} h", secs / 3600.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_nan() {
        for f in [f64::NAN, f64::INFINITY] {
            assert_eq!(pct(Some(f), 1), NO_DATA);
            assert_eq!(secs(Some(f)), NO_DATA);
            assert_eq!(rate(Some(f)), NO_DATA);
            assert_eq!(count(Some(f)), NO_DATA);
        }
        assert_eq!(pct(None, 2), NO_DATA);
        assert_eq!(num(Some(-0.0), 2), "0.00");
    }

    #[test]
    fn formats() {
        assert_eq!(pct(Some(0.9995), 2), "99.95 %");
        assert_eq!(secs(Some(0.000_35)), "350 µs");
        assert_eq!(secs(Some(0.0123)), "12.30 ms");
        assert_eq!(secs(Some(2.5)), "2.50 s");
        assert_eq!(count(Some(1_234_567.4)), "1,234,567");
        assert_eq!(count(Some(-1234.0)), "-1,234");
        assert_eq!(rate(Some(0.05)), "0.050/s");
        assert_eq!(time(0.0), "1970-01-01 00:00:00");
        assert_eq!(time(1_795_417_329.0), "2026-11-23 07:02:09");
        assert_eq!(time(951_782_400.0), "2000-02-29 00:00:00");
        assert_eq!(rel(-300.0), "-5m");
        assert_eq!(rel(-5400.0), "-1h30m");
        assert_eq!(rel(0.0), "now");
        assert_eq!(ago(100.0, 40.0), "60 s ago");
    }
}
