//! Token sampling: penalties, then top-k, top-p, min-p, temperature, then a draw from a
//! seeded RNG (llama.cpp's default chain order). Temperature 0 is greedy. The same seed and
//! settings give the same tokens.

#[derive(Clone, Debug, PartialEq)]
pub struct SamplerConfig {
    /// 0 = greedy.
    pub temperature: f32,
    /// 0 = off.
    pub top_k: usize,
    /// 1.0 = off.
    pub top_p: f32,
    /// 0.0 = off.
    pub min_p: f32,
    /// 1.0 = off. Logits of recent tokens are divided (if > 0) or multiplied (if < 0) by it.
    pub repeat_penalty: f32,
    /// Subtracted once per occurrence of a token in the window.
    pub frequency_penalty: f32,
    /// Subtracted once if a token occurs in the window.
    pub presence_penalty: f32,
    /// How many recent tokens the penalties look at.
    pub penalty_window: usize,
    pub seed: u64,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            penalty_window: 64,
            seed: 0x5EED,
        }
    }
}

impl SamplerConfig {
    pub fn greedy() -> Self {
        SamplerConfig {
            temperature: 0.0,
            ..Default::default()
        }
    }
}

/// The values a setting accepts. Outside them the chain misbehaves rather than fails: a
/// negative temperature or top-p turns sampling greedy, a zero repeat penalty divides by
/// zero, a negative one flips the sign of the logits, a NaN poisons the softmax. So front
/// ends (the CLI's flags, `SamplerConfig::check`) refuse them by name.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limits {
    pub lo: f32,
    /// Whether `lo` itself is excluded.
    pub lo_open: bool,
    pub hi: f32,
}

impl Limits {
    pub const TEMPERATURE: Limits = Limits::closed(0.0, f32::INFINITY);
    pub const TOP_P: Limits = Limits::closed(0.0, 1.0);
    pub const MIN_P: Limits = Limits::closed(0.0, 1.0);
    pub const REPEAT_PENALTY: Limits = Limits {
        lo: 0.0,
        lo_open: true,
        hi: f32::INFINITY,
    };
    /// Frequency and presence penalties: negative ones favour repeats, which is allowed.
    pub const PENALTY: Limits = Limits::closed(f32::NEG_INFINITY, f32::INFINITY);

    const fn closed(lo: f32, hi: f32) -> Limits {
        Limits {
            lo,
            lo_open: false,
            hi,
        }
    }

    pub fn contains(self, x: f32) -> bool {
        let above = if self.lo_open {
            x > self.lo
        } else {
            x >= self.lo
        };
        x.is_finite() && above && x <= self.hi
    }

    /// `x`, or "must be in [0, 1], got 2".
    pub fn check(self, x: f32) -> Result<f32, String> {
        if self.contains(x) {
            Ok(x)
        } else {
            Err(format!("must be {self}, got {x}"))
        }
    }
}

impl std::fmt::Display for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let op = if self.lo_open { ">" } else { ">=" };
        match (self.lo.is_finite(), self.hi.is_finite()) {
            (true, true) => {
                let open = if self.lo_open { '(' } else { '[' };
                write!(f, "in {open}{}, {}]", self.lo, self.hi)
            }
            (true, false) => write!(f, "{op} {}", self.lo),
            (false, true) => write!(f, "<= {}", self.hi),
            (false, false) => write!(f, "a finite number"),
        }
    }
}

impl SamplerConfig {
    /// Whether every setting is within its `Limits`; the error names the first that is not.
    pub fn check(&self) -> Result<(), String> {
        for (name, limits, x) in [
            ("temperature", Limits::TEMPERATURE, self.temperature),
            ("top_p", Limits::TOP_P, self.top_p),
            ("min_p", Limits::MIN_P, self.min_p),
            (
                "repeat_penalty",
                Limits::REPEAT_PENALTY,
                self.repeat_penalty,
            ),
            ("frequency_penalty", Limits::PENALTY, self.frequency_penalty),
            ("presence_penalty", Limits::PENALTY, self.presence_penalty),
        ] {
            limits.check(x).map_err(|e| format!("{name} {e}"))?;
        }
        Ok(())
    }
}

