//! The population forward: member `i`'s projection is `x W^T + s_i (sigma / sqrt r) (x B_i) A_i^T`,
//! with the base product `x W^T` shared by every row of the batch.
use std::collections::HashMap;

use alp_policy::names;
use alp_policy::params::parameter_specs;
use alp_policy::{CausalLM, ForwardHooks, LinearSite, MemberHooks, ModelConfig, RowHooks, Weight};
use tch::{Device, Kind, Tensor};

use super::factors::{factors, param_id, sign, FactorKey};

/// A matrix that evolves: its HF name, shape `m x n` (`[out, in]`) and noise id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvolvedMatrix {
    pub name: String,
    pub m: i64,
    pub n: i64,
    pub id: u64,
}

/// Every 2-D projection of `model` (attention, MLP, an untied LM head), in name order. Norms, biases
/// and the embedding stay frozen; a tied LM head *is* the embedding and so stays frozen too.
pub fn evolved_matrices(model: &CausalLM) -> Vec<EvolvedMatrix> {
    evolved(
        model
            .named_parameters()
            .into_iter()
            .map(|(name, t)| (name, t.size())),
    )
}

/// The matrices [`evolved_matrices`] picks for a model of this config, without building the model:
/// what `[learner.eggroll]` is checked against ([`super::EggrollSettings::check_against`]) before a
/// run loads anything.
pub fn evolved_matrices_of(config: &ModelConfig) -> Vec<EvolvedMatrix> {
    evolved(
        parameter_specs(config)
            .into_iter()
            .map(|spec| (spec.name, spec.shape)),
    )
}

