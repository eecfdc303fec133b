//! Summaries of repeated measurements: median, min–max and the interquartile range.

use serde::Serialize;

/// A set of repeated measurements of one quantity.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub n: usize,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub q1: f64,
    pub q3: f64,
    /// Every value, in measurement order.
    pub values: Vec<f64>,
}

impl Summary {
    pub fn of(values: &[f64]) -> Self {
        if values.is_empty() {
            return Self::default();
        }
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        Self {
            n: values.len(),
            median: quantile(&sorted, 0.5),
            min: sorted[0],
            max: sorted[sorted.len() - 1],
            q1: quantile(&sorted, 0.25),
            q3: quantile(&sorted, 0.75),
            values: values.to_vec(),
        }
    }

    /// "median (min–max)" with `decimals` places, e.g. "3.1 (2.9–3.6)".
    pub fn show(&self, decimals: usize) -> String {
        if self.n == 0 {
            return "n/a".into();
        }
        if self.n == 1 {
            return format!("{:.*}", decimals, self.median);
        }
        format!("{:.*} ({:.*}–{:.*})", decimals, self.median, decimals, self.min, decimals, self.max)
    }

    /// "median (IQR q1–q3; min–max)".
    pub fn show_iqr(&self, decimals: usize) -> String {
        if self.n < 4 {
            return self.show(decimals);
        }
        format!(
            "{:.*} (IQR {:.*}–{:.*}; min–max {:.*}–{:.*})",
            decimals, self.median, decimals, self.q1, decimals, self.q3, decimals, self.min, decimals, self.max
        )
    }
}

/// Linear-interpolated quantile of sorted values (`q` in 0..=1).
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let position = q * (sorted.len() - 1) as f64;
    let (low, high) = (position.floor() as usize, position.ceil() as usize);
    sorted[low] + (sorted[high] - sorted[low]) * (position - low as f64)
}

/// The `q` quantile of latencies in nanoseconds (sorted in place), as milliseconds.
pub fn percentile_ms(latencies_ns: &mut [u64], q: f64) -> f64 {
    if latencies_ns.is_empty() {
        return f64::NAN;
    }
    latencies_ns.sort_unstable();
    // Nearest rank: the smallest value with at least q of the samples at or below it.
    let rank = ((q * latencies_ns.len() as f64).ceil() as usize).clamp(1, latencies_ns.len());
    latencies_ns[rank - 1] as f64 / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_quartiles_and_percentiles() {
        let s = Summary::of(&[5.0, 1.0, 3.0, 2.0, 4.0]);
        assert_eq!((s.median, s.min, s.max, s.q1, s.q3), (3.0, 1.0, 5.0, 2.0, 4.0));
        let mut ns: Vec<u64> = (1..=100).map(|i| i * 1_000_000).collect();
        assert_eq!(percentile_ms(&mut ns, 0.5), 50.0);
        assert_eq!(percentile_ms(&mut ns, 0.99), 99.0);
        assert_eq!(s.show(1), "3.0 (1.0–5.0)");
    }
}
