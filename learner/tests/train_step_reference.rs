//! `train_step` against brute-force references written from the formulas of design section 4, not
//! from the learner's code: per sample, unpadded forwards; weights and losses in f64 on the host;
//! gradients through autograd of that plain expression. Covers TIS and MIS at token, sequence and
//! geometric level, the `none` correction, and the entropy bonus; plus the entropy's gradient against
//! finite differences and gradient-norm clipping against `torch.nn.utils.clip_grad_norm_`.
// Brute-force references index by position on purpose; settings are built field by field.
#![allow(clippy::needless_range_loop, clippy::field_reassign_with_default)]
mod common;

use alp_learner::{
    completion_log_probs, group_advantages, AdamW, AdamWConfig, AdvantageKind, CorrectionKind,
    Entropy, Group, LearnerSettings, PackedBatch, ParamGroup, PgLearner, RatioLevel, Sample,
    Schedule, TrainablePolicy,
};
use alp_policy::NoHooks;
use alp_test_support::oracle;
use common::{Rng, ToyLm};
use tch::{Kind, Tensor};

/// The reference: `loss/pg`, the gradient norm of the total loss, the MIS-rejected fraction and the
/// number of truncated TIS weights, at the pre-update weights (where every PPO ratio is 1, so the
/// clipped surrogate is `-A w r` with `r = exp(lp - sg(lp))`).
struct Reference {
    pg: f64,
    entropy: f64,
    grad_norm: f64,
    masked_frac: f64,
    truncated: usize,
}

fn brute_force(model: &ToyLm, groups: &[Group], s: &LearnerSettings) -> Reference {
    let c = &s.correction;
    let (mut terms, mut entropy_terms) = (Vec::new(), Vec::new());
    let (mut tokens, mut masked, mut truncated) = (0usize, 0usize, 0usize);
    let (mut pg, mut ent_sum) = (0.0, 0.0);
    for g in groups {
        let rewards: Vec<f64> = g.samples.iter().map(|x| x.reward).collect();
        let adv = group_advantages(&rewards, AdvantageKind::Grpo);
        for (x, a) in g.samples.iter().zip(adv) {
            let lp = common::sample_log_probs(model, x);
            let lp_old = Vec::<f64>::try_from(lp.detach()).unwrap();
            let trained: Vec<usize> = (0..x.loss_mask.len()).filter(|&t| x.loss_mask[t]).collect();
            let d: Vec<f64> = trained
                .iter()
                .map(|&t| lp_old[t] - x.mu[t] as f64)
                .collect();
            // The log IS weight per trained token: its own, or the sequence's (sum or mean).
            let seq_log_w = d.iter().sum::<f64>()
                / if c.geometric {
                    trained.len() as f64
                } else {
                    1.0
                };
            for (k, &t) in trained.iter().enumerate() {
                let log_w = match c.level {
                    RatioLevel::Token => d[k],
                    RatioLevel::Sequence => seq_log_w,
                };
                let w_raw = log_w.clamp(-20.0, 20.0).exp();
                let w = match c.kind {
                    CorrectionKind::Tis => {
                        truncated += usize::from(w_raw > c.tis_cap);
                        w_raw.min(c.tis_cap)
                    }
                    CorrectionKind::Mis => {
                        let keep = c.mis_low <= w_raw && w_raw <= c.mis_high;
                        masked += usize::from(!keep);
                        if keep {
                            w_raw
                        } else {
                            0.0
                        }
                    }
                    _ => 1.0,
                };
                let lp_t = lp.get(t as i64);
                let ratio = (&lp_t - lp_t.detach()).exp();
                terms.push(ratio * (-a * w));
                pg += -a * w;
                tokens += 1;
            }
            if s.loss.entropy_coef != 0.0 {
                let seq: Vec<i64> = x
                    .prompt_ids
                    .iter()
                    .chain(&x.completion_ids)
                    .copied()
                    .collect();
                let n = seq.len() as i64;
                let p = x.prompt_ids.len() as i64;
                let logp = model
                    .forward(&Tensor::from_slice(&seq).view([1, n]), None, &NoHooks)
                    .get(0)
                    .narrow(0, p - 1, x.completion_ids.len() as i64)
                    .log_softmax(-1, Kind::Double);
                for &t in &trained {
                    let row = logp.get(t as i64);
                    let h = -(row.exp() * &row).sum(Kind::Double);
                    ent_sum += h.double_value(&[]);
                    entropy_terms.push(h);
                }
            }
        }
    }
    let n = tokens as f64;
    let mut total = Tensor::stack(&terms, 0).sum(Kind::Double) / n;
    if !entropy_terms.is_empty() {
        total -= Tensor::stack(&entropy_terms, 0).sum(Kind::Double) / n * s.loss.entropy_coef;
    }
    let params: Vec<Tensor> = model
        .params()
        .into_iter()
        .map(|p| p.shallow_clone())
        .collect();
    let grads = Tensor::run_backward(&[total], &params, false, false);
    let grad_norm = grads
        .iter()
        .map(|g| {
            g.to_kind(Kind::Double)
                .square()
                .sum(Kind::Double)
                .double_value(&[])
        })
        .sum::<f64>()
        .sqrt();
    Reference {
        pg: pg / n,
        entropy: ent_sum / n,
        grad_norm,
        masked_frac: masked as f64 / n,
        truncated,
    }
}