fn evolved(params: impl Iterator<Item = (String, Vec<i64>)>) -> Vec<EvolvedMatrix> {
    let embedding = names::embed_tokens().weight();
    let mut out: Vec<EvolvedMatrix> = params
        .filter(|(name, shape)| shape.len() == 2 && name.ends_with(".weight") && *name != embedding)
        .map(|(name, shape)| EvolvedMatrix {
            id: param_id(&name),
            m: shape[0],
            n: shape[1],
            name,
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// One ES epoch's population: which noise, how large, on which matrices.
#[derive(Debug, Clone, PartialEq)]
pub struct Population {
    pub seed: u64,
    /// The noise epoch (see [`super::noise_epoch`]).
    pub epoch: u64,
    pub sigma: f64,
    pub rank: i64,
    pub matrices: Vec<EvolvedMatrix>,
}

impl Population {
    /// The factor key of `member`'s pair for `matrix`.
    pub fn key(&self, matrix: &EvolvedMatrix, member: usize) -> FactorKey {
        FactorKey {
            seed: self.seed,
            epoch: self.epoch,
            pair: (member / 2) as u64,
            param: matrix.id,
        }
    }

    /// Member `member`'s perturbation of `matrix`, materialised: `s_i (sigma / sqrt r) A_i B_i^T`
    /// (`[m, n]` f32). For tests and references; the forward and the update never build it.
    pub fn perturbation(&self, matrix: &EvolvedMatrix, member: usize, device: Device) -> Tensor {
        let (a, b) = factors(
            self.key(matrix, member),
            matrix.m,
            matrix.n,
            self.rank,
            device,
        );
        a.matmul(&b.tr()) * (sign(member) * self.sigma / (self.rank as f64).sqrt())
    }
}

/// The factors of the members one generation call uses, stacked per matrix (`r (m + n)` floats per
/// member and matrix, alive for the call only), and which member serves each request.
pub struct PopulationFactors {
    /// Matrix name to (`A` scaled by `s_i sigma / sqrt r`: `[members, m, r]`, `B`: `[members, n, r]`).
    per_matrix: HashMap<String, (Tensor, Tensor)>,
    /// Request index to position in the stacks.
    request_member: Vec<i64>,
    device: Device,
}

impl PopulationFactors {
    /// Factors for `request_members[j]`, the member that serves request `j`, on `device`. They stay
    /// in f32 whatever the model's dtype: the update regenerates them in f32, so a bf16 copy would
    /// make the noise a member generated with differ from the noise it is credited with.
    pub fn new(population: &Population, request_members: &[usize], device: Device) -> Self {
        let mut members: Vec<usize> = request_members.to_vec();
        members.sort_unstable();
        members.dedup();
        let position: HashMap<usize, i64> = members
            .iter()
            .enumerate()
            .map(|(p, &m)| (m, p as i64))
            .collect();
        let scale = population.sigma / (population.rank as f64).sqrt();
        let per_matrix = population
            .matrices
            .iter()
            .map(|mat| {
                // Both members of a pair share its factors: generate each pair once.
                let mut pairs: HashMap<usize, (Tensor, Tensor)> = HashMap::new();
                let (a, b): (Vec<Tensor>, Vec<Tensor>) = members
                    .iter()
                    .map(|&i| {
                        let (a, b) = pairs.entry(i / 2).or_insert_with(|| {
                            factors(
                                population.key(mat, i),
                                mat.m,
                                mat.n,
                                population.rank,
                                device,
                            )
                        });
                        (&*a * (sign(i) * scale), b.shallow_clone())
                    })
                    .unzip();
                (
                    mat.name.clone(),
                    (Tensor::stack(&a, 0), Tensor::stack(&b, 0)),
                )
            })
            .collect();
        PopulationFactors {
            per_matrix,
            request_member: request_members.iter().map(|m| position[m]).collect(),
            device,
        }
    }

    /// The factors member `member` generates with for matrix `name`: `(s_i (sigma / sqrt r) A_i, B_i)`.
    pub fn member_factors(&self, name: &str, member_position: i64) -> Option<(Tensor, Tensor)> {
        self.per_matrix
            .get(name)
            .map(|(a, b)| (a.get(member_position), b.get(member_position)))
    }

    /// Bytes the stacked factors take.
    pub fn bytes(&self) -> usize {
        self.per_matrix
            .values()
            .map(|(a, b)| {
                (a.numel() * a.kind().elt_size_in_bytes())
                    + b.numel() * b.kind().elt_size_in_bytes()
            })
            .sum()
    }
}

/// A population as the generation side holds it: [`MemberHooks`] that build each call's factors
/// (from the keys alone: nothing is sent but the population's description).
pub struct PopulationMembers {
    pub population: Population,
    pub device: Device,
}

impl MemberHooks for PopulationMembers {
    fn for_requests<'a>(&'a self, members: &[usize]) -> Box<dyn RowHooks + 'a> {
        Box::new(PopulationFactors::new(
            &self.population,
            members,
            self.device,
        ))
    }

    /// Member `member`'s perturbation `s_i (sigma / sqrt r) A_i B_i^T` of each evolved matrix as
    /// PEFT's `lora_B lora_A` at scale 1: `lora_B = s_i (sigma / sqrt r) A_i` (`[m, r]`),
    /// `lora_A = B_i^T` (`[r, n]`), from the same keys as the forward and the update (f32, CPU).
    fn member_adapter(&self, member: usize) -> Option<Vec<(String, Tensor)>> {
        let p = &self.population;
        let scale = sign(member) * p.sigma / (p.rank as f64).sqrt();
        let mut out = Vec::with_capacity(2 * p.matrices.len());
        for matrix in &p.matrices {
            let (a, b) = factors(
                p.key(matrix, member),
                matrix.m,
                matrix.n,
                p.rank,
                Device::Cpu,
            );
            // `model.layers.0.self_attn.q_proj.weight` -> `base_model.model.model.layers.0.
            // self_attn.q_proj.lora_{A,B}.weight`, PEFT's names of that projection's factors.
            let module = matrix.name.strip_suffix(".weight")?;
            out.push((
                format!("base_model.model.{module}.lora_A.weight"),
                b.tr().contiguous(),
            ));
            out.push((
                format!("base_model.model.{module}.lora_B.weight"),
                a * scale,
            ));
        }
        Some(out)
    }
}

impl RowHooks for PopulationFactors {
    fn for_rows<'a>(&'a self, requests: &[usize]) -> Box<dyn ForwardHooks + 'a> {
        let rows: Vec<i64> = requests.iter().map(|&r| self.request_member[r]).collect();
        let members = self
            .per_matrix
            .values()
            .next()
            .map_or(0, |(a, _)| a.size()[0]);
        // Every member once, in stack order (a full batch before any row finished): use the stacks
        // as they are instead of gathering a copy per projection.
        let identity =
            rows.len() as i64 == members && rows.iter().enumerate().all(|(k, &r)| r == k as i64);
        Box::new(PopulationHooks {
            factors: self,
            rows: (!identity).then(|| Tensor::from_slice(&rows).to_device(self.device)),
        })
    }
}

