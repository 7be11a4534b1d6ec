//! Learner settings: the `[learner]` section of the run config deserializes into [`LearnerSettings`].
//!
//! Every struct denies unknown fields and every field has a default, so a config only names what it
//! changes. [`LearnerSettings::validate`] refuses bad values with a [`SettingsError`] that names the field
//! by its path below `[learner]` (e.g. `alp.sigma0`), because a bad value usually comes from a hand-edited
//! TOML file and the field name is what the user needs to fix it.

// Enums spelled as strings in the config use the workspace's one string-enum macro: an unknown value
// is refused with the allowed values and the closest one.
use crate::eggroll::EggrollSettings;
use crate::rejection::{RejectionMode, Threshold};
pub(crate) use crate::settings_error::check;
pub use crate::settings_error::SettingsError;
use alp_macros::string_enum;
use serde::{Deserialize, Serialize};

string_enum! {
    /// How rewards of a group become advantages.
    pub enum AdvantageKind {
        /// `(R - mean) / (std + 1e-6)` over the group (std with Bessel's correction, as torch.std).
        Grpo => "grpo",
        /// `R - mean` (Dr.GRPO: no std normalisation).
        DrGrpo => "dr_grpo",
        /// `R_i - mean_{j != i} R_j` (leave-one-out baseline).
        Rloo => "rloo",
    }
}

string_enum! {
    /// How per-token losses become one number.
    pub enum Aggregation {
        /// Sum over all valid tokens of the mini-batch divided by their count.
        TokenMean => "token-mean",
        /// Mean over sequences of each sequence's token mean.
        SeqMeanTokenMean => "seq-mean-token-mean",
        /// Mean over sequences of each sequence's token sum.
        SeqMeanTokenSum => "seq-mean-token-sum",
    }
}

string_enum! {
    /// KL estimator for the penalty towards the frozen reference, with `d = lp - ref`.
    pub enum KlEstimator {
        /// `d`.
        K1 => "k1",
        /// `0.5 d^2`.
        K2 => "k2",
        /// `exp(-d) + d - 1` (verl `low_var_kl`), clamped to [-10, 10] as verl does.
        K3 => "k3",
    }
}

string_enum! {
    /// The off-policy correction (design section 4).
    pub enum CorrectionKind {
        /// One ratio `pi_theta / mu` against the inference log-probs, no noise.
        Bypass => "bypass",
        /// Truncated IS: weight `min(pi_old / mu, tis_cap)` times the PPO ratio `pi_theta / pi_old`.
        Tis => "tis",
        /// Masked IS: drop tokens or sequences whose `pi_old / mu` leaves `[mis_low, mis_high]`, PPO ratio vs `pi_old`.
        Mis => "mis",
        /// Bypass ratio with the perturbed training forward (Adaptive Layerwise Perturbation).
        Alp => "alp",
        /// Plain PPO/GSPO ratio `pi_theta / pi_old`; the inference policy is ignored (the paper's GSPO baseline).
        None => "none",
        /// IcePop: token-level MIS with its own bounds, weight `pi_old / mu` kept inside
        /// `[icepop_alpha, icepop_beta]` and 0 outside, PPO ratio vs `pi_old`.
        IcePop => "icepop",
        /// prime-rl's default loss: ratio `pi_theta / mu`, DPPO-binary TV mask and the
        /// `kl_tau (log r)^2` term instead of the clipped surrogate ([`crate::dppo`]).
        Dppo => "dppo",
    }
}

string_enum! {
    /// Token ratios or one GSPO-style ratio per sequence; also the level of the TIS weight / MIS mask.
    pub enum RatioLevel {
        Token => "token",
        Sequence => "sequence",
    }
}

string_enum! {
    /// Where ALP puts its noise.
    pub enum AlpTarget {
        /// Every decoder layer's input hidden state in the layer range (the method of the paper).
        Layers => "layers",
        /// Only the final logits, with one learnable scale (the paper's logits-only ablation).
        Logits => "logits",
    }
}

string_enum! {
    /// Learning-rate decay after warmup.
    pub enum LrSchedule {
        Constant => "constant",
        /// Linear from the base rate to `min_lr_ratio * lr` at `total_steps`.
        Linear => "linear",
        /// Half cosine from the base rate to `min_lr_ratio * lr` at `total_steps`.
        Cosine => "cosine",
    }
}