fn settings(kind: CorrectionKind, level: RatioLevel, geometric: bool) -> LearnerSettings {
    let mut s = LearnerSettings::default();
    s.correction.kind = kind;
    s.correction.level = level;
    s.correction.geometric = geometric;
    // Bounds that cut into this data's weights, so truncation and masking really happen.
    s.correction.tis_cap = 1.1;
    s.correction.mis_low = 0.8;
    s.correction.mis_high = 1.2;
    s.micro_batch_size = 5;
    s.max_grad_norm = 0.0;
    s
}

fn close(what: &str, got: f64, want: f64, rel: f64) {
    assert!(
        (got - want).abs() <= rel * want.abs().max(1e-6),
        "{what}: train_step {got} vs brute force {want}"
    );
}

#[test]
fn tis_mis_and_none_through_train_step_equal_brute_force() {
    common::init();
    let model = ToyLm::new(8, 16, 2, 21);
    let groups = common::masked_groups(&model, 22, 0.4);
    let cases = [
        (CorrectionKind::Tis, RatioLevel::Token, false),
        (CorrectionKind::Tis, RatioLevel::Sequence, false),
        (CorrectionKind::Tis, RatioLevel::Sequence, true),
        (CorrectionKind::Mis, RatioLevel::Token, false),
        (CorrectionKind::Mis, RatioLevel::Sequence, false),
        (CorrectionKind::Mis, RatioLevel::Sequence, true),
        (CorrectionKind::None, RatioLevel::Token, false),
        (CorrectionKind::None, RatioLevel::Sequence, false),
    ];
    for (kind, level, geometric) in cases {
        let what = format!("{kind} {level:?} geometric={geometric}");
        let s = settings(kind, level, geometric);
        let want = brute_force(&model, &groups, &s);
        match kind {
            CorrectionKind::Tis => assert!(want.truncated > 0, "{what}: nothing truncated"),
            CorrectionKind::Mis => assert!(want.masked_frac > 0.0, "{what}: nothing masked"),
            _ => {}
        }
        let mut learner = PgLearner::new(s, model.deep_clone(), None).unwrap();
        let m = learner.train_step(&groups).unwrap();
        close(&format!("{what} loss/pg"), m["loss/pg"], want.pg, 1e-5);
        close(
            &format!("{what} grad/norm"),
            m["grad/norm"],
            want.grad_norm,
            1e-4,
        );
        close(
            &format!("{what} mask/frac"),
            m["mask/frac"],
            want.masked_frac,
            1e-12,
        );
        // The PPO ratio against lp_old is 1 at the pre-update weights.
        for q in ["min", "max"] {
            close(
                &format!("{what} ratio_loss/{q}"),
                m[&format!("ratio_loss/{q}")],
                1.0,
                1e-5,
            );
        }
        // `ratio/*` is against mu for every correction: not 1 with this noisy mu.
        assert!(
            m["ratio/max"] > 1.01 && m["ratio/min"] < 0.99,
            "{what}: {m:?}"
        );
    }
}

#[test]
fn entropy_bonus_through_train_step_equals_brute_force() {
    common::init();
    let model = ToyLm::new(8, 16, 2, 23);
    let groups = common::masked_groups(&model, 24, 0.4);
    for coef in [0.05, -0.3] {
        let mut s = settings(CorrectionKind::None, RatioLevel::Token, false);
        s.loss.entropy_coef = coef;
        let want = brute_force(&model, &groups, &s);
        let without = brute_force(
            &model,
            &groups,
            &settings(CorrectionKind::None, RatioLevel::Token, false),
        );
        assert!(
            (want.grad_norm - without.grad_norm).abs() > 1e-4,
            "the bonus changes the gradient"
        );
        let mut learner = PgLearner::new(s, model.deep_clone(), None).unwrap();
        let m = learner.train_step(&groups).unwrap();
        close("policy/entropy", m["policy/entropy"], want.entropy, 1e-5);
        close(
            "loss/total",
            m["loss/total"],
            want.pg - coef * want.entropy,
            1e-5,
        );
        close("grad/norm", m["grad/norm"], want.grad_norm, 1e-4);
    }
}

