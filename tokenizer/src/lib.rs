//! Tokenizer and chat templates, compatible with HuggingFace transformers.
//!
//! - [`Tokenizer`]: a `tokenizer.json` plus `tokenizer_config.json` (special tokens, templates).
//! - [`ChatTemplate`]: Jinja chat templates rendered byte-for-byte as transformers renders them.
//! - [`CharTokenizerSpec`]: a small character-level tokenizer built in code for tiny models.

mod chat_template;
mod config;
mod error;
pub mod python;
mod small;
mod strftime;
mod tokenizer;

pub use chat_template::{ChatTemplate, FunctionCall, Message, ToolCall};
pub use config::{ChatTemplates, NamedTemplate, TokenizerConfig, SPECIAL_TOKEN_FIELDS};
pub use error::{Error, Result};
pub use small::{CharTokenizerSpec, CHATML_TEMPLATE};
pub use tokenizer::{clean_up_tokenization, StreamDecoder, Tokenizer, CONFIG_FILE, TOKENIZER_FILE};
