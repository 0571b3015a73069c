//! Choosing the next token: logit bias, repetition/presence/frequency penalties, temperature,
//! top-k, top-p, and a seeded generator so that the same seed and request give the same text.

use std::collections::HashMap;

/// How to pick tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// Nucleus mass (1 disables).
    pub top_p: f32,
    /// Keep only the k most likely tokens (0 disables).
    pub top_k: usize,
    /// Seed; `None` draws one.
    pub seed: Option<u64>,
    /// Subtracted once from every token already generated (OpenAI semantics).
    pub presence_penalty: f32,
    /// Subtracted per occurrence of a token already generated.
    pub frequency_penalty: f32,
    /// Divides positive (multiplies negative) logits of tokens in prompt or output (1 disables).
    pub repetition_penalty: f32,
    /// Added to the logits of these token ids.
    pub logit_bias: HashMap<u32, f32>,
    /// Keep generating through end-of-sequence tokens (fixed-length benchmark runs).
    pub ignore_eos: bool,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            seed: None,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            repetition_penalty: 1.0,
            logit_bias: HashMap::new(),
            ignore_eos: false,
        }
    }
}

/// SplitMix64: tiny, fast and reproducible across platforms and versions.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// The sampling state of one sequence.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
    counts: HashMap<u32, u32>,
}

impl Sampler {
    /// A sampler; without a seed one is drawn from the clock.
    pub fn new(params: SamplingParams) -> Self {
        let seed = params.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0x5EED)
        });
        Self {
            params,
            rng: Rng(seed),
            counts: HashMap::new(),
        }
    }

    /// Whether no logits are needed beyond the argmax.
    pub fn is_plain_greedy(&self) -> bool {
        self.params.temperature <= 0.0
            && self.params.logit_bias.is_empty()
            && self.params.presence_penalty == 0.0
            && self.params.frequency_penalty == 0.0
            && self.params.repetition_penalty == 1.0
    }

    /// Whether end-of-sequence tokens are ignored.
    pub fn ignores_eos(&self) -> bool {
        self.params.ignore_eos
    }

    /// Records a generated token (for the penalties).
    pub fn observe(&mut self, token: u32) {
        *self.counts.entry(token).or_insert(0) += 1;
    }

    /// Picks the next token from `logits`; `prompt` feeds the repetition penalty.
    pub fn sample(&mut self, logits: &mut [f32], prompt: &[u32]) -> u32 {
        let p = &self.params;
        for (&id, &bias) in &p.logit_bias {
            if let Some(l) = logits.get_mut(id as usize) {
                *l += bias;
            }
        }
        if p.repetition_penalty != 1.0 {
            // Once per distinct token, however often it occurs.
            let seen: std::collections::HashSet<u32> =
                prompt.iter().chain(self.counts.keys()).copied().collect();
            for id in seen {
                if let Some(l) = logits.get_mut(id as usize) {
                    *l = if *l > 0.0 {
                        *l / p.repetition_penalty
                    } else {
                        *l * p.repetition_penalty
                    };
                }
            }
        }
        if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
            for (&id, &n) in &self.counts {
                if let Some(l) = logits.get_mut(id as usize) {
                    *l -= p.presence_penalty + p.frequency_penalty * n as f32;
                }
            }
        }
        // NaN never wins; a +inf logit (a huge bias) wins outright.
        for l in logits.iter_mut() {
            if l.is_nan() {
                *l = f32::NEG_INFINITY;
            }
        }
        if p.temperature <= 0.0 || logits.contains(&f32::INFINITY) {
            return argmax(logits);
        }
        if p.top_k == 0 && p.top_p >= 1.0 {
            return self.sample_full(logits);
        }
        // Candidates sorted by logit, cut by top-k.
        let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
        let k = if p.top_k == 0 {
            logits.len()
        } else {
            p.top_k.min(logits.len())
        };
        let by_logit_desc = |a: &u32, b: &u32| logits[*b as usize].total_cmp(&logits[*a as usize]);
        if k < idx.len() {
            idx.select_nth_unstable_by(k - 1, by_logit_desc);
            idx.truncate(k);
        }
        idx.sort_unstable_by(by_logit_desc);
        let max = logits[idx[0] as usize];
        let mut probs: Vec<f32> = idx
            .iter()
            .map(|&i| ((logits[i as usize] - max) / p.temperature).exp())
            .collect();
        let total: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|x| *x /= total);
        // Top-p: the smallest prefix whose mass reaches top_p.
        let mut keep = probs.len();
        if p.top_p < 1.0 {
            let mut acc = 0.0;
            for (i, &pr) in probs.iter().enumerate() {
                acc += pr;
                if acc >= p.top_p {
                    keep = i + 1;
                    break;
                }
            }
        }
        let mass: f32 = probs[..keep].iter().sum();
        let mut r = self.rng.next_f32() * mass;
        for (i, &pr) in probs[..keep].iter().enumerate() {
            r -= pr;
            if r <= 0.0 {
                return idx[i];
            }
        }
        idx[keep - 1]
    }
}

