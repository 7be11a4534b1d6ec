//! `Tokenizer`: a HuggingFace `tokenizer.json` plus the `tokenizer_config.json` facts (special
//! tokens, chat templates) that transformers layers on top of it.
//!
//! For RL the token ids are the source of truth: sampled ids are never re-tokenised; `decode` is for
//! rewards and logs only.

use crate::chat_template::ChatTemplate;
use crate::config::{load_template_files, ChatTemplates, TokenizerConfig};
use crate::error::{Error, Result};
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::Path;
use tokenizers::{
    DecodeStream, DecoderWrapper, ModelWrapper, NormalizerWrapper, PostProcessorWrapper,
    PreTokenizerWrapper,
};

pub const TOKENIZER_FILE: &str = "tokenizer.json";
pub const CONFIG_FILE: &str = "tokenizer_config.json";

/// Tokenizer with special tokens and compiled chat templates.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    config: TokenizerConfig,
    /// Compiled templates by name (a single template is named `default`).
    templates: BTreeMap<String, ChatTemplate>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("special_tokens", &self.config.special_tokens)
            .field("templates", &self.templates.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Tokenizer {
    /// Loads a model directory: `tokenizer.json` (required), `tokenizer_config.json` (optional),
    /// and `chat_template.jinja` / `additional_chat_templates/*.jinja`, which take priority over
    /// the config's `chat_template` as in transformers.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let tok_path = dir.join(TOKENIZER_FILE);
        if !tok_path.is_file() {
            return Err(Error::MissingFile {
                path: tok_path,
                what: "a tokenizer directory needs tokenizer.json",
            });
        }
        let inner = tokenizers::Tokenizer::from_file(&tok_path).map_err(|e| Error::Load {
            source_name: tok_path.display().to_string(),
            message: e.to_string(),
        })?;
        let cfg_path = dir.join(CONFIG_FILE);
        let mut config = if cfg_path.is_file() {
            TokenizerConfig::from_file(&cfg_path)?
        } else {
            TokenizerConfig::default()
        };
        let from_files = load_template_files(dir)?;
        let has_files = from_files.is_some();
        if let Some(files) = from_files {
            config.chat_template = Some(files);
        }
        // Name the file each template came from, so a syntax error points at it.
        let origin = |name: &str| match (has_files, name) {
            (false, _) => cfg_path.display().to_string(),
            (true, "default") => dir.join("chat_template.jinja").display().to_string(),
            (true, n) => dir
                .join("additional_chat_templates")
                .join(format!("{n}.jinja"))
                .display()
                .to_string(),
        };
        Self::build(inner, config, origin)
    }

    /// Wraps an in-memory `tokenizers::Tokenizer` (e.g. one built in code) with a config.
    pub fn from_tokenizers(inner: tokenizers::Tokenizer, config: TokenizerConfig) -> Result<Self> {
        Self::build(inner, config, |_| "in-memory tokenizer config".to_string())
    }

    fn build(
        inner: tokenizers::Tokenizer,
        config: TokenizerConfig,
        origin: impl Fn(&str) -> String,
    ) -> Result<Self> {
        let mut templates = BTreeMap::new();
        let sources: Vec<(String, String)> = match &config.chat_template {
            None => Vec::new(),
            Some(ChatTemplates::Single(t)) => vec![("default".into(), t.clone())],
            Some(ChatTemplates::Named(list)) => list
                .iter()
                .map(|t| (t.name.clone(), t.template.clone()))
                .collect(),
        };
        for (name, source) in sources {
            let label = format!("`{name}` from {}", origin(&name));
            let t = ChatTemplate::new(label, source)?.with_special_tokens(&config);
            templates.insert(name, t);
        }
        Ok(Tokenizer {
            inner,
            config,
            templates,
        })
    }

    /// Writes `tokenizer.json` and `tokenizer_config.json` into `dir` (created if needed), in the
    /// layout `transformers.AutoTokenizer.from_pretrained(dir)` loads.
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let tok_path = dir.join(TOKENIZER_FILE);
        self.inner.save(&tok_path, true).map_err(|e| Error::Load {
            source_name: tok_path.display().to_string(),
            message: format!("cannot save: {e}"),
        })?;
        let cfg_path = dir.join(CONFIG_FILE);
        let mut json = self.config.to_json();
        if let Value::Object(obj) = &mut json {
            // AutoTokenizer needs a class; a tokenizer.json alone is a PreTrainedTokenizerFast.
            obj.entry("tokenizer_class")
                .or_insert_with(|| Value::String("PreTrainedTokenizerFast".into()));
        }
        let text = serde_json::to_string_pretty(&json).map_err(|source| Error::Json {
            path: cfg_path.clone(),
            source,
        })?;
        std::fs::write(&cfg_path, text + "\n").map_err(|source| Error::Io {
            path: cfg_path,
            source,
        })
    }

    /// Token ids of `text`. With `add_special_tokens` the post-processor may add BOS/EOS (Qwen's
    /// adds nothing). Special tokens written in the text are recognised, as in transformers.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        self.inner
            .encode(text, add_special_tokens)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| Error::Tokenize {
                op: "encode",
                message: e.to_string(),
            })
    }

    /// Text of `ids`, with transformers' `clean_up_tokenization_spaces` when the config asks.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        let text = self
            .inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| Error::Tokenize {
                op: "decode",
                message: e.to_string(),
            })?;
        Ok(if self.config.clean_up_tokenization_spaces {
            clean_up_tokenization(&text)
        } else {
            text
        })
    }

    /// Incremental decoder for streaming output: yields text once it is complete UTF-8.
    pub fn stream_decoder(&self, skip_special_tokens: bool) -> StreamDecoder<'_> {
        StreamDecoder {
            inner: self.inner.decode_stream(skip_special_tokens),
        }
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Number of tokens including added ones (transformers' `len(tokenizer)`).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Id of a special token by field name (`"eos_token"`, `"pad_token"`, ...).
    pub fn special_token_id(&self, field: &str) -> Option<u32> {
        self.config.token(field).and_then(|t| self.token_to_id(t))
    }

    pub fn eos_token_id(&self) -> Option<u32> {
        self.special_token_id("eos_token")
    }

    pub fn pad_token_id(&self) -> Option<u32> {
        self.special_token_id("pad_token")
    }

    pub fn bos_token_id(&self) -> Option<u32> {
        self.special_token_id("bos_token")
    }

    pub fn config(&self) -> &TokenizerConfig {
        &self.config
    }

    /// The underlying `tokenizers` tokenizer, for anything not wrapped here.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// The template transformers would pick: `name` if given, else `tool_use` when tools are
    /// present and such a template exists, else the default.
    pub fn chat_template(&self, name: Option<&str>, has_tools: bool) -> Result<&ChatTemplate> {
        let Some(all) = &self.config.chat_template else {
            return Err(Error::NoChatTemplate(
                "tokenizer_config.json has no `chat_template` and there is no chat_template.jinja"
                    .into(),
            ));
        };
        let (picked, _) = all.select(name, has_tools)?;
        self.templates
            .get(picked)
            .ok_or_else(|| Error::NoChatTemplate(format!("template `{picked}` is not compiled")))
    }

    /// The chat as text, like transformers' `apply_chat_template(..., tokenize=False)`.
    pub fn render_chat<M: Serialize>(
        &self,
        messages: &[M],
        tools: Option<&[Value]>,
        add_generation_prompt: bool,
        extra: &Map<String, Value>,
    ) -> Result<String> {
        self.chat_template(None, tools.is_some())?.render(
            messages,
            tools,
            add_generation_prompt,
            extra,
        )
    }

    /// The chat as token ids, like transformers' `apply_chat_template(..., tokenize=True)`: the
    /// rendered text is encoded without adding special tokens (the template already has them).
    pub fn apply_chat_template<M: Serialize>(
        &self,
        messages: &[M],
        tools: Option<&[Value]>,
        add_generation_prompt: bool,
        extra: &Map<String, Value>,
    ) -> Result<Vec<u32>> {
        let text = self.render_chat(messages, tools, add_generation_prompt, extra)?;
        self.encode(&text, false)
    }
}

