//! AdamW in Rust on tch tensors, with state that saves and loads exactly.
//!
//! tch's `nn::AdamW` wraps the C++ optimizer: its moments take the parameter dtype (bf16 moments for
//! bf16 weights) and its state cannot be saved, so a resumed run would restart Adam from zero. Here the
//! moments are always f32, a non-f32 parameter gets an f32 master copy that receives the update (a
//! 1e-6 step would round away in bf16), and all of it round-trips through safetensors bit for bit.
//!
//! The update is PyTorch's `torch.optim.AdamW` (decoupled decay `p *= 1 - lr wd`, `m.lerp_(g, 1 - b1)`,
//! bias-corrected `p -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps)`), with a per-parameter step count. A
//! parameter whose gradient is undefined is skipped, as in PyTorch.
use std::f64::consts::PI;
use std::path::Path;

use tch::{Device, Kind, Tensor};

use crate::error::{LearnerError, Result};
use crate::settings::{LrSchedule, OptimizerSettings};

/// Name of the model's optimizer group (the RL learner's and SFT's).
pub const MODEL_GROUP: &str = "model";

/// A set of parameters sharing a learning rate and a weight decay.
#[derive(Debug)]
pub struct ParamGroup {
    pub name: String,
    pub params: Vec<(String, Tensor)>,
    pub lr: f64,
    pub weight_decay: f64,
}

impl ParamGroup {
    /// The model's parameters ([`MODEL_GROUP`]) at the settings' learning rate and weight decay.
    pub fn model(params: Vec<(String, Tensor)>, s: &OptimizerSettings) -> Self {
        ParamGroup {
            name: MODEL_GROUP.into(),
            params,
            lr: s.lr,
            weight_decay: s.weight_decay,
        }
    }
}

/// Warmup and decay of the learning rate, as a factor on each group's base rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    pub warmup_steps: u64,
    pub kind: LrSchedule,
    pub total_steps: Option<u64>,
    pub min_lr_ratio: f64,
}

impl Schedule {
    /// No warmup, no decay: every step at the base rate.
    pub fn constant() -> Self {
        Schedule {
            warmup_steps: 0,
            kind: LrSchedule::Constant,
            total_steps: None,
            min_lr_ratio: 0.0,
        }
    }

    pub fn from_settings(s: &OptimizerSettings) -> Self {
        Self {
            warmup_steps: s.warmup_steps,
            kind: s.schedule,
            total_steps: s.total_steps,
            min_lr_ratio: s.min_lr_ratio,
        }
    }

    /// The factor for optimizer step `t` (0-based). Warmup starts at `1 / warmup`, not 0, so no step is
    /// wasted at a zero learning rate.
    pub fn factor(&self, t: u64) -> f64 {
        if t < self.warmup_steps {
            return (t + 1) as f64 / self.warmup_steps as f64;
        }
        let span = match (self.kind, self.total_steps) {
            (LrSchedule::Constant, _) | (_, None) => return 1.0,
            (_, Some(total)) => total.saturating_sub(self.warmup_steps).max(1),
        };
        let p = ((t - self.warmup_steps) as f64 / span as f64).min(1.0);
        let m = self.min_lr_ratio;
        match self.kind {
            LrSchedule::Linear => 1.0 - (1.0 - m) * p,
            _ => m + (1.0 - m) * 0.5 * (1.0 + (PI * p).cos()),
        }
    }
}

/// Adam hyper-parameters shared by all groups.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

impl AdamWConfig {
    pub fn from_settings(s: &OptimizerSettings) -> Self {
        AdamWConfig {
            beta1: s.beta1,
            beta2: s.beta2,
            eps: s.eps,
        }
    }
}

impl Default for AdamWConfig {
    /// PyTorch's AdamW defaults.
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }
}

#[derive(Debug)]
struct ParamState {
    name: String,
    param: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    /// f32 copy of a non-f32 parameter; the update lands here and is cast back.
    master: Option<Tensor>,
    steps: i64,
}

#[derive(Debug)]
struct GroupState {
    name: String,
    lr: f64,
    weight_decay: f64,
    params: Vec<ParamState>,
}