impl CorrectionKind {
    /// Whether the PPO ratio is taken against `lp_old` (a no-grad forward of the pre-update weights)
    /// rather than against the inference log-probs `mu`.
    pub fn ratio_against_old(self) -> bool {
        matches!(
            self,
            CorrectionKind::Tis
                | CorrectionKind::Mis
                | CorrectionKind::None
                | CorrectionKind::IcePop
        )
    }
}

string_enum! {
    /// Which learner trains the policy (`[learner] kind`).
    #[derive(Default)]
    pub enum LearnerKind {
        /// Policy gradient ([`crate::PgLearner`]): advantages, the clipped surrogate, off-policy
        /// corrections, ALP; every `[learner]` key except `eggroll`.
        #[default]
        Pg => "pg",
        /// EGGROLL evolution strategies ([`crate::eggroll::EsLearner`]), backprop-free:
        /// `[learner.eggroll]` and `seed` only.
        Eggroll => "eggroll",
    }
}

/// The `[learner]` section: `kind` picks the learner; the policy-gradient keys and `[learner.eggroll]`
/// belong to one learner each. Serialisation writes `kind`, `seed` and the chosen learner's keys only,
/// so a written config never carries settings its learner ignores.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LearnerSettings {
    pub kind: LearnerKind,
    pub advantage: AdvantageKind,
    /// Samples per forward/backward; gradients accumulate over the micro-batches of a mini-batch.
    pub micro_batch_size: usize,
    /// Most tokens per micro-batch, padding counted (`rows * longest prompt + completion`); 0: no
    /// budget. A micro-batch ends before the sample that would exceed it (a sample longer than the
    /// budget is a micro-batch of its own); the loss is the same whatever the cut.
    pub micro_batch_tokens: usize,
    /// Activation checkpointing per decoder layer: the training forward keeps only each layer's input
    /// and the backward recomputes the layer (about one more forward of compute for far less memory).
    pub gradient_checkpointing: bool,
    /// Optimizer steps per epoch: the batch is cut into this many mini-batches (PPO mini-batches).
    pub mini_batches: usize,
    /// Passes over the batch (PPO epochs).
    pub epochs: usize,
    /// Clip the global gradient norm to this value; 0 disables clipping (the norm is still logged).
    pub max_grad_norm: f64,
    /// Run seed; ALP noise is a function of (seed, step, forward index, layer).
    pub seed: u64,
    /// Run the extra no-grad forward that exists only for the `mismatch/*` metrics (with ALP, or with
    /// several optimizer steps per batch) every this many steps; 0 never. Steps without it report
    /// `mismatch/*` as NaN. When the metrics come for free (bypass with one optimizer step) or `lp_old`
    /// is needed anyway (TIS, MIS, none), they are computed every step regardless.
    pub mismatch_every: u64,
    pub loss: LossSettings,
    pub correction: CorrectionSettings,
    pub alp: AlpSettings,
    pub optimizer: OptimizerSettings,
    /// `[learner.eggroll]`, used when `kind = "eggroll"`.
    pub eggroll: EggrollSettings,
    /// The temperature `T` the sampled tokens' log-probs `mu` were taken at: every forward that scores
    /// sampled tokens (training, `lp_old`, reference, the logged `lp`) divides its logits by `T`, so at
    /// identical weights every ratio is exactly 1 (verl's convention). Not a config key: the train
    /// runtime sets it from `[rollout]` (`rollout.temperature`, or 1 for `logprob_mode = "raw"`).
    #[serde(skip)]
    pub score_temperature: f64,
    /// Most bytes of f32 logits one row chunk of the LM head holds in the learner's forwards
    /// ([`crate::batch::HEAD_CHUNK_BYTES`] by default). Not a config key: tests make it small to
    /// check that the chunks add up to the whole.
    #[serde(skip)]
    pub head_chunk_bytes: usize,
}

impl Default for LearnerSettings {
    fn default() -> Self {
        Self {
            kind: LearnerKind::Pg,
            advantage: AdvantageKind::Grpo,
            micro_batch_size: 8,
            micro_batch_tokens: 0,
            gradient_checkpointing: false,
            mini_batches: 1,
            epochs: 1,
            max_grad_norm: 1.0,
            seed: 0,
            mismatch_every: 1,
            loss: LossSettings::default(),
            correction: CorrectionSettings::default(),
            alp: AlpSettings::default(),
            optimizer: OptimizerSettings::default(),
            eggroll: EggrollSettings::default(),
            score_temperature: 1.0,
            head_chunk_bytes: crate::batch::HEAD_CHUNK_BYTES,
        }
    }
}

