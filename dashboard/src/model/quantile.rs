//! Quantiles from cumulative histogram buckets, the way Prometheus' `histogram_quantile` does it,
//! so the dashboard and a Prometheus query agree on the same data.

/// The `q` quantile (0..=1) of a histogram given as `(upper bound, cumulative count)` pairs in
/// any order, one of them `+Inf`. Linear interpolation inside the bucket that holds the rank; the
/// first bucket starts at 0; a rank in the `+Inf` bucket answers the highest finite bound.
/// `None` when there are no observations or no `+Inf` bucket (the answer would be made up).
pub fn quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    if !(0.0..=1.0).contains(&q) {
        return None;
    }
    let mut b: Vec<(f64, f64)> = buckets
        .iter()
        .copied()
        .filter(|(le, c)| !le.is_nan() && c.is_finite())
        .collect();
    b.sort_by(|x, y| x.0.total_cmp(&y.0));
    b.dedup_by(|later, earlier| {
        // Duplicate bounds come from summing sources; keep the larger count.
        if later.0 == earlier.0 {
            earlier.1 = earlier.1.max(later.1);
            true
        } else {
            false
        }
    });
    let &(last_le, total) = b.last()?;
    if last_le != f64::INFINITY || total <= 0.0 {
        return None;
    }
    // Counts read at slightly different times can dip; cumulative counts never do.
    let mut running = 0.0_f64;
    for x in &mut b {
        running = running.max(x.1);
        x.1 = running;
    }
    let rank = q * total;
    let idx = b.iter().position(|&(_, c)| c >= rank)?;
    if idx == b.len() - 1 {
        return if b.len() >= 2 {
            Some(b[b.len() - 2].0)
        } else {
            None
        };
    }
    let (upper, count) = b[idx];
    let (lower, prev) = if idx == 0 {
        (0.0_f64.min(upper), 0.0)
    } else {
        b[idx - 1]
    };
    if count == prev {
        return Some(upper);
    }
    Some(lower + (upper - lower) * (rank - prev) / (count - prev))
}

#[cfg(test)]
mod tests {
    use super::*;

    const INF: f64 = f64::INFINITY;

    #[test]
    fn interpolates_inside_the_bucket() {
        // 10 in (0, 0.001], 80 in (0.001, 0.01], 10 in (0.01, 0.1]
        let b = [(0.001, 10.0), (0.01, 90.0), (0.1, 100.0), (INF, 100.0)];
        // p50: rank 50 -> second bucket, 40 of 80 in -> 0.001 + 0.009 * 0.5
        assert!((quantile(0.5, &b).unwrap() - 0.0055).abs() < 1e-12);
        // p95: rank 95 -> third bucket, 5 of 10 -> 0.01 + 0.09 * 0.5
        assert!((quantile(0.95, &b).unwrap() - 0.055).abs() < 1e-12);
        // p99: 9 of 10 -> 0.01 + 0.09 * 0.9
        assert!((quantile(0.99, &b).unwrap() - 0.091).abs() < 1e-12);
        // p5: first bucket starts at zero: 0.001 * 5/10
        assert!((quantile(0.05, &b).unwrap() - 0.0005).abs() < 1e-12);
    }

    #[test]
    fn order_inf_bucket_and_empty() {
        let b = [(INF, 10.0), (0.5, 2.0), (0.1, 1.0)];
        // rank 9 lands in +Inf: answer the highest finite bound
        assert_eq!(quantile(0.9, &b), Some(0.5));
        assert_eq!(quantile(0.5, &[(0.1, 0.0), (INF, 0.0)]), None);
        assert_eq!(quantile(0.5, &[(0.1, 3.0)]), None);
        assert_eq!(quantile(0.5, &[]), None);
        assert_eq!(quantile(1.5, &b), None);
    }
}
