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
//!
//! On the CPU the same function runs as one fused Rust loop per thread instead of ~25 tensor passes
//! over int64 lanes (the integer hash is bit-identical; the final inverse error function is Giles'
//! single-precision approximation instead of libtorch's `erfinv`, so CPU and tensor-op results agree to
//! a few f32 ulps), which makes ALP's noise cost about what `randn` costs
//! (`cargo bench -p alp-learner --bench noise`). Devices other than the CPU use the tensor ops.
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
    pub fn round_keys(&self) -> (i64, i64) {
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

/// Element indices are 32-bit counters.
fn check_numel(numel: i64) {
    assert!(
        numel < (1i64 << 32),
        "noise tensors are limited to 2^32 elements (got {numel})"
    );
}

/// Uniform 32-bit hashes (as int64 in [0, 2^32)) of the flat indices `0..numel` under `key`.
pub fn hash_bits(numel: i64, key: NoiseKey, device: Device) -> Tensor {
    check_numel(numel);
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
    if device == Device::Cpu {
        standard_normal_cpu(shape, key)
    } else {
        standard_normal_tensor_ops(shape, key, device)
    }
}

/// The hash of flat index `i` under round keys `(k1, k2)`: [`hash_bits`] element by element.
#[inline]
pub fn hash32(i: u32, k1: u32, k2: u32) -> u32 {
    #[inline(always)]
    fn mix(mut x: u32) -> u32 {
        x ^= x >> 16;
        x = x.wrapping_mul(MUL1 as u32);
        x ^= x >> 15;
        x = x.wrapping_mul(MUL2 as u32);
        x ^ (x >> 16)
    }
    mix(mix(i ^ k1) ^ k2)
}

/// `ln(x)` for normal positive f32 `x`, branch-free so that a fill loop vectorizes: `x = 2^e m` with
/// `m` in `[sqrt(1/2), sqrt(2))`, then `ln m = 2 atanh(t)`, `t = (m - 1) / (m + 1)`, to `t^9` (the
/// truncation is below 1e-9 for `|t| <= 0.172`).
#[inline(always)]
fn ln_f32(x: f32) -> f32 {
    let bits = x.to_bits();
    let mut e = ((bits >> 23) & 0xff) as i32 - 127;
    let mut m = f32::from_bits((bits & 0x007f_ffff) | 0x3f80_0000);
    let big = m > std::f32::consts::SQRT_2;
    m = if big { m * 0.5 } else { m };
    e += big as i32;
    let t = (m - 1.0) / (m + 1.0);
    let t2 = t * t;
    let series = t2 * (1.0 / 3.0 + t2 * (1.0 / 5.0 + t2 * (1.0 / 7.0 + t2 * (1.0 / 9.0))));
    2.0 * t + 2.0 * t * series + e as f32 * std::f32::consts::LN_2
}

/// `erfinv(x)` for `|x| < 1` in f32: M. Giles, "Approximating the erfinv function" (GPU Computing
/// Gems, 2011), the single-precision polynomials, both branches evaluated and one selected (no
/// branch, so the fill loop vectorizes).
#[inline(always)]
pub fn erfinv_f32(x: f32) -> f32 {
    let w = -ln_f32((1.0 - x) * (1.0 + x));
    let c = w - 2.5;
    let mut central = 2.810_226_4e-8_f32;
    for k in [
        3.432_739_4e-7,
        -3.523_387_7e-6,
        -4.391_506_5e-6,
        2.185_808_7e-4,
        -1.253_725e-3,
        -4.177_681_6e-3,
        0.246_640_73,
        1.501_409_4,
    ] {
        central = k + central * c;
    }
    let t = w.sqrt() - 3.0;
    let mut tail = -2.002_142_6e-4_f32;
    for k in [
        1.009_505_6e-4,
        1.349_343_2e-3,
        -3.673_428_4e-3,
        5.739_507_7e-3,
        -7.622_461_3e-3,
        9.438_870_5e-3,
        1.001_674,
        2.832_976_8,
    ] {
        tail = k + tail * t;
    }
    (if w < 5.0 { central } else { tail }) * x
}

/// Element `index` of the noise under round keys `(k1, k2)`: the hash's top 24 bits as the odd
/// integer `2u + 1 - 2^24` in (-2^24, 2^24), scaled by 2^-24 (exact in f32, never +-1), through
/// `sqrt(2) erfinv`.
#[inline(always)]
fn normal_at(index: u32, k1: u32, k2: u32) -> f32 {
    let u = (hash32(index, k1, k2) >> 8) as i32;
    let v = (2 * u + 1 - (1 << 24)) as f32 * (1.0 / (1u32 << 24) as f32);
    std::f32::consts::SQRT_2 * erfinv_f32(v)
}

#[inline(always)]
fn fill_generic(part: &mut [f32], first: u32, k1: u32, k2: u32) {
    for (j, v) in part.iter_mut().enumerate() {
        *v = normal_at(first.wrapping_add(j as u32), k1, k2);
    }
}

/// The same loop compiled for AVX2 (8 lanes instead of SSE2's 4). No FMA: without fast-math the
/// compiler never fuses, so both builds round identically and the noise does not depend on the CPU.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn fill_avx2(part: &mut [f32], first: u32, k1: u32, k2: u32) {
    fill_generic(part, first, k1, k2)
}

fn fill(part: &mut [f32], first: u32, k1: u32, k2: u32) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked just above).
        unsafe { fill_avx2(part, first, k1, k2) };
        return;
    }
    fill_generic(part, first, k1, k2)
}

/// The CPU path: fills a fresh tensor in place, split across libtorch's intra-op thread count (each
/// element depends only on its index, so the split does not change the result).
fn standard_normal_cpu(shape: &[i64], key: NoiseKey) -> Tensor {
    let numel: i64 = shape.iter().product();
    check_numel(numel);
    let (k1, k2) = key.round_keys();
    let (k1, k2) = (k1 as u32, k2 as u32);
    let out = Tensor::empty([numel], (Kind::Float, Device::Cpu));
    let n = numel as usize;
    if n > 0 {
        // SAFETY: `out` is a fresh contiguous f32 CPU tensor of `n` elements that nothing else
        // references until this function returns it; the slice does not outlive this block.
        let values = unsafe { std::slice::from_raw_parts_mut(out.data_ptr() as *mut f32, n) };
        let threads = (tch::get_num_threads().max(1) as usize).min(n.div_ceil(1 << 16));
        let chunk = n.div_ceil(threads);
        if threads == 1 {
            fill(values, 0, k1, k2);
        } else {
            std::thread::scope(|scope| {
                for (c, part) in values.chunks_mut(chunk).enumerate() {
                    scope.spawn(move || fill(part, (c * chunk) as u32, k1, k2));
                }
            });
        }
    }
    out.reshape(shape)
}

/// The tensor-op path of [`standard_normal`] (any device): the same hash as int64 tensor ops, then
/// libtorch's `erfinv`.
pub fn standard_normal_tensor_ops(shape: &[i64], key: NoiseKey, device: Device) -> Tensor {
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
