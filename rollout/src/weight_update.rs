//! The one message that moves weights from the learner to inference: [`WeightUpdate`], a version and a
//! payload of named tensors. The learner side builds it ([`WeightUpdate::copy_of`] for another thread,
//! [`WeightUpdate::view_of`] on the model's own thread); every backend takes it through
//! [`crate::GenerationBackend::apply_update`], and whatever holds a copy of the model (the local
//! engine's inference copy, the vLLM backend's reference copy) applies it with
//! [`WeightUpdate::apply_to`], the one place an update is checked against a model.
//!
//! Payloads: [`WeightPayload::Full`] names every parameter, [`WeightPayload::Subset`] some of them (the
//! rest keep their values). The next kind is an adapter's tensors with its configuration (rank, alpha,
//! target modules), for LoRA; the enum is `#[non_exhaustive]` so that adding it breaks no match.
//!
//! The message crosses a process boundary as one safetensors buffer ([`WeightUpdate::to_bytes`]):
//! the tensors with their names, shapes and dtypes, and the version and payload kind in its metadata.
//! Values travel bit for bit, so an update applied after the trip copies the same values.
use std::collections::HashMap;

use alp_policy::CausalLM;
use safetensors::tensor::TensorView;
use safetensors::SafeTensors;
use tch::{Device, Tensor};

use crate::error::RolloutError;

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
            WeightPayload::Full(t) | WeightPayload::Subset(t) => t,
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
        }
    }

    /// Copies the update into `model`, each tensor converted (and rounded, for a model that rounds its
    /// weights) to the model's dtype. Checked before anything is copied: every name must be a parameter
    /// of `model`, named once, with the parameter's shape; a full update must name every parameter.
    pub fn apply_to(&self, model: &CausalLM) -> Result<(), RolloutError> {
        let copied = match &self.payload {
            WeightPayload::Full(t) => model.copy_named_weights(t),
            WeightPayload::Subset(t) => model.copy_named_weights_subset(t),
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
        let metadata = HashMap::from([
            ("version".to_string(), self.version.to_string()),
            ("payload".to_string(), self.payload_kind().to_string()),
        ]);
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
            other => return Err(bad(format!("unknown payload kind `{other}`"))),
        };
        Ok(WeightUpdate { version, payload })
    }
}