impl Sampler {
    /// Samples from the whole distribution in two passes, without sorting.
    fn sample_full(&mut self, logits: &[f32]) -> u32 {
        let t = self.params.temperature;
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        if !max.is_finite() {
            return argmax(logits);
        }
        let total: f32 = logits.iter().map(|l| ((l - max) / t).exp()).sum();
        let mut r = self.rng.next_f32() * total;
        for (i, l) in logits.iter().enumerate() {
            r -= ((l - max) / t).exp();
            if r <= 0.0 {
                return i as u32;
            }
        }
        argmax(logits)
    }
}

/// Index of the largest value (the first one on ties).
pub fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        vec![1.0, 3.0, 2.0, 0.5, 2.9]
    }

    #[test]
    fn greedy_takes_the_max() {
        let mut s = Sampler::new(SamplingParams {
            temperature: 0.0,
            ..Default::default()
        });
        assert_eq!(s.sample(&mut logits(), &[]), 1);
    }

    #[test]
    fn same_seed_same_choices() {
        let params = SamplingParams {
            seed: Some(7),
            ..Default::default()
        };
        let draw = |params: &SamplingParams| {
            let mut s = Sampler::new(params.clone());
            (0..50)
                .map(|_| s.sample(&mut logits(), &[]))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(&params), draw(&params));
        let other = SamplingParams {
            seed: Some(8),
            ..Default::default()
        };
        assert_ne!(draw(&params), draw(&other));
    }

    #[test]
    fn top_k_one_is_greedy_and_top_p_cuts_the_tail() {
        let mut s = Sampler::new(SamplingParams {
            top_k: 1,
            seed: Some(1),
            ..Default::default()
        });
        assert!((0..20).all(|_| s.sample(&mut logits(), &[]) == 1));
        let mut s = Sampler::new(SamplingParams {
            top_p: 0.5,
            seed: Some(1),
            ..Default::default()
        });
        // Tokens 1 and 4 hold over half the mass; 0 and 3 never appear.
        assert!((0..200).all(|_| matches!(s.sample(&mut logits(), &[]), 1 | 4)));
    }

    #[test]
    fn non_finite_logits_do_not_pick_the_worst_token() {
        let mut s = Sampler::new(SamplingParams {
            seed: Some(3),
            ..Default::default()
        });
        let mut with_nan = vec![1.0, f32::NAN, 5.0, 0.0];
        assert!((0..50).all(|_| s.sample(&mut with_nan.clone(), &[]) != 1));
        with_nan[3] = f32::INFINITY;
        assert_eq!(
            s.sample(&mut with_nan, &[]),
            3,
            "a +inf logit wins outright"
        );
    }

    #[test]
    fn repetition_penalty_applies_once_per_distinct_token() {
        let mut s = Sampler::new(SamplingParams {
            temperature: 0.0,
            repetition_penalty: 2.0,
            ..Default::default()
        });
        // Token 1 appears many times in the prompt: penalised once (3.0 / 2 = 1.5 > 1.0).
        let mut l = vec![1.0, 3.0, 0.0];
        assert_eq!(s.sample(&mut l, &[1; 20]), 1);
    }

    #[test]
    fn penalties_push_repeats_down() {
        let mut s = Sampler::new(SamplingParams {
            temperature: 0.0,
            frequency_penalty: 2.0,
            ..Default::default()
        });
        s.observe(1);
        assert_eq!(s.sample(&mut logits(), &[]), 4);
        let mut s = Sampler::new(SamplingParams {
            temperature: 0.0,
            repetition_penalty: 2.0,
            ..Default::default()
        });
        assert_eq!(s.sample(&mut logits(), &[1]), 4);
    }
}
