//! The LM head of a large-vocabulary f32 model on the CPU, held a second time for oneDNN.
//!
//! libtorch multiplies f32 matrices on the CPU with MKL, whose GEMM repacks its weight operand on
//! every call. A decoder projection's weight fits in the last-level cache and repacks cheaply, but a
//! vocabulary-sized LM head (65 MB at 32,000 x 512, 545 MB at Qwen's 151,936 x 896) is streamed from
//! memory to be repacked at every decode step: that packing was half of the head's time in a profile.
//! oneDNN's inner product (`mkldnn_linear`) multiplies by its own copy of the weight without
//! repacking: 1.5-1.9x faster than MKL for a [16 x 512] x [512 x 32000] and a [16 x 896] x
//! [896 x 151936] product on a 2-core EPYC, but slower for weights that fit in the cache (0.2-0.9x
//! at 101 x 64 to 8192 x 512), hence the size threshold. Same product up to float reassociation.
//!
//! The copy is made from the weights of the moment and does not follow them: whoever holds one
//! makes it again after the weights change (the rollout engine does at every weight install).
use tch::{Device, Kind, Tensor};

/// LM head weights of at least this many bytes get a oneDNN copy (twice the 32 MiB L3 cache of the
/// machine it was measured on; the smallest head measured faster was 65 MB, the largest slower 16 MB).
pub const ONEDNN_HEAD_MIN_BYTES: i64 = 32 << 20;

/// A copy of an LM head weight (`[vocab, hidden]`) in oneDNN's tensor format.
#[derive(Debug)]
pub struct OnednnLmHead {
    weight: Tensor,
}

impl OnednnLmHead {
    /// A copy of `weight` when oneDNN would multiply by it faster than MKL: an f32 CPU weight of at
    /// least [`ONEDNN_HEAD_MIN_BYTES`], in a libtorch built with oneDNN; `None` otherwise.
    pub fn for_weight(weight: &Tensor) -> Option<OnednnLmHead> {
        let eligible = weight.device() == Device::Cpu
            && weight.kind() == Kind::Float
            && weight.dim() == 2
            && weight.numel() as i64 * 4 >= ONEDNN_HEAD_MIN_BYTES
            && tch::utils::has_mkldnn();
        eligible.then(|| OnednnLmHead {
            weight: tch::no_grad(|| weight.detach().contiguous().to_mkldnn()),
        })
    }

    /// `x W^T` (`x`: `[.., hidden]` f32 on the CPU), returned as an ordinary dense tensor.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let size = x.size();
        let hidden = *size.last().expect("x has a feature dimension");
        let rows = x.numel() as i64 / hidden.max(1);
        let y = x
            .reshape([rows, hidden])
            .contiguous()
            .to_mkldnn()
            .mkldnn_linear(&self.weight, None::<Tensor>)
            .to_dense(None, false);
        let mut out = size;
        *out.last_mut().expect("non-empty") = self.weight.size()[0];
        y.reshape(out.as_slice())
    }
}
