//! The one message that moves weights from the learner to inference: [`WeightUpdate`], a version and a
//! payload of named tensors. The learner side builds it ([`WeightUpdate::copy_of`] for another thread,
//! [`WeightUpdate::view_of`] on the model's own thread); every backend takes it through
//! [`crate::GenerationBackend::apply_update`], and whatever holds a copy of the model (the local
//! engine's inference copy, the vLLM backend's reference copy) applies it with
//! [`WeightUpdate::apply_to`], the one place an update is checked against a model.
//!
//! Payloads: [`WeightPayload::Full`] names every parameter, [`WeightPayload::Subset`] some of them (the
//! rest keep their values), [`WeightPayload::Adapter`] a LoRA adapter's factors with its settings (for
//! servers that apply adapters themselves). The enum is `#[non_exhaustive]`.
//!
//! The message crosses a process boundary as one safetensors buffer ([`WeightUpdate::to_bytes`]):
//! the tensors with their names, shapes and dtypes, and the version and payload kind in its metadata.
//! Values travel bit for bit, so an update applied after the trip copies the same values.
use std::collections::HashMap;

use alp_policy::{CausalLM, LoraConfig};
use safetensors::tensor::TensorView;
use safetensors::SafeTensors;
use tch::{Device, Tensor};

use crate::error::RolloutError;

/// The metadata key of an adapter update's `adapter_config.json` in the serialised form.
const ADAPTER_CONFIG_KEY: &str = "adapter_config";

/// `(HF parameter name, tensor)` pairs, in any dtype (each copy converts to the receiving model's).
pub type NamedTensors = Vec<(String, Tensor)>;

/// What an update carries.
#[derive(Debug)]
#[non_exhaustive]
pub enum WeightPayload {
    /// Every parameter of the model.
    Full(NamedTensors),
    /// Some parameters; the others keep the values they have.
    Subset(NamedTensors),
    /// A LoRA adapter: its A and B factors under PEFT's names and its settings. A receiver that
    /// serves adapters (vLLM) loads it on top of the base weights it holds; a plain model copy
    /// cannot take it ([`WeightUpdate::apply_to`] refuses it: send the merged projections instead).
    Adapter {
        config: LoraConfig,
        tensors: NamedTensors,
    },
}

/// New weights for inference, tagged with the policy version they are.
#[derive(Debug)]
pub struct WeightUpdate {
    pub version: u64,
    pub payload: WeightPayload,
}

impl WeightUpdate {
    /// Deep copies of every parameter of `model` (the learner's policy), to send to another thread:
    /// what the learner publishes after each step.
    pub fn copy_of(model: &CausalLM, version: u64) -> Self {
        let tensors = tch::no_grad(|| {
            model
                .named_parameters()
                .into_iter()
                .map(|(n, t)| (n, t.detach().copy()))
                .collect()
        });
        WeightUpdate {
            version,
            payload: WeightPayload::Full(tensors),
        }
    }

    /// Every parameter of `model`, shared with it rather than copied: a sync on the thread that holds
    /// `model`, which must not change it until the update is applied.
    pub fn view_of(model: &CausalLM, version: u64) -> Self {
        WeightUpdate {
            version,
            payload: WeightPayload::Full(model.named_parameters()),
        }
    }

    /// The named tensors the update carries.
    pub fn tensors(&self) -> &[(String, Tensor)] {
        match &self.payload {
            WeightPayload::Full(t)
            | WeightPayload::Subset(t)
            | WeightPayload::Adapter { tensors: t, .. } => t,
        }
    }

    /// Bytes of the tensors the update carries, in the dtypes they are sent in (`sync/bytes`).
    pub fn num_bytes(&self) -> u64 {
        self.tensors()
            .iter()
            .map(|(_, t)| (t.numel() * t.kind().elt_size_in_bytes()) as u64)
            .sum()
    }

