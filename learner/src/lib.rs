//! The policy-gradient learner of alp-rl (design section 4): GRPO / Dr.GRPO / RLOO advantages, the
//! clipped surrogate with token or GSPO-style sequence ratios, off-policy corrections (bypass, TIS, MIS,
//! ALP), Adaptive Layerwise Perturbation, a resumable AdamW, and the per-step metrics; supervised
//! fine-tuning ([`sft`]) on the same packing, forward and optimizer.
//!
//! The model is reached only through [`TrainablePolicy`], whose forward takes the
//! [`alp_policy::ForwardHooks`] through which ALP injects its noise.
pub mod adapter;
pub mod advantage;
pub mod alp;
mod anchor_settings;
pub mod batch;
pub mod correction;
pub mod dppo;
pub mod eggroll;
pub mod error;
pub mod learner;
pub mod loss;
pub mod memory;
pub mod metric_names;
pub mod metrics;
/// The counter-based noise generator (it lives in `alp-policy`, where the rollout engine can reach it too).
pub use alp_policy::noise;
pub mod optimizer;
pub mod rejection;
pub mod settings;
mod settings_error;
pub mod sft;
pub mod step;
pub mod trainable;

pub use advantage::group_advantages;
pub use alp::{AlpHooks, AlpPerturbation};
pub use batch::{completion_log_probs, token_log_probs, Entropy, Group, PackedBatch, Sample};
pub use error::{LearnerError, Result};
pub use learner::{PgLearner, ALP_GROUP, MODEL_GROUP};
pub use loss::{policy_loss, AggregationScale, ClipConfig, LossConfig, LossInputs, LossOutput};
pub use metrics::Metrics;
pub use optimizer::{AdamW, AdamWConfig, ParamGroup, Schedule};
pub use settings::{
    AdvantageKind, Aggregation, AlpSettings, AlpTarget, CorrectionKind, CorrectionSettings,
    KlEstimator, LearnerKind, LearnerSettings, LossSettings, LrSchedule, OptimizerSettings,
    RatioLevel, SettingsError,
};
pub use sft::{SftExample, SftLearner, SftSettings};
pub use step::{BatchLayout, GradientSync, LocalSync, StepPlan};
pub use trainable::TrainablePolicy;