impl Serialize for LearnerSettings {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        // Destructured, so a new field cannot be forgotten here.
        let LearnerSettings {
            kind,
            advantage,
            micro_batch_size,
            micro_batch_tokens,
            gradient_checkpointing,
            mini_batches,
            epochs,
            max_grad_norm,
            seed,
            mismatch_every,
            loss,
            correction,
            alp,
            optimizer,
            eggroll,
            score_temperature: _,
            head_chunk_bytes: _,
        } = self;
        let mut out = s.serialize_struct("LearnerSettings", 14)?;
        out.serialize_field("kind", kind)?;
        match kind {
            LearnerKind::Pg => {
                out.serialize_field("advantage", advantage)?;
                out.serialize_field("micro_batch_size", micro_batch_size)?;
                out.serialize_field("micro_batch_tokens", micro_batch_tokens)?;
                out.serialize_field("gradient_checkpointing", gradient_checkpointing)?;
                out.serialize_field("mini_batches", mini_batches)?;
                out.serialize_field("epochs", epochs)?;
                out.serialize_field("max_grad_norm", max_grad_norm)?;
                out.serialize_field("seed", seed)?;
                out.serialize_field("mismatch_every", mismatch_every)?;
                out.serialize_field("loss", loss)?;
                out.serialize_field("correction", correction)?;
                out.serialize_field("alp", alp)?;
                out.serialize_field("optimizer", optimizer)?;
            }
            LearnerKind::Eggroll => {
                out.serialize_field("seed", seed)?;
                out.serialize_field("eggroll", eggroll)?;
            }
        }
        out.end()
    }
}

impl LearnerSettings {
    /// The keys of `[learner]` that belong to the policy-gradient learner (`kind = "pg"`); `kind` and
    /// `seed` are shared, `eggroll` is the ES learner's.
    pub const PG_KEYS: &'static [&'static str] = &[
        "advantage",
        "micro_batch_size",
        "micro_batch_tokens",
        "gradient_checkpointing",
        "mini_batches",
        "epochs",
        "max_grad_norm",
        "mismatch_every",
        "loss",
        "correction",
        "alp",
        "optimizer",
    ];
}

/// `[learner.loss]`: the clipped surrogate and its extra terms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LossSettings {
    /// Lower clip: the ratio is clipped at `1 - eps_low` (must be in [0, 1)).
    pub eps_low: f64,
    /// Upper clip: the ratio is clipped at `1 + eps_high`.
    pub eps_high: f64,
    /// Dual clip `c > 1` for negative advantages: the per-token loss is capped at `-A c`. Absent: off.
    pub dual_clip: Option<f64>,
    pub aggregation: Aggregation,
    /// Entropy bonus coefficient (the loss subtracts `coef * entropy`).
    pub entropy_coef: f64,
    /// KL-to-reference coefficient; > 0 needs a reference policy.
    pub kl_coef: f64,
    pub kl_estimator: KlEstimator,
}

impl Default for LossSettings {
    fn default() -> Self {
        Self {
            eps_low: 0.2,
            eps_high: 0.28,
            dual_clip: None,
            aggregation: Aggregation::TokenMean,
            entropy_coef: 0.0,
            kl_coef: 0.0,
            kl_estimator: KlEstimator::K3,
        }
    }
}

