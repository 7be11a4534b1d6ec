//! The evolution-strategies learner: one ES step from the members' raw fitness.
use std::collections::BTreeMap;
use std::path::Path;

use alp_policy::CausalLM;
use tch::{Device, Kind, Tensor};

use crate::error::{LearnerError, Result};
use crate::metric_names as names;
use crate::settings_error::SettingsError;

use super::factors::noise_epoch;
use super::fitness::{shape_fitness, FitnessShaping};
use super::population::{evolved_matrices, EvolvedMatrix, Population};
use super::settings::{EggrollSettings, EsOptimizer, FitnessKind};
use super::update::es_gradient;

/// Owns the evolved matrices of a policy (shared storage: updates change the model) and the optimizer.
pub struct EsLearner {
    settings: EggrollSettings,
    seed: u64,
    matrices: Vec<EvolvedMatrix>,
    params: Vec<Tensor>,
    /// Adam's first and second moments per matrix.
    moments: Option<Vec<(Tensor, Tensor)>>,
    step: u64,
    device: Device,
}

/// What one ES step reports.
pub struct EsStep {
    /// `es/*`.
    pub metrics: BTreeMap<String, f64>,
    /// One value per member: the weights of the update (the raw fitness after the settings' shaping).
    pub shaped_fitness: Vec<f64>,
}

impl EsLearner {
    /// Validates the settings against `policy` (f32 weights: ES steps of `lr * g` would vanish in bf16).
    pub fn new(settings: EggrollSettings, seed: u64, policy: &CausalLM) -> Result<Self> {
        settings.validate()?;
        if policy.kind() != Kind::Float {
            return Err(SettingsError::new(
                "eggroll",
                format!(
                    "evolves f32 weights, the model is {:?}: set model.train_dtype = \"f32\"",
                    policy.kind()
                ),
            )
            .into());
        }
        let matrices = settings.check_against(&evolved_matrices(policy))?;
        let by_name: std::collections::HashMap<String, Tensor> =
            policy.named_parameters().into_iter().collect();
        let params: Vec<Tensor> = matrices
            .iter()
            .map(|m| by_name[&m.name].shallow_clone())
            .collect();
        let moments = (settings.optimizer == EsOptimizer::Adam).then(|| {
            params
                .iter()
                .map(|p| (p.zeros_like(), p.zeros_like()))
                .collect()
        });
        Ok(EsLearner {
            settings,
            seed,
            matrices,
            params,
            moments,
            step: 0,
            device: policy.device(),
        })
    }

    pub fn settings(&self) -> &EggrollSettings {
        &self.settings
    }

    /// ES steps completed.
    pub fn step(&self) -> u64 {
        self.step
    }

    pub fn matrices(&self) -> &[EvolvedMatrix] {
        &self.matrices
    }

    /// The population of the next step: the noise its members generate with.
    pub fn population(&self) -> Population {
        Population {
            seed: self.seed,
            epoch: noise_epoch(self.step, self.settings.noise_reuse),
            sigma: self.settings.sigma,
            rank: self.settings.rank,
            matrices: self.matrices.clone(),
        }
    }

    /// The fitness shaping of the settings, for fitness groups of `group_size` members.
    fn shaping(&self, group_size: usize) -> FitnessShaping {
        match self.settings.fitness {
            FitnessKind::Group => FitnessShaping::Group { size: group_size },
            FitnessKind::ZScore => FitnessShaping::ZScore,
            FitnessKind::Rank => FitnessShaping::Rank,
        }
    }

