//! EGGROLL (arXiv 2511.16652): evolution strategies with low-rank perturbations, the building blocks.
//!
//! For every evolved matrix `W` (`m x n`, HF `[out, in]`) and population member `i`, factors
//! `A_i` (`m x r`) and `B_i` (`n x r`) with N(0, 1) entries come from the counter-based generator keyed
//! by (seed, noise epoch, antithetic pair, parameter) ([`factors`]), never stored: the rollout side and
//! the update regenerate the same numbers on any thread, after a resume, on any machine. Members `2k`
//! and `2k + 1` share their pair's factors with signs `+1` and `-1`.
//!
//! - [`population`]: member `i`'s forward is `x W^T + s_i (sigma / sqrt r) (x B_i) A_i^T`, the base
//!   product shared by the whole batch, the low-rank term added through
//!   [`alp_policy::ForwardHooks::linear_delta`] with per-row members ([`alp_policy::RowHooks`] for
//!   the engine's continuous batching).
//! - [`update`]: the ES gradient estimate `g = 1 / (N sigma) sum_i f_i s_i A_i B_i^T / sqrt r`,
//!   computed per antithetic pair as `(diag(c) A)^T B`, never materialising an `m x n` matrix per
//!   member.
//! - [`fitness`]: shaping of the raw rewards (group, z-score, rank).
//! - [`learner`]: [`EsLearner`], one ES step (SGD or Adam) on a policy's evolved matrices, its `es/*`
//!   metrics and its resumable state; [`settings`]: `[learner.eggroll]`.
pub mod factors;
pub mod fitness;
pub mod learner;
pub mod population;
pub mod settings;
pub mod update;

pub use factors::{factors, noise_epoch, param_id, sign, FactorKey};
pub use fitness::{shape_fitness, FitnessShaping};
pub use learner::{EsLearner, EsStep};
pub use population::{
    evolved_matrices, evolved_matrices_of, EvolvedMatrix, Population, PopulationFactors,
    PopulationHooks, PopulationMembers,
};
pub use settings::{EggrollSettings, EsOptimizer, FitnessKind};
pub use update::es_gradient;
