//! Shared test fixtures: a tiny causal "language model" implementing `TrainablePolicy`, a seeded Rust
//! RNG (tests run in parallel threads, so torch's global generator is never used), and a sampler.
#![allow(dead_code)]

use alp_learner::{Group, Sample, TrainablePolicy};
use alp_policy::{ForwardHooks, LinearKind, LinearSite, Weight};
use tch::{Device, Kind, Tensor};

/// splitmix64-based RNG for fixtures.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x5851_f42d_4c95_7f2d)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// A `[shape]` f64 tensor of N(0, scale^2) entries.
    pub fn normal_tensor(&mut self, shape: &[i64], scale: f64) -> Tensor {
        let n: i64 = shape.iter().product();
        let v: Vec<f64> = (0..n).map(|_| self.normal() * scale).collect();
        Tensor::from_slice(&v).reshape(shape)
    }
}

/// Keep tests light on the shared 2-core machine.
pub fn init() {
    tch::set_num_threads(1);
}

/// A tiny causal LM: embedding, `num_layers` residual blocks mixing each position with the mean of its
/// prefix (so it is causal and padding-safe when right-padded), and an LM head. It calls
/// `hooks.layer_input` before each block's norm and `hooks.logits` at the end, like the real decoder.
pub struct ToyLm {
    pub embed: Tensor,
    pub layers: Vec<(Tensor, Tensor, Tensor)>,
    pub head: Tensor,
    pub vocab: i64,
}

fn rms(x: &Tensor) -> Tensor {
    x * (x.square().mean_dim(-1, true, Kind::Float) + 1e-6).rsqrt()
}

impl ToyLm {
    pub fn new(vocab: i64, hidden: i64, num_layers: usize, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let mut p = |shape: &[i64], scale: f64| {
            rng.normal_tensor(shape, scale)
                .to_kind(Kind::Float)
                .set_requires_grad(true)
        };
        let embed = p(&[vocab, hidden], 1.0);
        let layers = (0..num_layers)
            .map(|_| {
                (
                    p(&[2 * hidden, hidden], 0.3),
                    p(&[2 * hidden], 0.0),
                    p(&[hidden, 2 * hidden], 0.3),
                )
            })
            .collect();
        let head = p(&[vocab, hidden], 0.5);
        Self {
            embed,
            layers,
            head,
            vocab,
        }
    }

    /// A deep copy with the same values (separate storage).
    pub fn deep_clone(&self) -> Self {
        let c = |t: &Tensor| t.detach().copy().set_requires_grad(true);
        Self {
            embed: c(&self.embed),
            layers: self
                .layers
                .iter()
                .map(|(a, b, d)| (c(a), c(b), c(d)))
                .collect(),
            head: c(&self.head),
            vocab: self.vocab,
        }
    }

    pub fn params(&self) -> Vec<&Tensor> {
        let mut v = vec![&self.embed];
        for (a, b, d) in &self.layers {
            v.extend([a, b, d]);
        }
        v.push(&self.head);
        v
    }
}

impl TrainablePolicy for ToyLm {
    fn forward(&self, ids: &Tensor, _mask: Option<&Tensor>, hooks: &dyn ForwardHooks) -> Tensor {
        let (b, s) = ids.size2().unwrap();
        let mut h = self
            .embed
            .index_select(0, &ids.reshape([-1]))
            .reshape([b, s, -1]);
        let pos = Tensor::arange_start(1, s + 1, (Kind::Float, ids.device())).reshape([1, s, 1]);
        for (l, (w1, b1, w2)) in self.layers.iter().enumerate() {
            h = hooks.layer_input(l, h);
            let x = rms(&h);
            let mixed = (&x + x.cumsum(1, Kind::Float) / &pos) * 0.5;
            let up = hooks.linear(
                LinearSite {
                    layer: Some(l),
                    kind: LinearKind::Up,
                },
                &mixed,
                &Weight::new(w1),
                Some(b1),
            );
            let down = hooks.linear(
                LinearSite {
                    layer: Some(l),
                    kind: LinearKind::Down,
                },
                &up.tanh(),
                &Weight::new(w2),
                None,
            );
            h = &h + down;
        }
        let logits = hooks.linear(
            LinearSite {
                layer: None,
                kind: LinearKind::LmHead,
            },
            &rms(&h),
            &Weight::new(&self.head),
            None,
        );
        hooks.logits(logits)
    }

    fn num_layers(&self) -> usize {
        self.layers.len()
    }

    fn trainable_parameters(&self) -> Vec<(String, Tensor)> {
        let mut v = vec![("embed".to_string(), self.embed.shallow_clone())];
        for (l, (a, b, d)) in self.layers.iter().enumerate() {
            v.push((format!("layers.{l}.w1"), a.shallow_clone()));
            v.push((format!("layers.{l}.b1"), b.shallow_clone()));
            v.push((format!("layers.{l}.w2"), d.shallow_clone()));
        }
        v.push(("head".to_string(), self.head.shallow_clone()));
        v
    }