/// `[learner.correction]`: which off-policy correction, at which level.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CorrectionSettings {
    pub kind: CorrectionKind,
    pub level: RatioLevel,
    /// Sequence level only: divide the summed log-ratio by the sequence length (GSPO's geometric mean).
    pub geometric: bool,
    /// TIS: upper truncation `C` of the IS weight `pi_old / mu`.
    pub tis_cap: f64,
    /// MIS: keep a token/sequence only if `mis_low <= pi_old / mu <= mis_high`.
    pub mis_low: f64,
    pub mis_high: f64,
    /// IcePop: keep a token only if `icepop_alpha <= pi_old / mu <= icepop_beta` (0.5 and 5).
    pub icepop_alpha: f64,
    pub icepop_beta: f64,
    /// verl's rejection sampling (`rollout_rs`) on top of any kind: the modes, all of which must pass;
    /// empty: off ([`crate::rejection`]).
    pub rejection: Vec<RejectionMode>,
    /// verl's `rollout_rs_threshold`: empty (each mode's recommended value), one shared, or one per
    /// mode; a number (upper bound) or `"lower_upper"` (k1 modes).
    pub rejection_threshold: Vec<Threshold>,
    /// prime-rl's DPPO mask: `A <= 0` tokens whose probability fell by more than this are masked.
    pub dppo_mask_low: f64,
    /// prime-rl's DPPO mask: `A > 0` tokens whose probability rose by more than this are masked.
    pub dppo_mask_high: f64,
    /// prime-rl's advantage scale.
    pub adv_tau: f64,
    /// prime-rl's weight of the `(lp - mu)^2` term.
    pub kl_tau: f64,
}

impl Default for CorrectionSettings {
    fn default() -> Self {
        Self {
            kind: CorrectionKind::Bypass,
            level: RatioLevel::Token,
            geometric: false,
            tis_cap: 2.0,
            mis_low: 0.5,
            mis_high: 2.0,
            icepop_alpha: 0.5,
            icepop_beta: 5.0,
            rejection: Vec::new(),
            rejection_threshold: Vec::new(),
            dppo_mask_low: 0.2,
            dppo_mask_high: 0.2,
            adv_tau: 1.0,
            kl_tau: 1e-3,
        }
    }
}

/// `[learner.alp]`: Adaptive Layerwise Perturbation, used when `correction.kind = "alp"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlpSettings {
    /// Initial noise scale (paper recipes 1e-6 .. 2e-2); must be > 0 since `log_sigma = ln(sigma0)`.
    pub sigma0: f64,
    /// Learning rate of the `log_sigma` group (paper 5e-4 .. 1e-2); this group never has weight decay.
    pub perturb_lr: f64,
    pub target: AlpTarget,
    /// First perturbed layer (inclusive).
    pub layer_start: usize,
    /// End of the perturbed range (exclusive); absent means the last layer.
    pub layer_end: Option<usize>,
}

impl Default for AlpSettings {
    fn default() -> Self {
        Self {
            sigma0: 1e-2,
            perturb_lr: 1e-2,
            target: AlpTarget::Layers,
            layer_start: 0,
            layer_end: None,
        }
    }
}

/// `[learner.optimizer]`: AdamW and its learning-rate schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimizerSettings {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Decoupled weight decay of the model parameters (never applied to `log_sigma`).
    pub weight_decay: f64,
    /// Linear warmup over this many optimizer steps: step `t < warmup` uses `lr * (t + 1) / warmup`.
    pub warmup_steps: u64,
    pub schedule: LrSchedule,
    /// Optimizer steps at which linear/cosine decay reaches `min_lr_ratio * lr` (needed unless constant).
    pub total_steps: Option<u64>,
    pub min_lr_ratio: f64,
}

impl Default for OptimizerSettings {
    fn default() -> Self {
        Self {
            lr: 1e-6,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
            warmup_steps: 0,
            schedule: LrSchedule::Constant,
            total_steps: None,
            min_lr_ratio: 0.0,
        }
    }
}

pub(crate) fn finite_nonneg(x: f64, field: &str) -> Result<(), SettingsError> {
    check(x.is_finite() && x >= 0.0, field, || {
        format!("must be a finite number >= 0, got {x}")
    })
}

impl LearnerSettings {
    /// Refuses values of the chosen learner that cannot work, naming the field. Checks that need the
    /// model happen in [`AlpSettings::layer_range`] (the layer range against the number of layers)
    /// and [`EggrollSettings::check_against`] (rank and parameter patterns).
    pub fn validate(&self) -> Result<(), SettingsError> {
        if self.kind == LearnerKind::Eggroll {
            return self.eggroll.validate();
        }
        check(self.micro_batch_size >= 1, "micro_batch_size", || {
            "must be >= 1".into()
        })?;
        check(self.mini_batches >= 1, "mini_batches", || {
            "must be >= 1".into()
        })?;
        check(self.epochs >= 1, "epochs", || "must be >= 1".into())?;
        finite_nonneg(self.max_grad_norm, "max_grad_norm")?;
        let t = self.score_temperature;
        check(t.is_finite() && t > 0.0, "score_temperature", || {
            format!("must be > 0 (the rollout temperature), got {t}")
        })?;
        self.loss.validate()?;
        self.correction.validate()?;
        self.alp.validate()?;
        self.optimizer.validate()
    }
}

