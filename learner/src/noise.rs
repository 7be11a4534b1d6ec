//! Counter-based Gaussian noise computed with tensor ops on the target device.
//!
//! Why not `Tensor::randn`: tch exposes no per-call `Generator`, and `tch::manual_seed` reseeds the
//! process-global generators, which rollout threads sampling with torch may be drawing from at the same
//! time: a scoped reseed is neither reproducible nor thread-safe. Generating on the CPU in Rust would be
//! reproducible but far too slow for `[batch, seq, hidden]` noise per layer on a GPU.
//!
//! So element `i` of a noise tensor is a pure function of `(key, i)`: a 32-bit integer hash (two keyed
//! rounds of a xorshift-multiply mixer) of the element's index gives a 24-bit uniform `u`, and
//! `z = sqrt(2) erfinv(2u - 1)` maps it to N(0, 1) (tails reach about 5.3 sigma). All integer work stays
//! below 2^63 in int64 lanes (32-bit values times 31-bit multipliers), so it is exact, identical on every
//! device, free of global state and safe to call from any thread. The float tail (erfinv) may differ by
//! an ulp between CPU and CUDA kernels; on one device the result is bit-reproducible.
use tch::{Device, Kind, Tensor};

/// Identifies one noise tensor: ALP uses (run seed, learner step, forward index, layer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NoiseKey {
    pub seed: u64,
    pub step: u64,
    pub forward: u64,
    pub slot: u64,
}

impl NoiseKey {
    /// Two 32-bit round keys derived from all four fields with splitmix64, so nearby keys give
    /// unrelated streams.
    fn round_keys(&self) -> (i64, i64) {
        let mut h = splitmix64(self.seed ^ 0x243f_6a88_85a3_08d3);
        for x in [self.step, self.forward, self.slot] {
            h = splitmix64(h ^ x);
        }
        ((h & 0xffff_ffff) as i64, (h >> 32) as i64)
    }
}

/// splitmix64 finaliser (Steele et al.), used only on the CPU for key derivation.
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

const MASK32: i64 = 0xffff_ffff;
// Odd multipliers below 2^31 (from the "lowbias32"/"triple32" hash families) keep every product of a
// 32-bit value below 2^63, so int64 arithmetic never overflows.
const MUL1: i64 = 0x7feb_352d;
const MUL2: i64 = 0x3184_8bab;

/// One mixer round, in place on `x` (`tmp` is scratch of the same shape): in-place ops avoid a fresh
/// allocation per op, which dominated the cost on the CPU.
fn mix32_(x: &mut Tensor, tmp: &Tensor) {
    let xorshift = |x: &mut Tensor, s: i64| {
        let _ = x.bitwise_right_shift_tensor_scalar_out(tmp, s);
        let _ = x.bitwise_xor_tensor_(tmp);
    };
    xorshift(x, 16);
    let _ = x.g_mul_scalar_(MUL1).bitwise_and_(MASK32);
    xorshift(x, 15);
    let _ = x.g_mul_scalar_(MUL2).bitwise_and_(MASK32);
    xorshift(x, 16);
}

/// Uniform 32-bit hashes (as int64 in [0, 2^32)) of the flat indices `0..numel` under `key`.
pub fn hash_bits(numel: i64, key: NoiseKey, device: Device) -> Tensor {
    assert!(
        numel < (1i64 << 32),
        "noise tensors are limited to 2^32 elements (got {numel})"
    );
    let (k1, k2) = key.round_keys();
    let mut x = Tensor::arange(numel, (Kind::Int64, device));
    let tmp = x.empty_like();
    let _ = x.bitwise_xor_(k1);
    mix32_(&mut x, &tmp);
    let _ = x.bitwise_xor_(k2);
    mix32_(&mut x, &tmp);
    x
}

/// A standard-normal f32 tensor of `shape` on `device`, a pure function of `key` (see module docs).
pub fn standard_normal(shape: &[i64], key: NoiseKey, device: Device) -> Tensor {
    let numel: i64 = shape.iter().product();
    let mut bits = hash_bits(numel, key, device);
    // 2u - 1 with u = (bits + 0.5) / 2^24, formed as an odd integer in (-2^24, 2^24) scaled by 2^-24:
    // exact in f32 and never exactly +-1, so erfinv stays finite.
    let _ = bits
        .bitwise_right_shift_tensor_scalar_(8)
        .g_mul_scalar_(2)
        .g_add_scalar_(1 - (1i64 << 24));
    let mut z = bits.to_kind(Kind::Float);
    let _ = z
        .g_mul_scalar_(1.0 / (1u64 << 24) as f64)
        .erfinv_()
        .g_mul_scalar_(std::f64::consts::SQRT_2);
    z.reshape(shape)
}