    /// One ES step: shapes `raw_fitness` (one value per member, members in order; `group_size`
    /// consecutive members answer one prompt), applies the update, returns the `es/*` metrics and
    /// the shaped fitness the update weighted the members by.
    pub fn update(&mut self, raw_fitness: &[f64], group_size: usize) -> Result<EsStep> {
        let n = raw_fitness.len();
        let want = self.settings.population;
        if n < 2 || !n.is_multiple_of(2) || (want > 0 && n != want) {
            return Err(LearnerError::Batch(format!(
                "an ES step needs an even population{}; got {n} fitness values",
                if want > 0 {
                    format!(" of {want}")
                } else {
                    String::new()
                }
            )));
        }
        if let Some(f) = raw_fitness.iter().find(|f| !f.is_finite()) {
            return Err(LearnerError::Batch(format!("fitness {f} is not finite")));
        }
        let shaped = shape_fitness(raw_fitness, self.shaping(group_size));
        let population = self.population();
        let s = &self.settings;
        let t = (self.step + 1) as i32;
        let mut norm_sq = 0.0;
        tch::no_grad(|| {
            for (k, (mat, param)) in self.matrices.iter().zip(&self.params).enumerate() {
                let g = es_gradient(&population, mat, &shaped, self.device);
                let delta = match &mut self.moments {
                    None => g * s.lr,
                    Some(moments) => {
                        let (m, v) = &mut moments[k];
                        *m = &*m * s.beta1 + &g * (1.0 - s.beta1);
                        *v = &*v * s.beta2 + g.square() * (1.0 - s.beta2);
                        let m_hat = &*m / (1.0 - s.beta1.powi(t));
                        let v_hat = &*v / (1.0 - s.beta2.powi(t));
                        m_hat / (v_hat.sqrt() + s.eps) * s.lr
                    }
                };
                norm_sq += delta.square().sum(Kind::Double).double_value(&[]);
                let mut p = param.shallow_clone();
                let _ = p.g_add_(&delta);
            }
        });
        self.step += 1;
        let mut out = BTreeMap::new();
        let mean = raw_fitness.iter().sum::<f64>() / n as f64;
        let var = raw_fitness.iter().map(|f| (f - mean).powi(2)).sum::<f64>() / n as f64;
        out.insert(names::ES_FITNESS_MEAN.into(), mean);
        out.insert(names::ES_FITNESS_STD.into(), var.sqrt());
        out.insert(
            names::ES_FITNESS_MAX.into(),
            raw_fitness
                .iter()
                .copied()
                .fold(f64::NEG_INFINITY, f64::max),
        );
        out.insert(
            names::ES_FITNESS_MIN.into(),
            raw_fitness.iter().copied().fold(f64::INFINITY, f64::min),
        );
        out.insert(names::ES_UPDATE_NORM.into(), norm_sq.sqrt());
        out.insert(names::ES_SIGMA.into(), s.sigma);
        out.insert(names::ES_POPULATION.into(), n as f64);
        out.insert(names::ES_RANK.into(), s.rank as f64);
        Ok(EsStep {
            metrics: out,
            shaped_fitness: shaped,
        })
    }

    /// Writes the step counter and Adam's moments to `dir/eggroll.safetensors` (the weights are the
    /// caller's checkpoint; the noise needs nothing: it is a function of seed and step).
    pub fn save_state(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| LearnerError::Io {
            path: dir.display().to_string(),
            source: e,
        })?;
        let mut tensors = vec![("step".to_string(), Tensor::from_slice(&[self.step as i64]))];
        if let Some(moments) = &self.moments {
            for (mat, (m, v)) in self.matrices.iter().zip(moments) {
                tensors.push((format!("m.{}", mat.name), m.to_device(Device::Cpu)));
                tensors.push((format!("v.{}", mat.name), v.to_device(Device::Cpu)));
            }
        }
        Tensor::write_safetensors(&tensors, dir.join("eggroll.safetensors"))?;
        Ok(())
    }

    /// Restores what [`EsLearner::save_state`] wrote.
    pub fn load_state(&mut self, dir: &Path) -> Result<()> {
        let path = dir.join("eggroll.safetensors");
        let saved: std::collections::HashMap<String, Tensor> =
            Tensor::read_safetensors(&path)?.into_iter().collect();
        let missing = |name: &str| LearnerError::State(format!("{} has no {name}", path.display()));
        self.step = saved
            .get("step")
            .ok_or_else(|| missing("step"))?
            .int64_value(&[0]) as u64;
        if let Some(moments) = &mut self.moments {
            for (mat, (m, v)) in self.matrices.iter().zip(moments.iter_mut()) {
                let key_m = format!("m.{}", mat.name);
                let key_v = format!("v.{}", mat.name);
                *m = saved
                    .get(&key_m)
                    .ok_or_else(|| missing(&key_m))?
                    .to_device(self.device);
                *v = saved
                    .get(&key_v)
                    .ok_or_else(|| missing(&key_v))?
                    .to_device(self.device);
            }
        }
        Ok(())
    }
}