    fn device(&self) -> Device {
        Device::Cpu
    }
}

/// Samples `per_prompt` completions of `len` tokens for each prompt by multinomial sampling from the
/// model's softmax (plus optional Gaussian "inference-engine" noise of scale `logit_noise` on the logits,
/// which makes `mu` differ from the learner's log-probs). `mu` is the log-prob under the distribution
/// actually sampled from; `reward` scores the completion.
pub fn sample_groups<M: TrainablePolicy + ?Sized>(
    model: &M,
    prompts: &[Vec<i64>],
    per_prompt: usize,
    len: usize,
    logit_noise: f64,
    rng: &mut Rng,
    reward: impl Fn(&[i64]) -> f64,
) -> Vec<Group> {
    let rows: Vec<Vec<i64>> = prompts
        .iter()
        .flat_map(|p| std::iter::repeat_n(p.clone(), per_prompt))
        .collect();
    let mut seqs = rows.clone();
    let mut mus: Vec<Vec<f32>> = vec![Vec::new(); rows.len()];
    for _ in 0..len {
        let s = seqs[0].len() as i64;
        let flat: Vec<i64> = seqs.iter().flatten().copied().collect();
        let ids = Tensor::from_slice(&flat).reshape([seqs.len() as i64, s]);
        let last = tch::no_grad(|| {
            model
                .forward(&ids, None, &alp_policy::NoHooks)
                .select(1, s - 1)
        });
        let logits = Vec::<f64>::try_from(last.to_kind(Kind::Double).reshape([-1])).unwrap();
        let vocab = logits.len() / seqs.len();
        for (r, row) in logits.chunks(vocab).enumerate() {
            let noisy: Vec<f64> = row.iter().map(|x| x + logit_noise * rng.normal()).collect();
            let m = noisy.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let lse = m + noisy.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
            let u = rng.uniform();
            let mut acc = 0.0;
            let mut tok = noisy.len() - 1;
            for (i, x) in noisy.iter().enumerate() {
                acc += (x - lse).exp();
                if u < acc {
                    tok = i;
                    break;
                }
            }
            seqs[r].push(tok as i64);
            mus[r].push((noisy[tok] - lse) as f32);
        }
    }
    let samples: Vec<Sample> = seqs
        .iter()
        .zip(&rows)
        .zip(mus)
        .map(|((seq, prompt), mu)| {
            let completion = seq[prompt.len()..].to_vec();
            Sample {
                reward: reward(&completion),
                loss_mask: vec![true; completion.len()],
                prompt_ids: prompt.clone(),
                completion_ids: completion,
                mu,
                policy_version: 0,
            }
        })
        .collect();
    samples
        .chunks(per_prompt)
        .map(|c| Group {
            samples: c.to_vec(),
        })
        .collect()
}

/// Random prompts of `len` tokens.
pub fn random_prompts(n: usize, len: usize, vocab: i64, rng: &mut Rng) -> Vec<Vec<i64>> {
    (0..n)
        .map(|_| (0..len).map(|_| rng.below(vocab as u64) as i64).collect())
        .collect()
}

/// Bitwise equality of two tensors (same shape, kind and bytes).
pub fn bit_equal(a: &Tensor, b: &Tensor) -> bool {
    a.size() == b.size() && a.kind() == b.kind() && a.equal(b)
}

/// A batch of 4 groups of 5 samples from `model` (3-token prompts of an 8-token vocabulary, sampling
/// `noise`, reward the count of token 1), with every third sample's second completion token untrained
/// (a tool reply), so masks and lengths matter.
pub fn masked_groups(model: &ToyLm, seed: u64, noise: f64) -> Vec<Group> {
    let mut rng = Rng::new(seed);
    let prompts = random_prompts(4, 3, 8, &mut rng);
    let mut groups = sample_groups(model, &prompts, 4, 5, noise, &mut rng, |c| {
        c.iter().filter(|&&t| t == 1).count() as f64
    });
    for (i, s) in groups.iter_mut().flat_map(|g| &mut g.samples).enumerate() {
        if i % 3 == 0 {
            s.loss_mask[1] = false;
        }
    }
    groups
}

/// Per-token log-probs (f64 log-softmax) of one sample's completion, from its own unpadded forward
/// (with grad): the reference the learner's padded, batched forwards are checked against.
pub fn sample_log_probs(model: &ToyLm, s: &Sample) -> Tensor {
    let seq: Vec<i64> = s
        .prompt_ids
        .iter()
        .chain(&s.completion_ids)
        .copied()
        .collect();
    let n = seq.len() as i64;
    let logits = model.forward(
        &Tensor::from_slice(&seq).view([1, n]),
        None,
        &alp_policy::NoHooks,
    );
    let p = s.prompt_ids.len() as i64;
    logits
        .get(0)
        .narrow(0, p - 1, s.completion_ids.len() as i64)
        .log_softmax(-1, Kind::Double)
        .gather(
            1,
            &Tensor::from_slice(&s.completion_ids).unsqueeze(1),
            false,
        )
        .squeeze_dim(1)
}
