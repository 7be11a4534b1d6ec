//! `[learner.eggroll]`: the evolution-strategies learner's settings, refused with the field's path
//! when they make no sense (the model-dependent checks, rank and parameter patterns, are in
//! [`EggrollSettings::check_against`]).
use alp_macros::string_enum;
use serde::{Deserialize, Serialize};

use crate::settings_error::{check, SettingsError};

use super::population::EvolvedMatrix;

string_enum! {
    /// What the ES gradient estimate feeds.
    pub enum EsOptimizer {
        /// `W += lr g`.
        Sgd => "sgd",
        /// Adam ascent on `g` (bias-corrected moments, no weight decay).
        Adam => "adam",
    }
}

string_enum! {
    /// How raw member rewards become update weights (see [`super::FitnessShaping`]).
    pub enum FitnessKind {
        /// Per-prompt group mean subtracted, divided by the global std (the reference LLM runs).
        Group => "group",
        ZScore => "zscore",
        Rank => "rank",
    }
}

/// The `[learner.eggroll]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EggrollSettings {
    /// Members per ES step (even: antithetic pairs); 0 means one per batch row (prompts x group).
    pub population: usize,
    pub rank: i64,
    pub sigma: f64,
    /// With SGD one weight moves about `lr / (sigma sqrt(N))` per step (`N` members): the step size
    /// that matters, so the default (1e-5) suits sigma 1e-3 with a few hundred members.
    pub lr: f64,
    pub optimizer: EsOptimizer,
    pub fitness: FitnessKind,
    /// 0: the same noise forever; 1: fresh every step; k: fresh every k steps.
    pub noise_reuse: u64,
    /// Rollouts per member (their mean reward is its fitness).
    pub samples_per_member: usize,
    /// Sampling temperature of the members' rollouts; 0 is greedy (exploration from parameter noise).
    pub temperature: f64,
    /// Which matrices evolve: substrings of HF parameter names (`"mlp."`, `"layers.3."`); empty
    /// means every 2-D projection.
    pub params: Vec<String>,
    /// Adam moments (with `optimizer = "adam"`).
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

impl Default for EggrollSettings {
    fn default() -> Self {
        EggrollSettings {
            population: 0,
            rank: 1,
            sigma: 1e-3,
            lr: 1e-5,
            optimizer: EsOptimizer::Sgd,
            fitness: FitnessKind::Group,
            noise_reuse: 1,
            samples_per_member: 1,
            temperature: 0.0,
            params: Vec::new(),
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }
}

impl EggrollSettings {
    /// Checks that need no model.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let p = self.population;
        check(p.is_multiple_of(2), "eggroll.population", || {
            format!(
                "is {p}: antithetic pairs need an even population (or 0: one member per batch row)"
            )
        })?;
        let r = self.rank;
        check(r >= 1, "eggroll.rank", || format!("must be >= 1, got {r}"))?;
        let s = self.sigma;
        check(s.is_finite() && s > 0.0, "eggroll.sigma", || {
            format!("must be > 0, got {s} (the scale of the weight perturbations, e.g. 1e-3)")
        })?;
        let lr = self.lr;
        check(lr.is_finite() && lr > 0.0, "eggroll.lr", || {
            format!("must be > 0, got {lr}")
        })?;
        check(
            self.samples_per_member >= 1,
            "eggroll.samples_per_member",
            || "must be >= 1".into(),
        )?;
        let t = self.temperature;
        check(t.is_finite() && t >= 0.0, "eggroll.temperature", || {
            format!("must be >= 0 (0 is greedy), got {t}")
        })?;
        for (b, field) in [(self.beta1, "eggroll.beta1"), (self.beta2, "eggroll.beta2")] {
            check((0.0..1.0).contains(&b), field, || {
                format!("must be in [0, 1), got {b}")
            })?;
        }
        let e = self.eps;
        check(e.is_finite() && e > 0.0, "eggroll.eps", || {
            format!("must be > 0, got {e}")
        })
    }

    /// The matrices of `all` that evolve under `params`, refusing a pattern that matches none and a
    /// rank above a chosen matrix's smaller side.
    pub fn check_against(
        &self,
        all: &[EvolvedMatrix],
    ) -> Result<Vec<EvolvedMatrix>, SettingsError> {
        for pattern in &self.params {
            check(
                all.iter().any(|m| m.name.contains(pattern.as_str())),
                "eggroll.params",
                || {
                    format!(
                        "\"{pattern}\" matches no 2-D projection of the model (for example {}); \
                     patterns are substrings of HF parameter names",
                        all.first().map_or("none", |m| m.name.as_str())
                    )
                },
            )?;
        }
        let chosen: Vec<EvolvedMatrix> = all
            .iter()
            .filter(|m| {
                self.params.is_empty() || self.params.iter().any(|p| m.name.contains(p.as_str()))
            })
            .cloned()
            .collect();
        for m in &chosen {
            let side = m.m.min(m.n);
            check(self.rank <= side, "eggroll.rank", || {
                format!(
                    "is {} but {} is {} x {}: the rank must be at most {side}",
                    self.rank, m.name, m.m, m.n
                )
            })?;
        }
        Ok(chosen)
    }
}
