//! Per-position comparisons of two next-token distributions, and the statistics
//! llama-perplexity's `--kl-divergence` prints over them (mean ± standard error, percentiles,
//! same top token, RMS Δp), computed the same way so the numbers can be compared.
//!
//! All sums run in f64: a 262k-token vocabulary summed in f32 loses the digits that a KL
//! divergence of 0.001 lives in.

use serde::Serialize;

/// The normalizer of one logit row: log p(i) = (l_i - max) - lse.
#[derive(Clone, Copy, Debug)]
pub struct LogSoftmax {
    pub max: f32,
    /// ln Σ exp(l_i - max)
    pub lse: f64,
    pub argmax: usize,
}

impl LogSoftmax {
    pub fn of(logits: &[f32]) -> LogSoftmax {
        let (mut argmax, mut max) = (0, f32::NEG_INFINITY);
        for (i, &l) in logits.iter().enumerate() {
            if l > max {
                max = l;
                argmax = i;
            }
        }
        let sum: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
        LogSoftmax {
            max,
            lse: sum.ln(),
            argmax,
        }
    }

    pub fn logp(&self, logit: f32) -> f64 {
        (logit - self.max) as f64 - self.lse
    }
}

/// KL(P‖Q) = Σ p_i (ln p_i − ln q_i) over the whole vocabulary: the exact value.
pub fn kld_full(base: &[f32], base_n: &LogSoftmax, q: &[f32], q_n: &LogSoftmax) -> f64 {
    base.iter()
        .zip(q)
        .map(|(&b, &l)| {
            let lp = base_n.logp(b);
            let p = lp.exp();
            if p == 0.0 {
                0.0
            } else {
                p * (lp - q_n.logp(l))
            }
        })
        .sum()
}

/// A baseline distribution kept compactly: its k most likely tokens (most likely first) with
/// their log-probabilities, the probability left to all other tokens, and the exact negative
/// log-likelihood of the token that actually came next.
#[derive(Clone, Debug, PartialEq)]
pub struct TopK {
    pub ids: Vec<u32>,
    pub logp: Vec<f32>,
    /// 1 − Σ top-k p, summed directly over the other tokens (no cancellation).
    pub tail: f64,
    pub nll_target: f64,
}

impl TopK {
    /// Keeps the `k` most likely tokens of `logits`.
    pub fn of(logits: &[f32], n: &LogSoftmax, k: usize, target: u32) -> TopK {
        let k = k.clamp(1, logits.len());
        let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
        let cmp = |a: &u32, b: &u32| {
            logits[*b as usize]
                .total_cmp(&logits[*a as usize])
                .then(a.cmp(b))
        };
        if k < idx.len() {
            idx.select_nth_unstable_by(k - 1, cmp);
            idx.truncate(k);
            // Without this each kept TopK holds the whole vocabulary's capacity (196 KB for
            // 49 k tokens): 185 k distillation labels took 24 GB and were killed.
            idx.shrink_to_fit();
        }
        idx.sort_unstable_by(cmp);
        let mut in_top = vec![false; logits.len()];
        idx.iter().for_each(|&i| in_top[i as usize] = true);
        let tail = logits
            .iter()
            .zip(&in_top)
            .filter(|(_, &t)| !t)
            .map(|(&l, _)| n.logp(l).exp())
            .sum();
        TopK {
            logp: idx
                .iter()
                .map(|&i| n.logp(logits[i as usize]) as f32)
                .collect(),
            ids: idx,
            tail,
            nll_target: -n.logp(logits[target as usize]),
        }
    }

    pub fn argmax(&self) -> u32 {
        self.ids[0]
    }
}

