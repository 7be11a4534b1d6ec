//! A small character-level tokenizer built in code, for tiny models trained from scratch.
//!
//! It is a plain HF `tokenizer.json` (a BPE model with single-character tokens and no merges, no
//! pre-tokenizer, a `Fuse` decoder), so `save` produces a directory that transformers and vLLM load
//! as a `PreTrainedTokenizerFast`. Every character is one token and decoding is exact, which keeps
//! tiny-model experiments easy to read.

use crate::config::{ChatTemplates, TokenizerConfig};
use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;
use serde_json::{json, Map, Value};
use std::collections::HashSet;

/// ChatML, as used by Qwen: `<|im_start|>role\ncontent<|im_end|>\n`, generation prompt
/// `<|im_start|>assistant\n`.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// What a character-level tokenizer contains. Ids: special tokens first (in order), then `chars`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CharTokenizerSpec {
    /// Tokens matched whole before character splitting (e.g. `<|im_start|>`).
    pub special_tokens: Vec<String>,
    /// The ordinary vocabulary, one token per character.
    pub chars: Vec<char>,
    /// Replaces characters outside `chars`; without one they are dropped (HF BPE behaviour).
    pub unk_token: Option<String>,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub pad_token: Option<String>,
    pub chat_template: Option<String>,
}

impl CharTokenizerSpec {
    /// ChatML special tokens (`<|endoftext|>` = pad, id 0; `<|im_start|>`; `<|im_end|>` = eos;
    /// `<|unk|>`), the given characters and the ChatML template.
    pub fn chatml(chars: impl IntoIterator<Item = char>) -> Self {
        CharTokenizerSpec {
            special_tokens: ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|unk|>"]
                .map(String::from)
                .to_vec(),
            chars: chars.into_iter().collect(),
            unk_token: Some("<|unk|>".into()),
            bos_token: None,
            eos_token: Some("<|im_end|>".into()),
            pad_token: Some("<|endoftext|>".into()),
            chat_template: Some(CHATML_TEMPLATE.into()),
        }
    }

    /// Printable ASCII plus newline and tab: enough for arithmetic and English prompts.
    pub fn ascii_chars() -> Vec<char> {
        let mut chars: Vec<char> = vec!['\n', '\t'];
        chars.extend((0x20u8..0x7f).map(char::from));
        chars
    }

    /// The `tokenizer.json` document for this spec.
    pub fn tokenizer_json(&self) -> Result<Value> {
        self.validate()?;
        let mut vocab = Map::new();
        let mut added = Vec::new();
        for (id, tok) in self.special_tokens.iter().enumerate() {
            vocab.insert(tok.clone(), json!(id));
            added.push(json!({
                "id": id, "content": tok, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true
            }));
        }
        let offset = self.special_tokens.len();
        for (i, c) in self.chars.iter().enumerate() {
            vocab.insert(c.to_string(), json!(offset + i));
        }
        Ok(json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": null,
            "post_processor": null,
            "decoder": {"type": "Fuse"},
            "model": {
                "type": "BPE",
                "dropout": null,
                "unk_token": self.unk_token,
                "continuing_subword_prefix": null,
                "end_of_word_suffix": null,
                "fuse_unk": false,
                "byte_fallback": false,
                "ignore_merges": false,
                "vocab": vocab,
                "merges": []
            }
        }))
    }

    /// The matching `tokenizer_config.json` contents.
    pub fn tokenizer_config(&self) -> TokenizerConfig {
        let mut cfg = TokenizerConfig::default();
        cfg.set_token("bos_token", self.bos_token.as_deref());
        cfg.set_token("eos_token", self.eos_token.as_deref());
        cfg.set_token("pad_token", self.pad_token.as_deref());
        cfg.set_token("unk_token", self.unk_token.as_deref());
        let named: HashSet<&str> = [
            &self.bos_token,
            &self.eos_token,
            &self.pad_token,
            &self.unk_token,
        ]
        .into_iter()
        .filter_map(|t| t.as_deref())
        .collect();
        cfg.additional_special_tokens = self
            .special_tokens
            .iter()
            .filter(|t| !named.contains(t.as_str()))
            .cloned()
            .collect();
        cfg.chat_template = self.chat_template.clone().map(ChatTemplates::Single);
        cfg.extra.insert(
            "model_max_length".into(),
            json!(1_000_000_000_000_000_000u64),
        );
        cfg
    }

    /// Builds the tokenizer.
    pub fn build(&self) -> Result<Tokenizer> {
        let json = self.tokenizer_json()?;
        let inner =
            tokenizers::Tokenizer::from_bytes(json.to_string()).map_err(|e| Error::Load {
                source_name: "CharTokenizerSpec".into(),
                message: e.to_string(),
            })?;
        Tokenizer::from_tokenizers(inner, self.tokenizer_config())
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidArgument(format!("CharTokenizerSpec: {m}")));
        let mut seen = HashSet::new();
        for t in &self.special_tokens {
            if t.is_empty() {
                return bad("empty special token".into());
            }
            if !seen.insert(t.clone()) {
                return bad(format!("special token {t:?} listed twice"));
            }
        }
        for c in &self.chars {
            if !seen.insert(c.to_string()) {
                return bad(format!(
                    "character {c:?} listed twice (or also a special token)"
                ));
            }
        }
        for (field, tok) in [
            ("unk_token", &self.unk_token),
            ("bos_token", &self.bos_token),
            ("eos_token", &self.eos_token),
            ("pad_token", &self.pad_token),
        ] {
            if let Some(t) = tok {
                if !self.special_tokens.contains(t) {
                    return bad(format!("{field} {t:?} is not in special_tokens"));
                }
            }
        }
        if self.special_tokens.len() + self.chars.len() > u32::MAX as usize {
            return bad("vocabulary too large".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_layout_and_exact_round_trip() {
        let tok = CharTokenizerSpec::chatml(CharTokenizerSpec::ascii_chars())
            .build()
            .unwrap();
        assert_eq!(tok.pad_token_id(), Some(0));
        assert_eq!(tok.eos_token_id(), Some(2));
        assert_eq!(tok.token_to_id("\n"), Some(4));
        assert_eq!(tok.vocab_size(), 4 + 97);
        let text = "<|im_start|>user\n12 + 30 = ?<|im_end|>\n";
        let ids = tok.encode(text, true).unwrap();
        assert_eq!(ids.len(), 1 + 5 + 11 + 1 + 1);
        assert_eq!(tok.decode(&ids, false).unwrap(), text);
        assert_eq!(tok.decode(&ids, true).unwrap(), "user\n12 + 30 = ?\n");
        // Unknown characters map to <|unk|> instead of disappearing.
        assert_eq!(tok.encode("é", false).unwrap(), vec![3]);
    }

    #[test]
    fn chat_template_renders_chatml() {
        let tok = CharTokenizerSpec::chatml(CharTokenizerSpec::ascii_chars())
            .build()
            .unwrap();
        let msgs = [crate::Message::user("1+1?")];
        let text = tok.render_chat(&msgs, None, true, &Map::new()).unwrap();
        assert_eq!(
            text,
            "<|im_start|>user\n1+1?<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn invalid_specs_are_errors() {
        let mut spec = CharTokenizerSpec::chatml("ab".chars());
        spec.eos_token = Some("</s>".into());
        let err = spec.build().unwrap_err().to_string();
        assert!(err.contains("eos_token") && err.contains("</s>"), "{err}");
        let spec = CharTokenizerSpec::chatml("aba".chars());
        assert!(spec.build().unwrap_err().to_string().contains("twice"));
    }
}
