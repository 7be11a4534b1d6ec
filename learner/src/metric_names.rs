//! The names of every metric the workspace writes to `metrics.parquet` and `sft/metrics.parquet`:
//! one column each. They are an interface (docs/learner.md, "Metric names"): notebooks, the progress
//! line and reports read them, so the learner, the train loop, evaluation and SFT all spell them
//! through this module, and a unit test keeps it and the doc in step.
//!
//! Fixed names are constants ([`FIXED`] lists them all). A family with a parameter has a prefix
//! constant and a function that formats one member: the distribution statistics of a ratio
//! ([`distribution`]), ALP's per-layer sigma ([`alp_sigma_layer`]) and pass@k ([`eval_pass_at`]).

/// Declares the fixed names as documented constants and lists them in [`FIXED`], so a new name
/// cannot miss the catalog's own checks.
macro_rules! fixed_names {
    ($( $(#[doc = $doc:literal])+ $name:ident = $value:literal; )+) => {
        $( $(#[doc = $doc])+ pub const $name: &str = $value; )+
        /// Every fixed name, in catalog order.
        pub const FIXED: &[&str] = &[$($name),+];
    };
}

fixed_names! {
    // --- Policy-gradient learner (`PgLearner::train_step`): ratio tails, clips, weights.
    /// Fraction of trained tokens whose ratio `exp(lp - mu)` is above 2.
    RATIO_FRAC_ABOVE_2 = "ratio/frac_above_2";
    /// Fraction of trained tokens whose ratio `exp(lp - mu)` is above 5.
    RATIO_FRAC_ABOVE_5 = "ratio/frac_above_5";
    /// Fraction of trained tokens whose ratio `exp(lp - mu)` is above 10.
    RATIO_FRAC_ABOVE_10 = "ratio/frac_above_10";
    /// Fraction of trained tokens whose ratio `exp(lp - mu)` is below 0.5.
    RATIO_FRAC_BELOW_0_5 = "ratio/frac_below_0.5";
    /// Fraction of trained tokens whose ratio `exp(lp - mu)` is below 0.2.
    RATIO_FRAC_BELOW_0_2 = "ratio/frac_below_0.2";
    /// Fraction of trained tokens whose ratio `exp(lp - mu)` is below 0.1.
    RATIO_FRAC_BELOW_0_1 = "ratio/frac_below_0.1";
    /// Fraction of trained tokens with `A > 0` and the upper clip of the loss ratio active.
    CLIP_HIGH_FRAC = "clip/high_frac";
    /// Fraction of trained tokens with `A < 0` and the lower clip of the loss ratio active.
    CLIP_LOW_FRAC = "clip/low_frac";
    /// Fraction of trained tokens with `A < 0` and the dual clip active.
    CLIP_DUAL_FRAC = "clip/dual_frac";
    /// Fraction of trained tokens MIS or IcePop rejected (0 for the other corrections).
    MASK_FRAC = "mask/frac";
    /// Fraction of the trained tokens verl's rejection sampling dropped (`rollout_rs_masked_fraction`).
    REJECTION_MASKED_FRAC = "rejection/masked_frac";
    /// Fraction of the trained sequences that lost a token to rejection sampling
    /// (`rollout_rs_seq_masked_fraction`).
    REJECTION_SEQ_MASKED_FRAC = "rejection/seq_masked_frac";
    /// Effective sample size fraction `(sum w)^2 / (n sum w^2)` of the per-token loss weights.
    ESS = "ess";

    // --- Policy-gradient learner: training vs inference log-probs (unperturbed, before the update).
    /// `mean(mu - lp)` per trained token (nats).
    MISMATCH_K1 = "mismatch/k1";
    /// `mean((lp - mu)^2 / 2)` per trained token.
    MISMATCH_K2 = "mismatch/k2";
    /// `mean(exp(lp - mu) - (lp - mu) - 1)` per trained token.
    MISMATCH_K3 = "mismatch/k3";
    /// Mean of `|lp - mu|` per trained token (nats).
    MISMATCH_LOGP_ABS_DIFF_MEAN = "mismatch/logp_abs_diff_mean";
    /// Largest `|lp - mu|` over the trained tokens (nats).
    MISMATCH_LOGP_ABS_DIFF_MAX = "mismatch/logp_abs_diff_max";
    /// Mean over sequences of `exp(mean_t mu - mean_t lp)`: training ppl / inference ppl.
    MISMATCH_PPL_RATIO = "mismatch/ppl_ratio";

    // --- Policy-gradient learner: ALP (only with `[learner.alp]`), after the step.
    /// Mean of the learnt noise scales sigma.
    ALP_SIGMA_MEAN = "alp/sigma_mean";
    /// Smallest learnt noise scale sigma.
    ALP_SIGMA_MIN = "alp/sigma_min";
    /// Largest learnt noise scale sigma.
    ALP_SIGMA_MAX = "alp/sigma_max";
    /// The noise scale sigma on the logits (`target = "logits"`).
    ALP_SIGMA_LOGITS = "alp/sigma_logits";

    // --- Policy-gradient learner: the LoRA adapter (only with `[model.lora]`), after the step.
    /// Global L2 norm of the adapter's factors, every A and B.
    LORA_ADAPTER_NORM = "lora/adapter_norm";
    /// Frobenius norm of the adapter's change to the weights, `sqrt(sum over sites |scale B A|^2)`.
    LORA_DELTA_NORM = "lora/delta_norm";
    /// Global L2 norm of the step's change of the factors (every A and B).
    LORA_UPDATE_NORM = "lora/update_norm";

    // --- Policy-gradient learner: loss, optimizer.
    /// Token-mean entropy of `softmax(logits / T)` of the training forwards (nats per token).
    POLICY_ENTROPY = "policy/entropy";
    /// Pre-clip global gradient norm: RL the mean over the step's optimizer steps, SFT the last step's.
    GRAD_NORM = "grad/norm";
    /// Policy-gradient loss, mean over the step's optimizer steps.
    LOSS_PG = "loss/pg";
    /// Total loss (policy gradient, KL, entropy bonus), mean over the step's optimizer steps.
    LOSS_TOTAL = "loss/total";
    /// KL penalty to the reference policy, mean over optimizer steps (only with a reference).
    LOSS_KL = "loss/kl";
    /// Learning rate of the model group at the step's last optimizer step.
    OPTIM_LR = "optim/lr";
    /// Optimizer steps of the step skipped for a non-finite gradient (count).
    OPTIM_SKIPPED_STEPS = "optim/skipped_steps";

    // --- Both RL learners (`metrics::batch_metrics`): the trained batch.
    /// Mean reward per sample of the batch.
    REWARD_MEAN = "reward/mean";
    /// Population std of the batch's rewards per sample.
    REWARD_STD = "reward/std";
    /// Mean completion length per sample (tokens).
    LEN_MEAN = "len/mean";
    /// Longest completion of the batch (tokens).
    LEN_MAX = "len/max";
    /// Wall time of the learner's update (seconds).
    TIME_LEARNER_STEP_S = "time/learner_step_s";
    /// Non-pad tokens through the policy-gradient training forwards per second of the update.
    THROUGHPUT_LEARNER_TOKENS_PER_S = "throughput/learner_tokens_per_s";
    /// Peak resident set of the process during the policy-gradient step (GB, 1e9 bytes): Linux's
    /// VmHWM, reset at the step's start through /proc/self/clear_refs; where the reset is refused it
    /// is the process's peak since it started (`alp_learner::memory`).
    MEMORY_PEAK_RSS_GB = "memory/peak_rss_gb";

    // --- EGGROLL learner (`EsLearner::update`).
    /// Mean raw fitness (mean reward of a member's rollouts) over the population.
    ES_FITNESS_MEAN = "es/fitness_mean";
    /// Population std of the members' raw fitness.
    ES_FITNESS_STD = "es/fitness_std";
    /// Best member's raw fitness.
    ES_FITNESS_MAX = "es/fitness_max";
    /// Worst member's raw fitness.
    ES_FITNESS_MIN = "es/fitness_min";
    /// Frobenius norm of the applied update over all evolved matrices.
    ES_UPDATE_NORM = "es/update_norm";
    /// The perturbation scale sigma (setting).
    ES_SIGMA = "es/sigma";
    /// Members in the step's population (count).
    ES_POPULATION = "es/population";
    /// Rank of the low-rank perturbations (setting).
    ES_RANK = "es/rank";

    // --- Train loop (`alp-rl train`), both learners.
    /// Fraction of the step's episodes answered correctly (per episode).
    ACC = "acc";
    /// Mean staleness of the trained samples: learner version minus the sample's version (versions).
    STALENESS_MEAN = "staleness/mean";
    /// Largest staleness of the trained samples (versions).
    STALENESS_MAX = "staleness/max";
    /// Episodes of the step that failed (environment error or panic, non-finite reward; count).
    ROLLOUT_FAILED_EPISODES = "rollout/failed_episodes";
    /// Samples of the step with non-finite sampling log-probs, dropped (count).
    ROLLOUT_NONFINITE_MU = "rollout/nonfinite_mu";
    /// Steps so far with a non-finite update or non-finite sampling log-probs (count, cumulative).
    TRAIN_NONFINITE_STEPS = "train/nonfinite_steps";
    /// Time the learner waited for the step's batch (seconds).
    TIME_ROLLOUT_WAIT_S = "time/rollout_wait_s";
    /// Time the rollout worker spent generating the batch (seconds).
    TIME_GENERATE_S = "time/generate_s";
    /// Time the rollout worker waited for the weights it needed (seconds).
    TIME_WEIGHTS_WAIT_S = "time/weights_wait_s";
    /// Wall time of the step: wait, update, logs; checkpoint excluded (seconds).
    TIME_STEP_S = "time/step_s";
    /// Sampled tokens of the batch per second of generation.
    THROUGHPUT_ROLLOUT_TOKENS_PER_S = "throughput/rollout_tokens_per_s";
    /// Samples of the step per second of step wall time.
    THROUGHPUT_SAMPLES_PER_S = "throughput/samples_per_s";

    // --- vLLM rollout backend (`rollout.backend = "vllm"`), on steps whose batch came after a sync.
    /// Wall time of the weight sync that gave the step's batch its weights: write, reload on every
    /// server, verify (seconds).
    SYNC_S = "sync/seconds";
    /// Bytes of that sync's payload: the tensors handed to the local engine, or the files written
    /// for the vLLM servers (the adapter alone when vLLM serves it as an adapter).
    SYNC_BYTES = "sync/bytes";
    /// Servers that passed that sync's probe (count).
    SYNC_SERVERS_PROBED = "sync/servers_probed";
    /// Largest |server log-prob - ours| over every probe token of that sync (nats).
    SYNC_PROBE_MAX_ABS_DIFF = "sync/probe_max_abs_diff";
    /// Largest, over the servers, mean |server log-prob - ours| of a probe (nats).
    SYNC_PROBE_MEAN_ABS_DIFF = "sync/probe_mean_abs_diff";
    /// Servers holding the current weights after the batch (count).
    VLLM_SERVERS_SERVING = "vllm/servers_serving";
    /// Times any server was taken out of dispatch so far (count, cumulative).
    VLLM_TAKEN_OUT = "vllm/taken_out";
    /// Times a server taken out came back, re-synced and probed, so far (count, cumulative).
    VLLM_RECOVERED = "vllm/recovered";

    // --- Evaluation (`[eval]`), on evaluated steps.
    /// Mean correctness over every sample of every problem (avg@k).
    EVAL_ACCURACY = "eval/accuracy";
    /// Mean reward per evaluation sample.
    EVAL_MEAN_REWARD = "eval/mean_reward";
    /// Fraction of evaluation episodes that ended in an error.
    EVAL_ERROR_RATE = "eval/error_rate";
    /// Wall time of the evaluation (seconds).
    TIME_EVAL_S = "time/eval_s";

    // --- Supervised fine-tuning (`sft/metrics.parquet`), one row every `sft.log_every` steps.
    /// Mean NLL per assistant token, mean over the steps since the last row (nats).
    SFT_LOSS = "sft/loss";
    /// Assistant tokens trained on since the last row (count).
    SFT_TOKENS = "sft/tokens";
    /// Learning rate of the row's step.
    SFT_LR = "sft/lr";
    /// Time since the SFT phase started (seconds).
    TIME_ELAPSED_S = "time/elapsed_s";
}

/// The `mismatch/*` names, for the steps that skip the mismatch forward and log them as NaN.
pub const MISMATCH: [&str; 6] = [
    MISMATCH_K1,
    MISMATCH_K2,
    MISMATCH_K3,
    MISMATCH_LOGP_ABS_DIFF_MEAN,
    MISMATCH_LOGP_ABS_DIFF_MAX,
    MISMATCH_PPL_RATIO,
];

/// Prefixes of the columns that depend on wall time or on the machine (memory), the only ones a
/// seed does not reproduce.
pub const TIMING_PREFIXES: [&str; 4] = ["time/", "throughput/", SYNC_S, "memory/"];

/// Whether `name` is a wall-time column (see [`TIMING_PREFIXES`]).
pub fn is_timing(name: &str) -> bool {
    TIMING_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// `exp(lp - mu)` per trained token, for every correction (the training forward, perturbed under
/// ALP, against the inference policy): the family `ratio/{stat}`.
pub const RATIO: &str = "ratio";
/// `exp(S)` per trained sequence, `S = sum_t (lp_t - mu_t)` (divided by the length when geometric).
pub const RATIO_SEQ: &str = "ratio_seq";
/// The ratio the loss clips, per trained token (against `mu` or `lp_old`, by correction).
pub const RATIO_LOSS: &str = "ratio_loss";
/// The families [`distribution`] describes.
pub const DISTRIBUTIONS: [&str; 3] = [RATIO, RATIO_SEQ, RATIO_LOSS];

/// Quantile suffixes and levels of a distribution (linear interpolation, numpy's default).
pub const QUANTILES: [(&str, f64); 8] = [
    ("q01", 0.01),
    ("q05", 0.05),
    ("q25", 0.25),
    ("q50", 0.5),
    ("q75", 0.75),
    ("q95", 0.95),
    ("q99", 0.99),
    ("q999", 0.999),
];
/// The statistics of a distribution besides its quantiles (`std` is the population std).
pub const MOMENTS: [&str; 4] = ["min", "max", "mean", "std"];

/// `{family}/{stat}`: statistic `stat` ([`MOMENTS`] or a [`QUANTILES`] suffix) of a distribution.
pub fn distribution(family: &str, stat: &str) -> String {
    format!("{family}/{stat}")
}

/// ALP's per-layer noise scale: `alp/sigma_l{layer}` (`target = "layers"`). A digit follows the
/// prefix, which [`ALP_SIGMA_LOGITS`] shares.
pub const ALP_SIGMA_LAYER_PREFIX: &str = "alp/sigma_l";

/// The learnt noise scale sigma on the input of decoder layer `layer`.
pub fn alp_sigma_layer(layer: usize) -> String {
    format!("{ALP_SIGMA_LAYER_PREFIX}{layer}")
}

/// Unbiased pass@k of the evaluation: `eval/pass@{k}`, k = 1, 2, 4, ... and the samples per problem.
pub const EVAL_PASS_AT_PREFIX: &str = "eval/pass@";

/// Unbiased pass@k (Chen et al. 2021), mean over the evaluated problems.
pub fn eval_pass_at(k: usize) -> String {
    format!("{EVAL_PASS_AT_PREFIX}{k}")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    const DOC: &str = include_str!("../../docs/learner.md");

    /// The fixed names and every statistic of every distribution.
    fn concrete_names() -> Vec<String> {
        let mut names: Vec<String> = FIXED.iter().map(|n| n.to_string()).collect();
        for family in DISTRIBUTIONS {
            let stats = MOMENTS.iter().copied().chain(QUANTILES.map(|(s, _)| s));
            names.extend(stats.map(|s| distribution(family, s)));
        }
        names
    }

    /// Every name the catalog can produce, the families with a parameter for a few parameters.
    fn all_names() -> Vec<String> {
        let mut names = concrete_names();
        names.extend((0..3).map(alp_sigma_layer));
        names.extend([1, 2, 4, 3].map(eval_pass_at));
        names
    }

    /// `family/name` in lower case (a few names have no family: `acc`, `ess`); thresholds carry
    /// a dot and pass@k an `@`.
    fn well_formed(name: &str) -> bool {
        let word = |s: &str, extra: &str| {
            !s.is_empty()
                && s.chars().all(|c| {
                    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || extra.contains(c)
                })
        };
        match name.split_once('/') {
            None => word(name, ""),
            Some((family, rest)) => word(family, "") && word(rest, ".@"),
        }
    }

    /// The backticked names in the first column of the doc's "Metric names" table.
    fn documented() -> Vec<&'static str> {
        let section = DOC
            .split("\n## Metric names")
            .nth(1)
            .expect("docs/learner.md has a `## Metric names` section");
        let section = section.split("\n## ").next().unwrap();
        section
            .lines()
            .filter_map(|l| l.strip_prefix("| "))
            .filter_map(|l| l.split(" |").next())
            .flat_map(|cell| cell.split('`').skip(1).step_by(2))
            .collect()
    }

    #[test]
    fn names_are_unique_and_well_formed() {
        let names = all_names();
        let unique: BTreeSet<&String> = names.iter().collect();
        assert_eq!(unique.len(), names.len(), "a name is declared twice");
        for n in &names {
            assert!(well_formed(n), "{n} is not lower-case `family/name`");
        }
        for n in &names {
            assert_eq!(
                is_timing(n),
                n.starts_with("time/")
                    || n.starts_with("throughput/")
                    || n.starts_with("memory/")
                    || n == SYNC_S,
                "{n}"
            );
        }
    }

    /// The doc's table and the catalog list the same names, so neither goes stale.
    #[test]
    fn doc_table_lists_exactly_the_catalog() {
        let doc: BTreeSet<&str> = documented().into_iter().collect();
        let mut catalog: BTreeSet<String> = concrete_names().into_iter().collect();
        catalog.insert(format!("{ALP_SIGMA_LAYER_PREFIX}{{i}}"));
        catalog.insert(format!("{EVAL_PASS_AT_PREFIX}{{k}}"));
        let catalog: BTreeSet<&str> = catalog.iter().map(String::as_str).collect();
        let undocumented: Vec<_> = catalog.difference(&doc).collect();
        let unknown: Vec<_> = doc.difference(&catalog).collect();
        assert!(
            undocumented.is_empty(),
            "names missing from docs/learner.md's Metric names table: {undocumented:?}"
        );
        assert!(
            unknown.is_empty(),
            "docs/learner.md's Metric names table lists names the catalog lacks: {unknown:?}"
        );
    }
}
