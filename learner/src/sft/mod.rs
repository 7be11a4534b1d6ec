//! Supervised fine-tuning (the `[sft]` warm start and `alp-rl sft`): next-token cross-entropy on worked
//! conversations, trained on the assistant's tokens (each turn and the EOS that ends it) only; prompt
//! tokens and what the environment says between turns (tool results) are never trained on.
//!
//! It is the RL learner's machinery with another loss:
//! - conversations ([`conversation`]: an environment's worked answers, or a JSONL file) are tokenised
//!   by the episode runner's own code ([`alp_rollout::encode_conversation`]) into [`SftExample`]s,
//!   so SFT trains exactly the tokens RL samples and trains on;
//! - an example is a [`crate::Sample`] (completion = everything after the prompt), packed and scored
//!   by [`crate::PackedBatch`] like a rollout sample;
//! - the loss ([`sft_loss`]) is the token-mean [`crate::loss::aggregate`] of the negative
//!   log-likelihood;
//! - the optimizer is the learner's [`crate::AdamW`] model group, built from
//!   [`crate::OptimizerSettings`], with the same gradient clipping ([`SftLearner`]).
//!
//! Writing checkpoints and logs is the caller's (the application's run directory).
pub mod conversation;
pub mod error;
pub mod example;
pub mod learner;
pub mod loss;

pub use conversation::{env_pair, read_jsonl, SftPair, ROLES};
pub use error::SftDataError;
pub use example::{check_file, encode_pair, SftExample, SftSource};
pub use learner::{SftLearner, SftSettings, SftStep};
pub use loss::{sft_loss, sft_loss_with};