impl LossSettings {
    pub fn validate(&self) -> Result<(), SettingsError> {
        let el = self.eps_low;
        check(
            el.is_finite() && (0.0..1.0).contains(&el),
            "loss.eps_low",
            || {
                format!(
                    "must be in [0, 1) so that the lower clip 1 - eps_low stays positive, got {el}"
                )
            },
        )?;
        finite_nonneg(self.eps_high, "loss.eps_high")?;
        if let Some(c) = self.dual_clip {
            check(c.is_finite() && c > 1.0, "loss.dual_clip", || {
                format!("must be > 1, got {c}")
            })?;
        }
        check(self.entropy_coef.is_finite(), "loss.entropy_coef", || {
            "must be finite".into()
        })?;
        finite_nonneg(self.kl_coef, "loss.kl_coef")
    }
}

impl CorrectionSettings {
    pub fn validate(&self) -> Result<(), SettingsError> {
        let c = self.tis_cap;
        check(c.is_finite() && c > 0.0, "correction.tis_cap", || {
            format!("must be > 0, got {c}")
        })?;
        finite_nonneg(self.mis_low, "correction.mis_low")?;
        let (lo, hi) = (self.mis_low, self.mis_high);
        check(hi.is_finite() && hi > lo, "correction.mis_high", || {
            format!("must be finite and > mis_low ({lo}), got {hi}")
        })?;
        self.validate_anchors()
    }
}

impl AlpSettings {
    pub fn validate(&self) -> Result<(), SettingsError> {
        let s = self.sigma0;
        check(s.is_finite() && s > 0.0, "alp.sigma0", || {
            format!("must be > 0 (sigma is learned as exp(log_sigma)), got {s}")
        })?;
        finite_nonneg(self.perturb_lr, "alp.perturb_lr")?;
        if let Some(end) = self.layer_end {
            let start = self.layer_start;
            check(end > start, "alp.layer_end", || {
                format!("empty layer range [{start}, {end}): layer_end must be > layer_start")
            })?;
        }
        Ok(())
    }

    /// The perturbed layers for a model with `num_layers` decoder layers.
    pub fn layer_range(&self, num_layers: usize) -> Result<std::ops::Range<usize>, SettingsError> {
        self.validate()?;
        let end = self.layer_end.unwrap_or(num_layers);
        check(end <= num_layers, "alp.layer_end", || {
            format!("{end} is beyond the model's {num_layers} layers")
        })?;
        let start = self.layer_start;
        check(start < end, "alp.layer_start", || {
            format!("empty layer range [{start}, {end}) for a model with {num_layers} layers")
        })?;
        Ok(start..end)
    }
}

impl OptimizerSettings {
    pub fn validate(&self) -> Result<(), SettingsError> {
        finite_nonneg(self.lr, "optimizer.lr")?;
        for (b, field) in [
            (self.beta1, "optimizer.beta1"),
            (self.beta2, "optimizer.beta2"),
        ] {
            check((0.0..1.0).contains(&b), field, || {
                format!("must be in [0, 1), got {b}")
            })?;
        }
        let e = self.eps;
        check(e.is_finite() && e > 0.0, "optimizer.eps", || {
            format!("must be > 0, got {e}")
        })?;
        finite_nonneg(self.weight_decay, "optimizer.weight_decay")?;
        let m = self.min_lr_ratio;
        check((0.0..=1.0).contains(&m), "optimizer.min_lr_ratio", || {
            format!("must be in [0, 1], got {m}")
        })?;
        if self.schedule != LrSchedule::Constant {
            check(
                self.total_steps.is_some_and(|t| t > self.warmup_steps),
                "optimizer.total_steps",
                || {
                    format!(
                        "schedule \"{}\" needs total_steps > warmup_steps ({})",
                        self.schedule, self.warmup_steps
                    )
                },
            )?;
        }
        Ok(())
    }
}
