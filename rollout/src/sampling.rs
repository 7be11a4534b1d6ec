//! Turning next-token logits into a token and its log-prob: greedy, temperature, top-k, top-p, with a
//! seeded per-row RNG so a request's completion does not depend on what else shares its batch.
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::cpu_draw::{draw_rows, Draw};
use crate::error::RolloutError;

alp_macros::string_enum! {
    /// Which distribution the recorded log-prob of a sampled token is taken under.
    ///
    /// The learner must compute its log-probs under the same definition (design section 3); see
    /// [`SamplingParams::scoring_temperature`] for the temperature a scorer must apply.
    #[derive(Default)]
    pub enum LogprobMode {
        /// The distribution actually sampled from: `softmax(top_p(top_k(logits / T)))`, renormalised
        /// over the kept tokens. No learner reproduces the truncation, so with top-p/top-k active this
        /// is for generation only (`alp-rl train` refuses it); without truncation it equals
        /// `Temperature`.
        Sampling => "sampling",
        /// `log_softmax(logits / T)`: temperature applied, no truncation (verl's convention, the
        /// default): a learner that divides its logits by the same temperature reproduces it exactly.
        #[default]
        Temperature => "temperature",
        /// `log_softmax(logits)`: the model's own distribution at temperature 1.
        Raw => "raw",
    }
}

/// Decoding settings shared by every row of a call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplingParams {
    /// Argmax decoding; its log-probs are always the raw `log_softmax(logits)` (a point mass has none).
    pub greedy: bool,
    pub temperature: f64,
    /// Nucleus sampling: keep the smallest set of most likely tokens whose mass reaches `top_p`.
    pub top_p: f64,
    /// Keep only the `top_k` most likely tokens; 0 disables.
    pub top_k: i64,
    pub max_new_tokens: usize,
    /// Tokens that end a completion (they are part of it); a request may override them.
    pub stop_token_ids: Vec<i64>,
    pub logprob_mode: LogprobMode,
    pub seed: u64,
    /// The random stream of the call's first request: request `i` draws from stream
    /// `first_stream + i`. A process that generates a slice of a larger batch (one rank of a
    /// learner spread over several) sets the slice's start, so each row draws what it would in the
    /// whole batch.
    pub first_stream: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            greedy: false,
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            max_new_tokens: 64,
            stop_token_ids: Vec::new(),
            logprob_mode: LogprobMode::Temperature,
            seed: 0,
            first_stream: 0,
        }
    }
}

