//! Selection: the budget split ([`Budget`]), the scores of a KV group's query
//! heads combined as PQCache does ([`group_scores`]: softmax per query head,
//! summed), and [`topk`].

/// How many tokens a decode step attends over: the first `sink` tokens, the
/// last `local`, and `topk` chosen among the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Attention sinks (the first tokens).
    pub sink: usize,
    /// The local window (the last tokens).
    pub local: usize,
    /// Tokens chosen by score among the others.
    pub topk: usize,
}

impl Budget {
    /// The budget for `n` tokens: `fraction` of them, half local window and half
    /// chosen, plus `sink` sinks (PQCache's split). Never more than `n` in all.
    pub fn of(n: usize, fraction: f64, sink: usize) -> Self {
        let sink = sink.min(n);
        let total = ((n as f64 * fraction).ceil() as usize).min(n - sink);
        let local = total / 2;
        Self {
            sink,
            local,
            topk: total - local,
        }
    }

    /// The candidates of `n` tokens: those neither sinks nor in the window.
    pub fn candidates(&self, n: usize) -> std::ops::Range<usize> {
        self.sink.min(n)..n.saturating_sub(self.local).max(self.sink.min(n))
    }
}

/// Combines the scores of a KV group's query heads over `n` candidates:
/// `scores` holds `heads` rows of `n` raw scores (`q . k`); each row is scaled by
/// `scale` (1/sqrt(d)), turned into a softmax, and the rows are summed into `out`.
pub fn group_scores(scores: &[f32], n: usize, scale: f32, out: &mut [f32]) {
    out[..n].iter_mut().for_each(|o| *o = 0.0);
    if n == 0 {
        return;
    }
    for row in scores.chunks_exact(n) {
        let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x * scale));
        let mut sum = 0.0f32;
        for &x in row {
            sum += (x * scale - max).exp();
        }
        let inv = 1.0 / sum;
        for (o, &x) in out.iter_mut().zip(row) {
            *o += (x * scale - max).exp() * inv;
        }
    }
}

/// The indices of the `k` largest of `scores` (ties: the lower index first), in
/// ascending index order; `scratch` is reused between calls.
pub fn topk(scores: &[f32], k: usize, scratch: &mut Vec<u32>) -> Vec<u32> {
    let n = scores.len();
    if k >= n {
        return (0..n as u32).collect();
    }
    if k == 0 {
        return Vec::new();
    }
    scratch.clear();
    scratch.extend(0..n as u32);
    let by = |a: &u32, b: &u32| scores[*b as usize].total_cmp(&scores[*a as usize]).then(a.cmp(b));
    scratch.select_nth_unstable_by(k - 1, by);
    let mut out = scratch[..k].to_vec();
    out.sort_unstable();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn topk_equals_the_first_k_of_a_sort(scores in proptest::collection::vec(-100i32..100, 0..300), k in 0usize..320) {
            let s: Vec<f32> = scores.iter().map(|&x| x as f32).collect();
            let got = topk(&s, k, &mut Vec::new());
            let mut order: Vec<u32> = (0..s.len() as u32).collect();
            order.sort_by(|a, b| s[*b as usize].total_cmp(&s[*a as usize]).then(a.cmp(b)));
            let mut want: Vec<u32> = order.into_iter().take(k).collect();
            want.sort_unstable();
            prop_assert_eq!(got, want);
        }

        #[test]
        fn a_budget_never_exceeds_the_context(n in 0usize..100_000, f in 0.0f64..1.0, sink in 0usize..64) {
            let b = Budget::of(n, f, sink);
            prop_assert!(b.sink + b.local + b.topk <= n);
            let c = b.candidates(n);
            prop_assert!(c.start <= c.end && c.end <= n);
            prop_assert!(b.topk <= c.len());
        }
    }

    #[test]
    fn group_scores_are_softmax_probabilities_summed_over_heads() {
        let scores = [1.0, 2.0, 3.0, 0.0, 0.0, 0.0];
        let mut out = [0.0; 3];
        group_scores(&scores, 3, 1.0, &mut out);
        let e: Vec<f32> = [1.0f32, 2.0, 3.0].iter().map(|x| x.exp()).collect();
        let s: f32 = e.iter().sum();
        for i in 0..3 {
            assert!((out[i] - (e[i] / s + 1.0 / 3.0)).abs() < 1e-6);
        }
        assert!((out.iter().sum::<f32>() - 2.0).abs() < 1e-5);
        assert_eq!(
            Budget::of(1000, 0.2, 32),
            Budget {
                sink: 32,
                local: 100,
                topk: 100
            }
        );
        assert_eq!(Budget::of(1000, 0.2, 32).candidates(1000), 32..900);
    }
}