/// AdamW over parameter groups.
#[derive(Debug)]
pub struct AdamW {
    groups: Vec<GroupState>,
    cfg: AdamWConfig,
    schedule: Schedule,
    /// Optimizer steps taken (drives the schedule).
    step: u64,
}

const STEP_NAME: &str = "__step__";

impl AdamW {
    pub fn new(groups: Vec<ParamGroup>, cfg: AdamWConfig, schedule: Schedule) -> Self {
        let groups = groups
            .into_iter()
            .map(|g| GroupState {
                params: g
                    .params
                    .into_iter()
                    .map(|(name, param)| {
                        let f32_zeros =
                            || Tensor::zeros(param.size(), (Kind::Float, param.device()));
                        let master = (param.kind() != Kind::Float)
                            .then(|| tch::no_grad(|| param.detach().to_kind(Kind::Float)));
                        ParamState {
                            name,
                            exp_avg: f32_zeros(),
                            exp_avg_sq: f32_zeros(),
                            master,
                            param,
                            steps: 0,
                        }
                    })
                    .collect(),
                name: g.name,
                lr: g.lr,
                weight_decay: g.weight_decay,
            })
            .collect();
        Self {
            groups,
            cfg,
            schedule,
            step: 0,
        }
    }

    /// AdamW over `groups` with the betas, eps and learning-rate schedule of `s`.
    pub fn from_settings(groups: Vec<ParamGroup>, s: &OptimizerSettings) -> Self {
        Self::new(
            groups,
            AdamWConfig::from_settings(s),
            Schedule::from_settings(s),
        )
    }

    /// Optimizer steps taken so far.
    pub fn steps_taken(&self) -> u64 {
        self.step
    }

    /// The learning rate group `group` uses at optimizer step `t`.
    pub fn lr_at(&self, group: &str, t: u64) -> Option<f64> {
        self.groups
            .iter()
            .find(|g| g.name == group)
            .map(|g| g.lr * self.schedule.factor(t))
    }

    /// Zeroes every gradient (in place; undefined ones stay undefined).
    pub fn zero_grad(&mut self) {
        for p in self.groups.iter_mut().flat_map(|g| g.params.iter_mut()) {
            p.param.zero_grad();
        }
    }

    /// Global L2 norm of all defined gradients, accumulated in f32 on the device.
    pub fn grad_norm(&self) -> f64 {
        let mut total: Option<Tensor> = None;
        for p in self.groups.iter().flat_map(|g| g.params.iter()) {
            let g = p.param.grad();
            if !g.defined() {
                continue;
            }
            let sq = g.to_kind(Kind::Float).square().sum(Kind::Float);
            total = Some(match total {
                Some(t) => t + sq,
                None => sq,
            });
        }
        total.map_or(0.0, |t| f64::try_from(t.sqrt()).unwrap_or(f64::NAN))
    }

    /// Scales gradients so that their global norm is at most `max_norm` (0 disables) and returns the
    /// norm before clipping.
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> f64 {
        let norm = self.grad_norm();
        if max_norm > 0.0 && norm.is_finite() && norm > max_norm {
            let coef = max_norm / (norm + 1e-6);
            tch::no_grad(|| {
                for p in self.groups.iter().flat_map(|g| g.params.iter()) {
                    let mut g = p.param.grad();
                    if g.defined() {
                        let _ = g.g_mul_scalar_(coef);
                    }
                }
            });
        }
        norm
    }