impl SamplingParams {
    /// Refuses settings that have no meaning, naming the field.
    pub fn validate(&self) -> Result<(), RolloutError> {
        let bad =
            |field: &'static str, problem: String| RolloutError::InvalidSetting { field, problem };
        let temperature_ok = self.temperature > 0.0 && self.temperature.is_finite();
        if !self.greedy && !temperature_ok {
            return Err(bad(
                "temperature",
                format!(
                    "is {}; use a positive value, or greedy decoding",
                    self.temperature
                ),
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(bad(
                "top_p",
                format!("is {}; it must be in (0, 1]", self.top_p),
            ));
        }
        if self.top_k < 0 {
            return Err(bad(
                "top_k",
                format!("is {}; use 0 (off) or a positive count", self.top_k),
            ));
        }
        Ok(())
    }

    /// The temperature a scorer (the learner's forward) must divide its logits by so that its
    /// untruncated `log_softmax` equals the recorded log-probs at identical weights: `T` for
    /// `temperature` (and `sampling` without truncation), 1 for `raw` and greedy decoding. Refused for
    /// `sampling` with top-p or top-k active: those log-probs are of a truncated, renormalised
    /// distribution that no full-vocabulary forward reproduces, so every ratio would be biased.
    pub fn scoring_temperature(&self) -> Result<f64, RolloutError> {
        if self.greedy {
            return Ok(1.0);
        }
        let truncated = self.top_p < 1.0 || self.top_k > 0;
        match self.logprob_mode {
            LogprobMode::Raw => Ok(1.0),
            LogprobMode::Temperature => Ok(self.temperature),
            LogprobMode::Sampling if !truncated => Ok(self.temperature),
            LogprobMode::Sampling => Err(RolloutError::InvalidSetting {
                field: "logprob_mode",
                problem: format!(
                    "is \"sampling\" with top_p = {} and top_k = {}: those log-probs are of the \
                     truncated, renormalised distribution, which the learner's full-vocabulary \
                     forward cannot reproduce (every ratio would be biased); use logprob_mode = \
                     \"temperature\" (the default: log-probs of softmax(logits / T), as verl), or \
                     top_p = 1 and top_k = 0",
                    self.top_p, self.top_k
                ),
            }),
        }
    }

    /// The RNG seed of random stream `stream` (a request's `stream`, else its index in the call):
    /// the call seed mixed with `first_stream + stream` (SplitMix64 finaliser), so rows get
    /// independent streams and a request's stream does not depend on the batch it lands in.
    pub fn row_seed(&self, request_index: usize) -> u64 {
        alp_envs::rng::mix(self.seed.wrapping_add(
            0x9E37_79B9_7F4A_7C15u64.wrapping_mul(self.first_stream + request_index as u64 + 1),
        ))
    }
}

/// The tokens that end a completion by default: the model's `eos_token_id`s and the tokenizer's EOS.
pub fn default_stop_tokens(
    model: &alp_policy::CausalLM,
    tokenizer: Option<&alp_tokenizer::Tokenizer>,
) -> Vec<i64> {
    let mut stop: Vec<i64> = model.config().eos_token_ids.clone();
    if let Some(tok) = tokenizer {
        stop.extend(tok.eos_token_id().map(i64::from));
    }
    stop.sort_unstable();
    stop.dedup();
    stop
}

/// The processed next-token log-distribution for a batch of logits `[b, vocab]` (f32): temperature,
/// then top-k, then top-p, as HF's logits warpers apply them. Removed tokens get `-inf`.
pub fn processed_logprobs(logits: &Tensor, params: &SamplingParams) -> Tensor {
    let mut scores = logits.to_kind(Kind::Float) / params.temperature;
    let vocab = scores.size()[1];
    if params.top_k > 0 && params.top_k < vocab {
        let (kth, _) = scores.topk(params.top_k, -1, true, true);
        let threshold = kth.narrow(1, params.top_k - 1, 1);
        scores = scores.masked_fill(&scores.lt_tensor(&threshold), f64::NEG_INFINITY);
    }
    if params.top_p < 1.0 {
        let (sorted, order) = scores.sort(-1, true);
        let probs = sorted.softmax(-1, Kind::Float);
        // Mass of the strictly more likely tokens; a token is dropped once that reaches top_p.
        let before = probs.cumsum(-1, Kind::Float) - &probs;
        let drop_sorted = before.ge(params.top_p);
        // The most likely token always stays.
        let _ = drop_sorted.narrow(1, 0, 1).fill_(0);
        let drop = Tensor::zeros_like(&drop_sorted).scatter(-1, &order, &drop_sorted);
        scores = scores.masked_fill(&drop.to_kind(Kind::Bool), f64::NEG_INFINITY);
    }
    scores.log_softmax(-1, Kind::Float)
}

/// Picks the next token of each row and its log-prob.
pub struct RowSampler {
    rngs: Vec<StdRng>,
}

impl RowSampler {
    /// One RNG per row, seeded by [`SamplingParams::row_seed`] of each request index.
    pub fn new(params: &SamplingParams, request_indices: &[usize]) -> Self {
        RowSampler {
            rngs: request_indices
                .iter()
                .map(|&i| StdRng::seed_from_u64(params.row_seed(i)))
                .collect(),
        }
    }

    /// Keeps the RNGs of the listed rows (after finished rows leave the batch).
    pub fn retain_rows(&mut self, keep: &[usize]) {
        let mut old: Vec<Option<StdRng>> = self.rngs.drain(..).map(Some).collect();
        self.rngs = keep
            .iter()
            .map(|&i| old[i].take().expect("rows kept once"))
            .collect();
    }

    /// Gives batch row `row` the RNG of request `request_index` (a new request took over the slot).
    pub fn reseed_row(&mut self, row: usize, params: &SamplingParams, request_index: usize) {
        self.rngs[row] = StdRng::seed_from_u64(params.row_seed(request_index));
    }

    /// Samples one token per row from `logits` (`[rows, vocab]`, any float dtype).
    ///
    /// Without top-k or top-p (every training config) this is three passes over the logits: the
    /// softmax, its running sum, and (for `raw` at T != 1 only) a `log_softmax`; each row's token is a
    /// binary search of its uniform draw in the running sum, its recorded log-prob the log of the
    /// drawn probability, and tokens and log-probs cross to the host in one copy. With truncation the
    /// processed distribution ([`processed_logprobs`]) is built first.
    pub fn sample(&mut self, logits: &Tensor, params: &SamplingParams) -> (Vec<i64>, Vec<f32>) {
        let logits = logits.to_kind(Kind::Float);
        if let Some(drawn) = self.sample_on_cpu(&logits, params) {
            return drawn;
        }
        if params.greedy {
            let tokens = logits.argmax(-1, false).unsqueeze(-1);
            let lps = logits
                .log_softmax(-1, Kind::Float)
                .gather(-1, &tokens, false);
            return to_host(&tokens, &lps);
        }
        if params.top_k > 0 || params.top_p < 1.0 {
            return self.sample_truncated(&logits, params);
        }
        // Untruncated: every log-prob mode is `log_softmax(logits / T)` except `raw` at T != 1.
        let probs = if params.temperature == 1.0 {
            logits.softmax(-1, Kind::Float)
        } else {
            (&logits / params.temperature).softmax(-1, Kind::Float)
        };
        let tokens = self.draw_from_probs(&probs).unsqueeze(-1);
        let recorded = match params.logprob_mode {
            LogprobMode::Raw if params.temperature != 1.0 => logits
                .log_softmax(-1, Kind::Float)
                .gather(-1, &tokens, false),
            _ => probs.gather(-1, &tokens, false).log(),
        };
        to_host(&tokens, &recorded)
    }

    /// Greedy and untruncated draws from CPU logits without building the distribution as tensors
    /// ([`crate::cpu_draw`]: two reads of each row); `None` for truncated sampling or other devices.
    fn sample_on_cpu(
        &mut self,
        logits: &Tensor,
        params: &SamplingParams,
    ) -> Option<(Vec<i64>, Vec<f32>)> {
        let truncated = params.top_k > 0 || params.top_p < 1.0;
        if logits.device() != tch::Device::Cpu || (truncated && !params.greedy) {
            return None;
        }
        let (rows, vocab) = logits.size2().ok()?;
        if vocab == 0 {
            return None;
        }
        assert!(
            params.greedy || rows as usize == self.rngs.len(),
            "{rows} rows of logits for a sampler of {} rows",
            self.rngs.len()
        );
        let logits = logits.contiguous();
        // SAFETY: `logits` is a contiguous `[rows, vocab]` f32 CPU tensor alive for this call.
        let data = unsafe {
            std::slice::from_raw_parts(logits.data_ptr() as *const f32, (rows * vocab) as usize)
        };
        let (draw, uniforms) = if params.greedy {
            (Draw::Greedy, Vec::new())
        } else {
            let draw = Draw::Sample {
                inv_temperature: (1.0 / params.temperature) as f32,
                raw_logprob: params.logprob_mode == LogprobMode::Raw && params.temperature != 1.0,
            };
            (
                draw,
                self.rngs.iter_mut().map(|rng| rng.gen::<f32>()).collect(),
            )
        };
        let threads = tch::get_num_threads().max(1) as usize;
        Some(
            draw_rows(data, vocab as usize, &uniforms, draw, threads)
                .into_iter()
                .unzip(),
        )
    }

    /// Top-k / top-p: draws from the processed distribution.
    fn sample_truncated(
        &mut self,
        logits: &Tensor,
        params: &SamplingParams,
    ) -> (Vec<i64>, Vec<f32>) {
        let sampling = processed_logprobs(logits, params);
        let tokens = self.draw_from_probs(&sampling.exp()).unsqueeze(-1);
        let recorded = match params.logprob_mode {
            LogprobMode::Sampling => sampling,
            LogprobMode::Temperature => (logits / params.temperature).log_softmax(-1, Kind::Float),
            LogprobMode::Raw => logits.log_softmax(-1, Kind::Float),
        }
        .gather(-1, &tokens, false);
        to_host(&tokens, &recorded)
    }

    /// Inverse-CDF sampling on the device: one uniform per row from the row's RNG, and the token is
    /// the first whose cumulative probability exceeds it, found by binary search in the running sum.
    /// Zero-mass tokens add nothing to the running sum, so they can never be chosen; only `rows`
    /// numbers cross to the device, not `rows x vocab`.
    fn draw_from_probs(&mut self, probs: &Tensor) -> Tensor {
        let cdf = probs.cumsum(-1, Kind::Float);
        let vocab = cdf.size()[1];
        // Contiguous, as searchsorted wants its values (it copies and warns otherwise).
        let total = cdf.narrow(1, vocab - 1, 1).contiguous();
        let uniforms: Vec<f32> = self.rngs.iter_mut().map(|rng| rng.gen::<f32>()).collect();
        let target = Tensor::from_slice(&uniforms)
            .to_device(cdf.device())
            .unsqueeze(-1)
            * &total;
        let search = |values: &Tensor, side: &str| {
            values
                .searchsorted(&cdf, false, side == "right", side, None::<&Tensor>)
                .squeeze_dim(-1)
        };
        // The number of running sums <= target is the first token whose sum exceeds it. Rounding can
        // put the target at the very top, past every token; the last token with mass (the first
        // whose sum reaches the total) is the one to take then. Non-finite logits (a diverged
        // model) give NaN sums that every search passes: the clamp keeps the token a valid id, and
        // its NaN log-prob is what the learner refuses.
        search(&target, "right")
            .minimum(&search(&total, "left"))
            .clamp_max(vocab - 1)
    }
}

/// Tokens (`[rows, 1]` int64) and their log-probs (`[rows, 1]` f32) to the host in one copy (int64
/// token ids are exact in f64).
fn to_host(tokens: &Tensor, logprobs: &Tensor) -> (Vec<i64>, Vec<f32>) {
    let both = Tensor::cat(
        &[tokens.to_kind(Kind::Double), logprobs.to_kind(Kind::Double)],
        1,
    )
    .to_device(tch::Device::Cpu);
    let flat = Vec::<f64>::try_from(&both.view([-1])).expect("f64 tokens and log-probs");
    flat.chunks(2)
        .map(|pair| (pair[0] as i64, pair[1] as f32))
        .unzip()
}