/// The entropy of `softmax(logits / T)` that the learner differentiates, against central finite
/// differences of the same closed form evaluated in f64.
#[test]
fn entropy_gradient_matches_finite_differences() {
    common::init();
    let sample = Sample {
        prompt_ids: vec![1, 2],
        completion_ids: vec![3, 4, 5],
        loss_mask: vec![true, true, true],
        mu: vec![-1.0; 3],
        reward: 0.0,
        policy_version: 0,
    };
    let mut rng = Rng::new(5);
    let vocab = 7;
    let base: Vec<f64> = (0..3 * vocab).map(|_| 2.0 * rng.normal()).collect();
    let entropy_f64 = |x: &[f64], t: f64| -> f64 {
        x.chunks(vocab)
            .map(|row| {
                let m = row.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b / t));
                let lse = m + row.iter().map(|v| (v / t - m).exp()).sum::<f64>().ln();
                -row.iter()
                    .map(|v| (v / t - lse).exp() * (v / t - lse))
                    .sum::<f64>()
            })
            .sum()
    };
    for temperature in [1.0, 0.7] {
        let packed = PackedBatch::pack(&[&sample], &[0.0], tch::Device::Cpu)
            .unwrap()
            .at_temperature(temperature);
        let logits = Tensor::from_slice(&base)
            .to_kind(Kind::Float)
            .view([3, vocab as i64])
            .set_requires_grad(true);
        let (_, ent) = completion_log_probs(&logits, &packed, Entropy::WithGrad);
        let ent = ent.unwrap();
        let value = ent.sum(Kind::Double).double_value(&[]);
        close(
            "entropy value",
            value,
            entropy_f64(&base, temperature),
            1e-5,
        );
        let grad = Tensor::run_backward(&[ent.sum(Kind::Float)], &[&logits], false, false);
        let grad = Vec::<f64>::try_from(grad[0].to_kind(Kind::Double).reshape([-1])).unwrap();
        for i in 0..base.len() {
            let h = 1e-5;
            let (mut up, mut down) = (base.clone(), base.clone());
            up[i] += h;
            down[i] -= h;
            let fd = (entropy_f64(&up, temperature) - entropy_f64(&down, temperature)) / (2.0 * h);
            assert!(
                (grad[i] - fd).abs() < 1e-4,
                "T={temperature} d entropy / d logit {i}: autograd {} vs finite differences {fd}",
                grad[i]
            );
        }
    }
}

/// `AdamW::clip_grad_norm` against `torch.nn.utils.clip_grad_norm_` on the same gradients: the norm it
/// returns and the clipped gradients, below and above the limit.
#[test]
fn grad_norm_clipping_equals_torch() {
    common::init();
    let mut rng = Rng::new(9);
    let shapes: [&[i64]; 3] = [&[4, 3], &[5], &[2, 2, 2]];
    let grads: Vec<Tensor> = shapes
        .iter()
        .map(|s| rng.normal_tensor(s, 1.0).to_kind(Kind::Float))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let named: Vec<(String, Tensor)> = grads
        .iter()
        .enumerate()
        .map(|(i, g)| (format!("g{i}"), g.shallow_clone()))
        .collect();
    let input = dir.path().join("grads.safetensors");
    Tensor::write_safetensors(&named, &input).unwrap();
    for max_norm in [0.5, 100.0] {
        let output = dir.path().join(format!("clipped-{max_norm}.safetensors"));
        let script = format!(
            "import torch, safetensors.torch as st\n\
             g = st.load_file({input:?})\n\
             ps = [torch.nn.Parameter(torch.zeros_like(g[k])) for k in sorted(g)]\n\
             for p, k in zip(ps, sorted(g)): p.grad = g[k].clone()\n\
             n = torch.nn.utils.clip_grad_norm_(ps, {max_norm})\n\
             out = {{k: p.grad for p, k in zip(ps, sorted(g))}}\n\
             out['norm'] = n.reshape(1)\n\
             st.save_file(out, {output:?})\n",
            input = input.to_str().unwrap(),
            output = output.to_str().unwrap(),
        );
        oracle::run(
            oracle::python_command().args(["-c", &script]),
            "torch.nn.utils.clip_grad_norm_",
        );
        let torch: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(&output)
            .unwrap()
            .into_iter()
            .collect();

        let params: Vec<(String, Tensor)> = grads
            .iter()
            .enumerate()
            .map(|(i, g)| {
                let p = g.zeros_like().set_requires_grad(true);
                // Give the parameter exactly this gradient.
                (p.shallow_clone() * g.detach()).sum(Kind::Float).backward();
                (format!("g{i}"), p)
            })
            .collect();
        let mut opt = AdamW::new(
            vec![ParamGroup {
                name: "model".into(),
                params: params
                    .iter()
                    .map(|(n, p)| (n.clone(), p.shallow_clone()))
                    .collect(),
                lr: 0.0,
                weight_decay: 0.0,
            }],
            AdamWConfig::default(),
            Schedule::constant(),
        );
        let norm = opt.clip_grad_norm(max_norm);
        close("norm", norm, torch["norm"].double_value(&[0]), 1e-6);
        for (name, p) in &params {
            let diff = (p.grad() - &torch[name]).abs().max().double_value(&[]);
            assert!(
                diff < 1e-6,
                "max_norm {max_norm} {name}: clipped gradient differs by {diff}"
            );
        }
    }
}