/// The hooks of one forward: batch row `k` uses the member at stack position `rows[k]` (`None`: row
/// `k` is stack position `k`).
pub struct PopulationHooks<'a> {
    factors: &'a PopulationFactors,
    rows: Option<Tensor>,
}

impl ForwardHooks for PopulationHooks<'_> {
    /// The rank-r term `s_i (sigma / sqrt r) (x B_i) A_i^T` of each row's member, in f32 (the decoder
    /// adds it, cast to the product's dtype, to the base product `x W^T` shared by every row).
    fn linear_delta(&self, site: LinearSite, x: &Tensor, w: &Weight) -> Option<Tensor> {
        let (a, bf) = self.factors.per_matrix.get(&site.weight_name())?;
        // Rows first: `[b, s, n]` (a 2-D `[b, n]` is one position per row).
        let x3 = if x.dim() == 2 {
            x.unsqueeze(1)
        } else {
            x.shallow_clone()
        };
        let (a, bf) = match &self.rows {
            Some(rows) => (a.index_select(0, rows), bf.index_select(0, rows)),
            None => (a.shallow_clone(), bf.shallow_clone()),
        };
        // The rank-r term in f32 whatever the activations' dtype (the factors are f32): it is
        // r (m + n) multiply-adds per row, and CPU bf16 batched matmuls of inner size r are slow.
        let xf = x3.to_kind(Kind::Float);
        let delta = if bf.size()[2] == 1 {
            // Rank 1: two broadcast multiplies and a sum, which vectorise, instead of batched matmuls
            // of inner size 1.
            (xf * bf.transpose(1, 2))
                .sum_dim_intlist(-1, true, Kind::Float)
                .g_mul(&a.transpose(1, 2))
        } else {
            xf.matmul(&bf).matmul(&a.transpose(1, 2))
        };
        // The product's shape: `x`'s leading dimensions, then the weight's `out`.
        let mut shape = x.size();
        *shape.last_mut().expect("x has a feature dimension") = w.size()[0];
        Some(delta.reshape(shape.as_slice()))
    }
}

#[cfg(test)]
mod tests {
    use alp_policy::LoadOptions;

    use super::*;

    #[test]
    fn the_config_picks_the_matrices_a_built_model_evolves() {
        for tied in [true, false] {
            let cfg = serde_json::json!({
                "model_type": "qwen2", "vocab_size": 40, "hidden_size": 16, "intermediate_size": 24,
                "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                "head_dim": 4, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
                "tie_word_embeddings": tied
            });
            let cfg = ModelConfig::from_json_str(&cfg.to_string(), "test").unwrap();
            let model = CausalLM::random(cfg.clone(), &LoadOptions::default(), 0).unwrap();
            let built = evolved_matrices(&model);
            assert_eq!(evolved_matrices_of(&cfg), built);
            // 7 projections per layer, plus the LM head when it is not the embedding.
            assert_eq!(built.len(), 2 * 7 + usize::from(!tied));
            let k = built
                .iter()
                .find(|m| m.name == "model.layers.0.self_attn.k_proj.weight")
                .unwrap();
            assert_eq!((k.m, k.n), (8, 16));
        }
    }
}