/// xoshiro256** seeded through splitmix64: small, fast, and the same on every platform.
#[derive(Clone, Debug)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut z = seed;
        let mut next = || {
            z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut x = z;
            x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            x ^ (x >> 31)
        };
        Rng {
            s: [next(), next(), next(), next()],
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        let r = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        r
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

pub struct Sampler {
    pub config: SamplerConfig,
    rng: Rng,
    history: Vec<u32>,
    /// (token, logit) candidates, reused between calls.
    cand: Vec<(u32, f32)>,
}

impl Sampler {
    pub fn new(config: SamplerConfig) -> Sampler {
        Sampler {
            rng: Rng::new(config.seed),
            config,
            history: Vec::new(),
            cand: Vec::new(),
        }
    }

    /// Records tokens the penalties should see (the prompt, then each sampled token).
    pub fn accept(&mut self, token: u32) {
        self.history.push(token);
    }

    pub fn reset(&mut self) {
        self.history.clear();
        self.rng = Rng::new(self.config.seed);
    }

    fn apply_penalties(&self, logits: &mut [f32]) {
        let c = &self.config;
        if c.repeat_penalty == 1.0 && c.frequency_penalty == 0.0 && c.presence_penalty == 0.0 {
            return;
        }
        let start = self.history.len().saturating_sub(c.penalty_window);
        let mut counts: std::collections::HashMap<u32, u32> = Default::default();
        for &t in &self.history[start..] {
            *counts.entry(t).or_default() += 1;
        }
        for (&t, &n) in &counts {
            let Some(l) = logits.get_mut(t as usize) else {
                continue;
            };
            if *l > 0.0 {
                *l /= c.repeat_penalty;
            } else {
                *l *= c.repeat_penalty;
            }
            *l -= n as f32 * c.frequency_penalty + c.presence_penalty;
        }
    }

    /// Picks the next token from one position's logits (modified in place by penalties).
    pub fn sample(&mut self, logits: &mut [f32]) -> u32 {
        self.apply_penalties(logits);
        let c = self.config.clone();
        if c.temperature <= 0.0 {
            return argmax(logits);
        }
        self.cand.clear();
        self.cand
            .extend(logits.iter().enumerate().map(|(i, &l)| (i as u32, l)));
        // top-k (also bounds the sort below)
        let k = if c.top_k == 0 {
            self.cand.len()
        } else {
            c.top_k.min(self.cand.len())
        };
        if k < self.cand.len() {
            self.cand
                .select_nth_unstable_by(k - 1, |a, b| b.1.total_cmp(&a.1));
            self.cand.truncate(k);
        }
        self.cand
            .sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        // probabilities at temperature 1 for top-p / min-p, as llama.cpp applies them first
        let probs = softmax(&self.cand, 1.0);
        let mut keep = self.cand.len();
        if c.top_p < 1.0 {
            let mut cum = 0.0;
            for (i, p) in probs.iter().enumerate() {
                cum += p;
                if cum >= c.top_p as f64 {
                    keep = keep.min(i + 1);
                    break;
                }
            }
        }
        if c.min_p > 0.0 {
            let floor = probs[0] * c.min_p as f64;
            let n = probs.iter().take_while(|&&p| p >= floor).count().max(1);
            keep = keep.min(n);
        }
        self.cand.truncate(keep.max(1));
        let probs = softmax(&self.cand, c.temperature);
        let r = self.rng.next_f64();
        let mut cum = 0.0;
        for (i, p) in probs.iter().enumerate() {
            cum += p;
            if r < cum {
                return self.cand[i].0;
            }
        }
        self.cand[self.cand.len() - 1].0
    }
}

pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

fn softmax(cand: &[(u32, f32)], temp: f32) -> Vec<f64> {
    let max = cand.iter().map(|c| c.1).fold(f32::NEG_INFINITY, f32::max) as f64;
    let e: Vec<f64> = cand
        .iter()
        .map(|c| ((c.1 as f64 - max) / temp as f64).exp())
        .collect();
    let s: f64 = e.iter().sum();
    e.into_iter().map(|x| x / s).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        (0..100)
            .map(|i| ((i * 37 % 100) as f32 * 0.1).sin() * 4.0)
            .collect()
    }

    #[test]
    fn limits_name_the_range_and_the_value() {
        assert_eq!(
            Limits::TOP_P.check(2.0).unwrap_err(),
            "must be in [0, 1], got 2"
        );
        assert_eq!(
            Limits::REPEAT_PENALTY.check(0.0).unwrap_err(),
            "must be > 0, got 0"
        );
        assert_eq!(
            Limits::TEMPERATURE.check(-0.5).unwrap_err(),
            "must be >= 0, got -0.5"
        );
        assert!(Limits::PENALTY.check(f32::NAN).is_err());
        assert_eq!(Limits::MIN_P.check(0.0), Ok(0.0));
        assert!(SamplerConfig::default().check().is_ok());
        let bad = SamplerConfig {
            min_p: 1.5,
            ..Default::default()
        };
        assert_eq!(bad.check().unwrap_err(), "min_p must be in [0, 1], got 1.5");
    }

    #[test]
    fn greedy_is_argmax() {
        let mut l = logits();
        let best = argmax(&l);
        let mut s = Sampler::new(SamplerConfig::greedy());
        assert_eq!(s.sample(&mut l), best);
    }

    #[test]
    fn same_seed_same_tokens_and_different_seed_differs() {
        let run = |seed| {
            let mut s = Sampler::new(SamplerConfig {
                seed,
                temperature: 1.5,
                top_k: 0,
                top_p: 1.0,
                min_p: 0.0,
                ..Default::default()
            });
            (0..50).map(|_| s.sample(&mut logits())).collect::<Vec<_>>()
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
    }

    #[test]
    fn top_k_one_is_greedy_and_penalty_moves_off_a_token() {
        let mut s = Sampler::new(SamplerConfig {
            top_k: 1,
            temperature: 1.0,
            ..Default::default()
        });
        let best = argmax(&logits());
        assert_eq!(s.sample(&mut logits()), best);
        let mut s = Sampler::new(SamplerConfig {
            presence_penalty: 100.0,
            ..SamplerConfig::greedy()
        });
        s.accept(best);
        assert_ne!(s.sample(&mut logits()), best);
    }

    #[test]
    fn min_p_and_top_p_restrict_the_draw() {
        let mut l = vec![-10.0f32; 50];
        l[3] = 5.0;
        l[7] = 4.9;
        for cfg in [
            SamplerConfig {
                min_p: 0.5,
                top_p: 1.0,
                top_k: 0,
                temperature: 5.0,
                ..Default::default()
            },
            SamplerConfig {
                min_p: 0.0,
                top_p: 0.9,
                top_k: 0,
                temperature: 5.0,
                ..Default::default()
            },
        ] {
            let mut s = Sampler::new(cfg);
            for _ in 0..200 {
                let t = s.sample(&mut l.clone());
                assert!(t == 3 || t == 7, "{t}");
            }
        }
    }
}