/// KL divergence of Q from a top-k baseline: the tokens outside the baseline's top k are
/// merged into one bucket on both sides, and the divergence of those coarsened distributions
/// is returned: Σ_topk p_i ln(p_i/q_i) + r ln(r/q_r), with r and q_r the two buckets' masses.
/// Merging outcomes never increases a KL divergence, so this is a lower bound on the exact
/// value; the missing part is r × (the divergence inside the tail), small when r is.
/// `mask` is scratch of n_vocab falses, returned all false.
pub fn kld_topk(base: &TopK, q: &[f32], q_n: &LogSoftmax, mask: &mut [bool]) -> f64 {
    let mut sum = 0.0;
    for (&id, &lp) in base.ids.iter().zip(&base.logp) {
        let lp = lp as f64;
        sum += lp.exp() * (lp - q_n.logp(q[id as usize]));
        mask[id as usize] = true;
    }
    if base.tail > 0.0 {
        let q_tail: f64 = q
            .iter()
            .zip(mask.iter())
            .filter(|(_, &m)| !m)
            .map(|(&l, _)| q_n.logp(l).exp())
            .sum();
        if q_tail > 0.0 {
            sum += base.tail * (base.tail.ln() - q_tail.ln());
        }
    }
    base.ids.iter().for_each(|&id| mask[id as usize] = false);
    sum
}

/// One scored position compared with the baseline.
#[derive(Clone, Copy, Debug)]
pub struct PositionCmp {
    pub nll: f64,
    pub nll_base: f64,
    pub kld: f64,
    pub same_top: bool,
}

/// Running sums in llama-perplexity's `kl_divergence_result`, plus every per-position KLD and
/// Δp for the percentiles.
#[derive(Clone, Debug, Default)]
pub struct KldAccumulator {
    sum_nll: f64,
    sum_nll2: f64,
    sum_nll_base: f64,
    sum_nll_base2: f64,
    sum_nll_nll_base: f64,
    sum_kld: f64,
    sum_kld2: f64,
    sum_p_diff: f64,
    sum_p_diff2: f64,
    sum_p_diff4: f64,
    n_same_top: usize,
    kld_values: Vec<f64>,
    p_diff_values: Vec<f64>,
}

/// A mean and its standard error.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Estimate {
    pub value: f64,
    pub stderr: f64,
}

/// What `ledge eval --baseline` reports (llama-perplexity --kl-divergence's summary).
#[derive(Clone, Debug, Serialize)]
pub struct KldStats {
    pub positions: usize,
    pub ppl_base: Estimate,
    /// ln(PPL(Q)/PPL(base)), with the covariance of the two taken into account.
    pub ln_ppl_ratio: Estimate,
    pub kld_mean: Estimate,
    pub kld_median: f64,
    pub kld_p99: f64,
    pub kld_max: f64,
    pub same_top: Estimate,
    pub rms_dp: Estimate,
    pub mean_dp: Estimate,
    pub max_abs_dp: f64,
}

/// mean and standard error from a sum and a sum of squares, as llama-perplexity computes
/// them (no error below 11 samples).
pub fn mean_and_uncertainty(sum: f64, sum2: f64, count: usize) -> Estimate {
    if count == 0 {
        return Estimate::default();
    }
    let n = count as f64;
    let f = sum / n;
    let df = sum2 / n - f * f;
    let stderr = if df > 0.0 && count > 10 {
        (df / (n - 1.0)).sqrt()
    } else {
        0.0
    };
    Estimate { value: f, stderr }
}

/// The interpolated percentile of sorted values (llama-perplexity's `percentile`).
pub fn percentile(sorted: &[f64], fraction: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    if fraction <= 0.0 {
        return sorted[0];
    }
    if fraction >= 1.0 {
        return sorted[sorted.len() - 1];
    }
    let p = fraction * (sorted.len() - 1) as f64;
    let ip = p as usize;
    let frac = p - ip as f64;
    (1.0 - frac) * sorted[ip] + frac * sorted[(ip + 1).min(sorted.len() - 1)]
}

fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    match n {
        0 => 0.0,
        _ if n.is_multiple_of(2) => 0.5 * (sorted[n / 2] + sorted[n / 2 - 1]),
        _ => sorted[n / 2],
    }
}

