//! One module per `alp-rl` subcommand.
pub mod env;
pub mod eval;
pub mod generate;
pub mod new_model;
pub mod sft;
pub mod train;
