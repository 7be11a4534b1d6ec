//! The low-rank noise of one antithetic pair and one matrix, as a pure function of its key.
use alp_policy::noise::{standard_normal, NoiseKey};
use tch::{Device, Tensor};

/// Keeps EGGROLL's streams apart from ALP's (which key by learner step, forward and layer).
const DOMAIN: u64 = 0x4567_6752_6f6c_6c21;

/// Identifies the factors of one antithetic pair for one matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FactorKey {
    pub seed: u64,
    /// The noise epoch ([`noise_epoch`]): the ES epoch, or a coarser one when noise is reused.
    pub epoch: u64,
    /// Members `2 pair` and `2 pair + 1`.
    pub pair: u64,
    /// [`param_id`] of the matrix's HF name.
    pub param: u64,
}

/// The noise epoch of ES epoch `epoch` with `noise_reuse` (0: the same noise forever, 1: fresh every
/// epoch, k: fresh every k epochs), as the reference code's `true_epoch`.
pub fn noise_epoch(epoch: u64, noise_reuse: u64) -> u64 {
    epoch.checked_div(noise_reuse).unwrap_or(0)
}

/// The antithetic sign of a member: `+1` for even, `-1` for odd.
pub fn sign(member: usize) -> f64 {
    if member.is_multiple_of(2) {
        1.0
    } else {
        -1.0
    }
}

/// A stable 64-bit id of a parameter name (FNV-1a), so keys do not depend on parameter order.
pub fn param_id(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// `(A, B)`: `A` is `[m, r]` (output side), `B` is `[n, r]` (input side), f32 N(0, 1), drawn as one
/// `[n + m, r]` block (`B` its first `n` rows, as the reference code splits it).
pub fn factors(key: FactorKey, m: i64, n: i64, rank: i64, device: Device) -> (Tensor, Tensor) {
    let block = standard_normal(
        &[n + m, rank],
        NoiseKey {
            seed: key.seed ^ DOMAIN,
            step: key.epoch,
            forward: key.pair,
            slot: key.param,
        },
        device,
    );
    (block.narrow(0, n, m), block.narrow(0, 0, n))
}