    /// One AdamW step on every parameter with a defined gradient.
    pub fn step(&mut self) {
        let AdamWConfig { beta1, beta2, eps } = self.cfg;
        let factor = self.schedule.factor(self.step);
        tch::no_grad(|| {
            for group in &mut self.groups {
                let lr = group.lr * factor;
                let wd = group.weight_decay;
                for p in &mut group.params {
                    let grad = p.param.grad();
                    if !grad.defined() {
                        continue;
                    }
                    let g = grad.to_kind(Kind::Float);
                    p.steps += 1;
                    let bc1 = 1.0 - beta1.powi(p.steps as i32);
                    let bc2 = 1.0 - beta2.powi(p.steps as i32);
                    let mut target = match &p.master {
                        Some(m) => m.shallow_clone(),
                        None => p.param.shallow_clone(),
                    };
                    if wd != 0.0 {
                        let _ = target.g_mul_scalar_(1.0 - lr * wd);
                    }
                    let _ = p.exp_avg.lerp_(&g, 1.0 - beta1);
                    let _ = p.exp_avg_sq.g_mul_scalar_(beta2);
                    let _ = p.exp_avg_sq.g_add_(&(g.square() * (1.0 - beta2)));
                    let denom = p.exp_avg_sq.sqrt() / bc2.sqrt() + eps;
                    let _ = target.g_sub_(&(&p.exp_avg / denom * (lr / bc1)));
                    if p.master.is_some() {
                        p.param.copy_(&target);
                    }
                }
            }
        });
        self.step += 1;
    }

    /// All state as named tensors: `{group}/{param}/{exp_avg|exp_avg_sq|master|steps}` and `__step__`.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let cpu = |t: &Tensor| t.detach().to_device(Device::Cpu).contiguous();
        let mut out = vec![(
            STEP_NAME.to_string(),
            Tensor::from_slice(&[self.step as i64]),
        )];
        for g in &self.groups {
            for p in &g.params {
                let base = format!("{}/{}", g.name, p.name);
                out.push((format!("{base}/exp_avg"), cpu(&p.exp_avg)));
                out.push((format!("{base}/exp_avg_sq"), cpu(&p.exp_avg_sq)));
                if let Some(m) = &p.master {
                    out.push((format!("{base}/master"), cpu(m)));
                }
                out.push((format!("{base}/steps"), Tensor::from_slice(&[p.steps])));
            }
        }
        out
    }

    /// Writes the state to a safetensors file.
    pub fn save(&self, path: &Path) -> Result<()> {
        Ok(Tensor::write_safetensors(&self.state_tensors(), path)?)
    }

    /// Restores state written by [`AdamW::save`] for the same groups and parameter shapes.
    pub fn load(&mut self, path: &Path) -> Result<()> {
        let saved: std::collections::HashMap<String, Tensor> =
            Tensor::read_safetensors(path)?.into_iter().collect();
        let get = |name: &str| {
            saved.get(name).ok_or_else(|| {
                LearnerError::State(format!("{} has no tensor {name}", path.display()))
            })
        };
        let scalar = |t: &Tensor| i64::try_from(t.reshape([-1]).get(0)).map_err(LearnerError::from);
        let expected = 1 + self
            .groups
            .iter()
            .flat_map(|g| &g.params)
            .map(|p| 3 + usize::from(p.master.is_some()))
            .sum::<usize>();
        if saved.len() != expected {
            return Err(LearnerError::State(format!(
                "{} holds {} tensors, this optimizer has {expected}",
                path.display(),
                saved.len()
            )));
        }
        let step = scalar(get(STEP_NAME)?)?;
        tch::no_grad(|| -> Result<()> {
            for g in &mut self.groups {
                for p in &mut g.params {
                    let base = format!("{}/{}", g.name, p.name);
                    let copy_into = |dst: &mut Tensor, name: String| -> Result<()> {
                        let src = get(&name)?;
                        if src.size() != dst.size() || src.kind() != dst.kind() {
                            return Err(LearnerError::State(format!(
                                "{name}: saved {:?} {:?}, expected {:?} {:?}",
                                src.size(),
                                src.kind(),
                                dst.size(),
                                dst.kind()
                            )));
                        }
                        dst.f_copy_(src)?;
                        Ok(())
                    };
                    copy_into(&mut p.exp_avg, format!("{base}/exp_avg"))?;
                    copy_into(&mut p.exp_avg_sq, format!("{base}/exp_avg_sq"))?;
                    if let Some(m) = &mut p.master {
                        copy_into(m, format!("{base}/master"))?;
                    }
                    p.steps = scalar(get(&format!("{base}/steps"))?)?;
                }
            }
            Ok(())
        })?;
        self.step = step as u64;
        Ok(())
    }
}