/// transformers' `clean_up_tokenization`: undoes the spaces word-level decoders put before
/// punctuation and English contractions.
pub fn clean_up_tokenization(text: &str) -> String {
    const PAIRS: [(&str, &str); 10] = [
        (" .", "."),
        (" ?", "?"),
        (" !", "!"),
        (" ,", ","),
        (" ' ", "'"),
        (" n't", "n't"),
        (" 'm", "'m"),
        (" 's", "'s"),
        (" 've", "'ve"),
        (" 're", "'re"),
    ];
    PAIRS
        .iter()
        .fold(text.to_string(), |acc, (from, to)| acc.replace(from, to))
}

/// Streaming decoder: feed ids one at a time, get text pieces when they form valid UTF-8.
pub struct StreamDecoder<'a> {
    inner: DecodeStream<
        'a,
        ModelWrapper,
        NormalizerWrapper,
        PreTokenizerWrapper,
        PostProcessorWrapper,
        DecoderWrapper,
    >,
}

impl StreamDecoder<'_> {
    /// The new text completed by `id`, or `None` while a multi-byte character is still partial.
    pub fn step(&mut self, id: u32) -> Result<Option<String>> {
        self.inner.step(id).map_err(|e| Error::Tokenize {
            op: "decode a stream",
            message: e.to_string(),
        })
    }
}
