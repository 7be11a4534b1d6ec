//! One description per architecture family: every fact that tells Qwen2, Qwen3 and Llama apart (the
//! names transformers gives them, where their biases sit, their q/k norms, which `config.json` keys
//! they honour), in one table that the config reader, the parameter list and the error messages read.
//! Adding a family is adding a [`Family`] here (and a spelling to [`Architecture`]).
alp_macros::string_enum! {
    /// The supported decoder families (HF `model_type`); what tells them apart is their [`Family`].
    pub enum Architecture: "architecture" {
        /// Qwen2 / Qwen2.5.
        Qwen2 => "qwen2",
        /// Qwen3 (dense).
        Qwen3 => "qwen3",
        /// Llama 3 / SmolLM2.
        Llama => "llama",
    }
}

/// Which attention projections carry a bias.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionBias {
    /// Always on q, k and v, never on o; there is no `attention_bias` key (Qwen2).
    QkvAlways,
    /// On q, k, v and o when `attention_bias` is true (Qwen3, Llama).
    AllIfConfigured,
}

/// What distinguishes one decoder family from the others, as transformers implements it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Family {
    pub architecture: Architecture,
    /// The transformers classes (`config.json`'s `architectures`); the first is the one we write.
    pub hf_classes: &'static [&'static str],
    /// Per-head RMSNorm on q and k before RoPE (`self_attn.q_norm` / `k_norm`).
    pub qk_norm: bool,
    pub attention_bias: AttentionBias,
    /// Whether the MLP projections carry a bias when `mlp_bias` is true (transformers' Qwen MLPs
    /// never do, whatever the key says).
    pub mlp_bias_key: bool,
    /// Whether the family has sliding-window attention (`use_sliding_window`, `sliding_window`,
    /// `max_window_layers`, `layer_types`), which this decoder does not implement.
    pub sliding_window_keys: bool,
    /// `tie_word_embeddings` when the file does not say (each family's config class default).
    pub tie_word_embeddings_default: bool,
}

/// Every supported family.
pub const FAMILIES: &[Family] = &[
    Family {
        architecture: Architecture::Qwen2,
        hf_classes: &["Qwen2ForCausalLM"],
        qk_norm: false,
        attention_bias: AttentionBias::QkvAlways,
        mlp_bias_key: false,
        sliding_window_keys: true,
        tie_word_embeddings_default: false,
    },
    Family {
        architecture: Architecture::Qwen3,
        hf_classes: &["Qwen3ForCausalLM"],
        qk_norm: true,
        attention_bias: AttentionBias::AllIfConfigured,
        mlp_bias_key: false,
        sliding_window_keys: true,
        tie_word_embeddings_default: false,
    },
    Family {
        architecture: Architecture::Llama,
        hf_classes: &["LlamaForCausalLM"],
        qk_norm: false,
        attention_bias: AttentionBias::AllIfConfigured,
        mlp_bias_key: true,
        sliding_window_keys: false,
        tie_word_embeddings_default: false,
    },
];

impl Family {
    /// The family `config.json` names: `model_type` (`qwen2`) or else a transformers class
    /// (`Qwen2ForCausalLM`).
    pub fn named(name: &str) -> Option<&'static Family> {
        FAMILIES
            .iter()
            .find(|f| f.architecture.as_str() == name || f.hf_classes.contains(&name))
    }

    /// The families in words for error messages: `qwen2 (Qwen2ForCausalLM), ...`.
    pub fn supported() -> String {
        FAMILIES
            .iter()
            .map(|f| format!("{} ({})", f.architecture, f.hf_classes.join(", ")))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// `(q/k/v bias, o bias)` given the file's `attention_bias` (false when absent).
    pub fn attention_biases(&self, attention_bias: bool) -> (bool, bool) {
        match self.attention_bias {
            AttentionBias::QkvAlways => (true, false),
            AttentionBias::AllIfConfigured => (attention_bias, attention_bias),
        }
    }
}

impl Architecture {
    /// This architecture's row of [`FAMILIES`].
    pub fn family(self) -> &'static Family {
        FAMILIES
            .iter()
            .find(|f| f.architecture == self)
            .expect("every architecture has a family")
    }

    /// The transformers class (`config.json`'s `architectures`).
    pub fn hf_class(self) -> &'static str {
        self.family().hf_classes[0]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_architecture_has_exactly_one_family() {
        for spelling in Architecture::ALL {
            let arch: Architecture = spelling.parse().unwrap();
            let rows = FAMILIES.iter().filter(|f| f.architecture == arch).count();
            assert_eq!(rows, 1, "{spelling}");
            assert_eq!(Family::named(spelling).unwrap().architecture, arch);
            assert_eq!(Family::named(arch.hf_class()).unwrap().architecture, arch);
        }
        assert_eq!(FAMILIES.len(), Architecture::ALL.len());
        assert!(Family::named("gpt_neox").is_none());
    }
}