impl KldAccumulator {
    pub fn add(&mut self, c: PositionCmp) {
        self.sum_nll += c.nll;
        self.sum_nll2 += c.nll * c.nll;
        self.sum_nll_base += c.nll_base;
        self.sum_nll_base2 += c.nll_base * c.nll_base;
        self.sum_nll_nll_base += c.nll * c.nll_base;
        self.sum_kld += c.kld;
        self.sum_kld2 += c.kld * c.kld;
        let p_diff = (-c.nll).exp() - (-c.nll_base).exp();
        self.sum_p_diff += p_diff;
        let p2 = p_diff * p_diff;
        self.sum_p_diff2 += p2;
        self.sum_p_diff4 += p2 * p2;
        self.n_same_top += c.same_top as usize;
        self.kld_values.push(c.kld);
        self.p_diff_values.push(p_diff);
    }

    pub fn count(&self) -> usize {
        self.kld_values.len()
    }

    pub fn stats(&self) -> KldStats {
        let n = self.count();
        let log_ppl = mean_and_uncertainty(self.sum_nll, self.sum_nll2, n);
        let log_base = mean_and_uncertainty(self.sum_nll_base, self.sum_nll_base2, n);
        let cov = if n < 10 {
            0.0
        } else {
            let nf = n as f64;
            (self.sum_nll_nll_base / nf - (self.sum_nll / nf) * (self.sum_nll_base / nf))
                / (nf - 1.0)
        };
        let ratio_var = log_ppl.stderr.powi(2) + log_base.stderr.powi(2) - 2.0 * cov;
        let ppl_base = log_base.value.exp();
        let mse = mean_and_uncertainty(self.sum_p_diff2, self.sum_p_diff4, n);
        let rms = mse.value.sqrt();
        let same = if n == 0 {
            0.0
        } else {
            self.n_same_top as f64 / n as f64
        };
        let mut kld = self.kld_values.clone();
        kld.sort_by(f64::total_cmp);
        KldStats {
            positions: n,
            ppl_base: Estimate {
                value: ppl_base,
                stderr: ppl_base * log_base.stderr,
            },
            ln_ppl_ratio: Estimate {
                value: log_ppl.value - log_base.value,
                stderr: ratio_var.max(0.0).sqrt(),
            },
            kld_mean: mean_and_uncertainty(self.sum_kld, self.sum_kld2, n),
            kld_median: median(&kld),
            kld_p99: percentile(&kld, 0.99),
            kld_max: kld.last().copied().unwrap_or(0.0),
            same_top: Estimate {
                value: same,
                stderr: if n > 1 {
                    (same * (1.0 - same) / (n - 1) as f64).sqrt()
                } else {
                    0.0
                },
            },
            rms_dp: Estimate {
                value: rms,
                stderr: if rms > 0.0 {
                    0.5 / rms * mse.stderr
                } else {
                    0.0
                },
            },
            mean_dp: mean_and_uncertainty(self.sum_p_diff, self.sum_p_diff2, n),
            max_abs_dp: self
                .p_diff_values
                .iter()
                .fold(0.0f64, |m, &d| m.max(d.abs())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(seed: u64, n: usize, spread: f32) -> Vec<f32> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                ((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * spread
            })
            .collect()
    }

    #[test]
    fn kld_of_a_distribution_with_itself_is_zero_and_positive_otherwise() {
        let a = rows(1, 1000, 12.0);
        let na = LogSoftmax::of(&a);
        assert!(kld_full(&a, &na, &a, &na).abs() < 1e-12);
        let b: Vec<f32> = a
            .iter()
            .zip(rows(2, 1000, 1.0))
            .map(|(x, y)| x + y)
            .collect();
        let nb = LogSoftmax::of(&b);
        assert!(kld_full(&a, &na, &b, &nb) > 1e-4);
    }

    #[test]
    fn kld_full_matches_a_two_token_closed_form() {
        // p = (0.5, 0.5), q = (0.8, 0.2): KL = 0.5 ln(0.5/0.8) + 0.5 ln(0.5/0.2)
        let p = [0.0f32, 0.0];
        let q = [(0.8f32).ln(), (0.2f32).ln()];
        let k = kld_full(&p, &LogSoftmax::of(&p), &q, &LogSoftmax::of(&q));
        let want = 0.5 * (0.5f64 / 0.8).ln() + 0.5 * (0.5f64 / 0.2).ln();
        assert!((k - want).abs() < 1e-6, "{k} vs {want}");
    }

    #[test]
    fn topk_kld_is_exact_with_the_whole_vocabulary_and_a_lower_bound_below_it() {
        let n = 500;
        let mut mask = vec![false; n];
        for seed in 0..20 {
            let a = rows(seed, n, 16.0);
            let b: Vec<f32> = a
                .iter()
                .zip(rows(seed + 100, n, 2.0))
                .map(|(x, y)| x + y)
                .collect();
            let (na, nb) = (LogSoftmax::of(&a), LogSoftmax::of(&b));
            let full = kld_full(&a, &na, &b, &nb);
            let all = TopK::of(&a, &na, n, 3);
            assert!(all.tail.abs() < 1e-12);
            assert!((kld_topk(&all, &b, &nb, &mut mask) - full).abs() < 1e-6);
            let mut prev = 0.0;
            for k in [1, 4, 16, 64, 256] {
                let t = TopK::of(&a, &na, k, 3);
                let approx = kld_topk(&t, &b, &nb, &mut mask);
                assert!(approx <= full + 1e-9, "k={k}: {approx} > {full}");
                assert!(approx >= prev - 1e-9, "more tokens never lower the bound");
                prev = approx;
                assert!(mask.iter().all(|&m| !m));
            }
        }
    }

    #[test]
    fn topk_keeps_the_most_likely_tokens_in_order_and_the_exact_target_nll() {
        let a = [1.0f32, 5.0, 3.0, 5.0, -2.0];
        let na = LogSoftmax::of(&a);
        let t = TopK::of(&a, &na, 3, 4);
        assert_eq!(t.ids, vec![1, 3, 2]);
        assert_eq!(t.argmax(), 1);
        let total: f64 = a.iter().map(|&l| na.logp(l).exp()).sum();
        assert!((total - 1.0).abs() < 1e-12);
        let kept: f64 = t.logp.iter().map(|&l| (l as f64).exp()).sum();
        assert!((kept + t.tail - 1.0).abs() < 1e-6);
        assert!((t.nll_target + na.logp(-2.0)).abs() < 1e-12);
    }

    #[test]
    fn percentiles_interpolate_like_llama_perplexity() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(median(&v), 2.5);
        assert_eq!(median(&v[..3]), 2.0);
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&v, 1.0), 4.0);
        assert!((percentile(&v, 0.5) - 2.5).abs() < 1e-12);
        assert!((percentile(&v, 0.99) - 3.97).abs() < 1e-12);
    }

    #[test]
    fn accumulator_reports_agreement_and_zero_divergence_for_identical_models() {
        let mut acc = KldAccumulator::default();
        for i in 0..50 {
            let nll = 1.0 + (i % 7) as f64 * 0.3;
            acc.add(PositionCmp {
                nll,
                nll_base: nll,
                kld: 0.0,
                same_top: true,
            });
        }
        let s = acc.stats();
        assert_eq!(s.positions, 50);
        assert_eq!(s.kld_mean.value, 0.0);
        assert_eq!(s.same_top.value, 1.0);
        assert_eq!(s.rms_dp.value, 0.0);
        assert!(s.ln_ppl_ratio.value.abs() < 1e-12);
        assert!(s.ln_ppl_ratio.stderr < 1e-6);
    }
}
