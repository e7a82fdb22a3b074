//! What the benches can say about a handful of noisy runs: their median, and a confidence
//! interval for it that assumes nothing about how the runs are spread.

/// A median and the interval of order statistics around it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interval {
    pub median: f64,
    pub low: f64,
    pub high: f64,
    /// The chance that the interval holds the true median, whatever the distribution of the
    /// values (independent runs assumed).
    pub coverage: f64,
}

/// The coverage the interval aims for.
pub const AIM: f64 = 0.9;

/// The median of `values`; None without values.
pub fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    median_of_sorted(&values)
}

fn median_of_sorted(sorted: &[f64]) -> Option<f64> {
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

/// The median of `values` and, for n values sorted x(1) <= ... <= x(n), the interval
/// [x(k), x(n+1-k)] for the largest k whose coverage, 1 - 2 P(Binomial(n, 1/2) < k), is at least
/// [`AIM`]; with fewer than 5 values no k reaches it, and the interval is [min, max] with the
/// coverage it has (75% for 3). None without values.
pub fn median_interval(mut values: Vec<f64>) -> Option<Interval> {
    values.sort_by(f64::total_cmp);
    let median = median_of_sorted(&values)?;
    let n = values.len();
    let coverage = |k: usize| 1.0 - 2.0 * binomial_half_below(n, k);
    let k = (1..=n.div_ceil(2))
        .take_while(|&k| coverage(k) >= AIM)
        .last()
        .unwrap_or(1);
    Some(Interval {
        median,
        low: values[k - 1],
        high: values[n - k],
        coverage: coverage(k),
    })
}

/// P(X < k) for X ~ Binomial(n, 1/2).
fn binomial_half_below(n: usize, k: usize) -> f64 {
    let mut choose = 1.0; // C(n, 0)
    let mut sum = 0.0;
    for i in 0..k.min(n + 1) {
        sum += choose;
        choose = choose * (n - i) as f64 / (i + 1) as f64;
    }
    sum / 2f64.powi(n as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coverage_follows_the_binomial() {
        assert_eq!(binomial_half_below(3, 1), 1.0 / 8.0);
        assert_eq!(binomial_half_below(10, 2), 11.0 / 1024.0);
        assert_eq!(binomial_half_below(10, 3), 56.0 / 1024.0);
        assert_eq!(binomial_half_below(4, 5), 1.0);
    }

    #[test]
    fn three_runs_give_their_range_at_75_percent() {
        let i = median_interval(vec![1.2, 0.9, 1.05]).unwrap();
        assert_eq!((i.median, i.low, i.high), (1.05, 0.9, 1.2));
        assert_eq!(i.coverage, 0.75);
    }

    #[test]
    fn ten_runs_drop_the_outermost_pair() {
        // k = 2 covers 1 - 22/1024 = 97.9%; k = 3 only 89.1%, under the aim.
        let values = (1..=10).map(f64::from).rev().collect();
        let i = median_interval(values).unwrap();
        assert_eq!((i.median, i.low, i.high), (5.5, 2.0, 9.0));
        assert!((i.coverage - (1.0 - 22.0 / 1024.0)).abs() < 1e-12);
    }

    #[test]
    fn twenty_runs_narrow_further() {
        // k = 6: 1 - 2 * 0.0207 = 95.9%; k = 7: 1 - 2 * 0.0577 = 88.5%.
        let values = (1..=20).map(f64::from).collect();
        let i = median_interval(values).unwrap();
        assert_eq!((i.low, i.high), (6.0, 15.0));
        assert!(i.coverage >= AIM);
    }

    #[test]
    fn no_values_no_interval() {
        assert_eq!(median_interval(Vec::new()), None);
        assert_eq!(median(Vec::new()), None);
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }
}