    /// The payload's name in logs and in the serialised form: `full` or `subset`.
    pub fn payload_kind(&self) -> &'static str {
        match &self.payload {
            WeightPayload::Full(_) => "full",
            WeightPayload::Subset(_) => "subset",
            WeightPayload::Adapter { .. } => "adapter",
        }
    }

    /// Copies the update into `model`, each tensor converted (and rounded, for a model that rounds its
    /// weights) to the model's dtype. Checked before anything is copied: every name must be a parameter
    /// of `model`, named once, with the parameter's shape; a full update must name every parameter.
    pub fn apply_to(&self, model: &CausalLM) -> Result<(), RolloutError> {
        let copied = match &self.payload {
            WeightPayload::Full(t) => model.copy_named_weights(t),
            WeightPayload::Subset(t) => model.copy_named_weights_subset(t),
            WeightPayload::Adapter { .. } => return Err(RolloutError::WeightUpdate {
                version: self.version,
                problem:
                    "an adapter update goes to a backend that serves adapters (vLLM); a model copy \
                              takes the adapted projections merged (a subset update)"
                        .into(),
            }),
        };
        copied.map_err(|e| RolloutError::WeightUpdate {
            version: self.version,
            problem: e.to_string(),
        })
    }

    /// The update as one safetensors buffer (tensors in f32, bf16 or f16; the version and payload kind
    /// in its metadata): what a learner in another process would send.
    pub fn to_bytes(&self) -> Result<Vec<u8>, RolloutError> {
        let bad = |problem: String| RolloutError::WeightUpdate {
            version: self.version,
            problem,
        };
        let mut views = Vec::with_capacity(self.tensors().len());
        for (name, t) in self.tensors() {
            let t = t.detach().to_device(Device::Cpu).contiguous();
            let dtype = alp_policy::dtype::safetensors_dtype_of(t.kind())
                .ok_or_else(|| bad(format!("{name} is {:?}; f32, bf16 or f16 only", t.kind())))?;
            let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
            let mut data = vec![0u8; t.numel() * t.kind().elt_size_in_bytes()];
            t.f_copy_data_u8(&mut data, t.numel())
                .map_err(|e| bad(format!("{name}: {e}")))?;
            views.push((name.clone(), dtype, shape, data));
        }
        let tensors = views
            .iter()
            .map(|(name, dtype, shape, data)| {
                TensorView::new(*dtype, shape.clone(), data)
                    .map(|v| (name.as_str(), v))
                    .map_err(|e| bad(format!("{name}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut metadata = HashMap::from([
            ("version".to_string(), self.version.to_string()),
            ("payload".to_string(), self.payload_kind().to_string()),
        ]);
        if let WeightPayload::Adapter { config, .. } = &self.payload {
            metadata.insert(ADAPTER_CONFIG_KEY.into(), config.to_peft_json().to_string());
        }
        safetensors::serialize(tensors, Some(metadata)).map_err(|e| bad(e.to_string()))
    }

    /// Reads what [`Self::to_bytes`] wrote; tensors come back on the CPU in the dtype they were sent in.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, RolloutError> {
        let bad = |problem: String| RolloutError::WeightUpdate {
            version: 0,
            problem: format!("reading a serialised update: {problem}"),
        };
        let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| bad(e.to_string()))?;
        let meta = header.metadata().clone().unwrap_or_default();
        let field = |key: &str| {
            meta.get(key)
                .ok_or_else(|| bad(format!("no `{key}` in the metadata")))
        };
        let version: u64 = field("version")?
            .parse()
            .map_err(|e| bad(format!("version: {e}")))?;
        let kind = field("payload")?.clone();
        let file = SafeTensors::deserialize(bytes).map_err(|e| bad(e.to_string()))?;
        let mut tensors = NamedTensors::new();
        // In name order, as `CausalLM::named_parameters` lists them.
        let mut names: Vec<String> = file.names().into_iter().map(String::from).collect();
        names.sort();
        for name in names {
            let view = file.tensor(&name).map_err(|e| bad(e.to_string()))?;
            let kind = alp_policy::dtype::kind_of_safetensors(view.dtype())
                .ok_or_else(|| bad(format!("{name} is {:?}", view.dtype())))?;
            let size: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
            let t = Tensor::f_from_data_size(view.data(), &size, kind)
                .map_err(|e| bad(format!("{name}: {e}")))?;
            tensors.push((name, t));
        }
        let payload = match kind.as_str() {
            "full" => WeightPayload::Full(tensors),
            "subset" => WeightPayload::Subset(tensors),
            "adapter" => {
                let text = field(ADAPTER_CONFIG_KEY)?;
                let json: serde_json::Value =
                    serde_json::from_str(text).map_err(|e| bad(format!("adapter config: {e}")))?;
                let config = LoraConfig::from_peft_json(&json, "the update's adapter config")
                    .map_err(|e| bad(e.to_string()))?;
                WeightPayload::Adapter { config, tensors }
            }
            other => return Err(bad(format!("unknown payload kind `{other}`"))),
        };
        Ok(WeightUpdate { version, payload })
    }
}
