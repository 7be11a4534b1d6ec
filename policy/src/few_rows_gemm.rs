//! `x W^T` for the few rows of a decode step on an x86 CPU, in f32, streaming the weight once.
//!
//! With 16 rows, a decode step's products are bound by how fast the weights arrive from memory, and
//! MKL's GEMM spends much of that time repacking the weight operand at every call (a profile of an
//! f32 decode step: MKL's packing routine 26% of the step, its kernel 30%). This kernel reads the
//! weight in its stored `[out, in]` layout: four weight rows at a time, each multiplied with every
//! row of `x` (held packed in the cache) as 16 (AVX-512) or 8 (AVX2) lanes of fused multiply-adds,
//! reduced at the end of the row; the four rows of the next block but one are prefetched into L2
//! while these compute, one cache line per step. The weight's rows are split among the threads of
//! libtorch's own OpenMP team (`GOMP_parallel`, resolved at run time), so its threads and ours are
//! the same and never compete for the cores.
//!
//! Every output is one dot product summed in a fixed order whatever the other rows of `x`: a row's
//! result does not depend on the batch it is in (MKL's may). It differs from MKL's by float
//! reassociation only.
//!
//! On other CPUs, with rows beyond [`MAX_ROWS`], or with an input width that is not a multiple of 16,
//! [`linear`] returns `None` and the caller multiplies with libtorch.
use std::sync::OnceLock;

use tch::{Device, Kind, Tensor};

/// Rows of `x` up to which [`linear`] applies.
pub const MAX_ROWS: i64 = 128;

/// Rows of bf16 `x` up to which [`linear`] applies: beyond them oneDNN's bf16 GEMM is faster
/// (`BENCH_DTYPE=bf16 cargo bench -p alp-policy --bench few_rows_gemm`: 2.3-2.8x at 1-16 rows, 1.5x at
/// 32, 0.9x at 64 on a Zen 4).
pub const MAX_BF16_ROWS: i64 = 32;

/// Weights smaller than this many elements are multiplied on the calling thread only (waking the
/// team costs more than the product).
const PARALLEL_MIN_ELEMENTS: i64 = 1 << 17;

/// The instruction set the kernel runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    Avx512,
    Avx2,
}

/// The kernel's instruction set on this CPU: AVX-512F if present, else AVX2 with FMA; `None` on
/// other CPUs. `ATEN_CPU_CAPABILITY=avx2` (which caps libtorch to AVX2, to measure a machine without
/// AVX-512) caps this kernel too, and `default` turns it off.
pub fn isa() -> Option<Isa> {
    static ISA: OnceLock<Option<Isa>> = OnceLock::new();
    *ISA.get_or_init(|| {
        let cap = std::env::var("ATEN_CPU_CAPABILITY")
            .map(|v| v.to_ascii_lowercase())
            .unwrap_or_default();
        detect(cap.as_str())
    })
}

/// Whether bf16 products run here too: AVX-512 with its bf16 dot product (`vdpbf16ps`: pairs of
/// bf16 products summed into f32 lanes), as on Zen 4 and Sapphire Rapids.
pub fn has_bf16_dot() -> bool {
    static BF16: OnceLock<bool> = OnceLock::new();
    *BF16.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            isa() == Some(Isa::Avx512) && std::arch::is_x86_feature_detected!("avx512bf16")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

#[cfg(target_arch = "x86_64")]
fn detect(cap: &str) -> Option<Isa> {
    if cap == "default" {
        return None;
    }
    if cap != "avx2" && std::arch::is_x86_feature_detected!("avx512f") {
        return Some(Isa::Avx512);
    }
    (std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma"))
        .then_some(Isa::Avx2)
}

#[cfg(not(target_arch = "x86_64"))]
fn detect(_cap: &str) -> Option<Isa> {
    None
}

thread_local! {
    static ENABLED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Turns the kernel on for this thread's [`crate::linear::linear`] calls until the guard drops: the
/// rollout engine does so around generation. Off elsewhere, so that the learner's forwards, with or
/// without gradient, keep libtorch's rounding (a no-grad scoring forward and a training forward of
/// the same weights must agree bit for bit).
pub fn enable() -> EnabledGuard {
    EnabledGuard {
        previous: ENABLED.with(|e| e.replace(true)),
    }
}

/// Whether [`enable`] is in force on this thread.
pub fn enabled() -> bool {
    ENABLED.with(|e| e.get())
}

/// Restores the previous state on drop (see [`enable`]).
pub struct EnabledGuard {
    previous: bool,
}

impl Drop for EnabledGuard {
    fn drop(&mut self) {
        ENABLED.with(|e| e.set(self.previous));
    }
}

/// `x W^T` for `x` `[.., in]` and `w` `[out, in]`, both f32 on the CPU, when this kernel applies
/// (see the module docs); `None` otherwise. Not differentiable: the caller makes sure no gradient is
/// wanted.
pub fn linear(x: &Tensor, w: &Tensor) -> Option<Tensor> {
    let isa = isa()?;
    let bf16 = x.kind() == Kind::BFloat16 && w.kind() == Kind::BFloat16 && has_bf16_dot();
    if x.device() != Device::Cpu
        || w.device() != Device::Cpu
        || !(bf16 || (x.kind() == Kind::Float && w.kind() == Kind::Float))
        || w.dim() != 2
        || x.dim() < 1
    {
        return None;
    }
    let size = x.size();
    let k = *size.last()?;
    let n = w.size()[0];
    let rows = x.numel() as i64 / k.max(1);
    if k == 0 || k % 16 != 0 || w.size()[1] != k || rows == 0 || rows > MAX_ROWS || n == 0 {
        return None;
    }
    if bf16 && (k % 32 != 0 || rows > MAX_BF16_ROWS) {
        return None;
    }
    let x = x.reshape([rows, k]).contiguous();
    let w = w.contiguous();
    let out = Tensor::empty([rows, n], (Kind::Float, Device::Cpu));
    let (m, k, n) = (rows as usize, k as usize, n as usize);
    let threads = if (n * k) as i64 >= PARALLEL_MIN_ELEMENTS {
        tch::get_num_threads().max(1) as usize
    } else {
        1
    };
    let mut out_size = size;
    *out_size.last_mut().expect("non-empty") = n as i64;
    if bf16 {
        // SAFETY: as below, with 16-bit elements.
        let (xs, ws, os) = unsafe {
            (
                std::slice::from_raw_parts(x.data_ptr() as *const u16, m * k),
                std::slice::from_raw_parts(w.data_ptr() as *const u16, n * k),
                std::slice::from_raw_parts_mut(out.data_ptr() as *mut f32, m * n),
            )
        };
        product_bf16(xs, ws, os, m, k, n, threads);
        // Summed in f32, rounded once to bf16, as a bf16 GEMM's output is.
        return Some(out.to_kind(Kind::BFloat16).reshape(out_size.as_slice()));
    }
    // SAFETY: `x` is `[m, k]`, `w` `[n, k]` and `out` `[m, n]`, all contiguous f32 on the CPU and
    // alive until the product returns.
    let (xs, ws, os) = unsafe {
        (
            std::slice::from_raw_parts(x.data_ptr() as *const f32, m * k),
            std::slice::from_raw_parts(w.data_ptr() as *const f32, n * k),
            std::slice::from_raw_parts_mut(out.data_ptr() as *mut f32, m * n),
        )
    };
    product(isa, xs, ws, os, m, k, n, threads);
    Some(out.reshape(out_size.as_slice()))
}

/// `out[m, n] = x[m, k] . w[n, k]^T` with the weight rows split over `threads` threads.
#[allow(clippy::too_many_arguments)]
fn product(
    isa: Isa,
    x: &[f32],
    w: &[f32],
    out: &mut [f32],
    m: usize,
    k: usize,
    n: usize,
    threads: usize,
) {
    let packed = pack_rows(x, m, k, 16);
    split_weight_rows(out, n, threads, &|n0, n1, last, out| {
        // SAFETY: `out` is the `[m, n]` output; this part writes columns `n0..n1` (and, the last
        // part, the leftover columns after them) only.
        unsafe {
            match isa {
                Isa::Avx512 => avx512::rows(&packed, m, k, w, n0, n1, out, n),
                Isa::Avx2 => avx2::rows(&packed, m, k, w, n0, n1, out, n),
            }
            if last {
                leftover_rows(x, m, k, w, n1, n, out, |v| v);
            }
        }
    });
}

/// Splits the `n / 4` blocks of four weight rows over `threads` threads of libtorch's team: each
/// part calls `rows(n0, n1, last, out)` for its weight rows `n0..n1`; the `last` part (whose `n1` is
/// `n / 4 * 4`) adds the `n % 4` rows after them.
fn split_weight_rows(
    out: &mut [f32],
    n: usize,
    threads: usize,
    rows: &(dyn Fn(usize, usize, bool, *mut f32) + Sync),
) {
    let out_ptr = SendPtr(out.as_mut_ptr());
    let blocks = n / 4;
    let part = |t: usize, parts: usize| {
        let (b0, b1) = (blocks * t / parts, blocks * (t + 1) / parts);
        rows(b0 * 4, b1 * 4, t + 1 == parts, out_ptr.get());
    };
    crate::openmp::parallel(threads, &part);
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: the threads of one product write disjoint parts of the output.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// The pointer (a method, so that closures capture the `Sync` wrapper, not its field).
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// [`product`] of bf16 `x` and `w` (as their bits), on AVX-512 with `vdpbf16ps`.
fn product_bf16(
    x: &[u16],
    w: &[u16],
    out: &mut [f32],
    m: usize,
    k: usize,
    n: usize,
    threads: usize,
) {
    let packed = pack_rows(x, m, k, 32);
    split_weight_rows(out, n, threads, &|n0, n1, last, out| {
        // SAFETY: as in `product`; the caller checked `has_bf16_dot`.
        unsafe {
            #[cfg(target_arch = "x86_64")]
            avx512::rows_bf16(&packed, m, k, w, n0, n1, out, n);
            if last {
                leftover_rows(x, m, k, w, n1, n, out, bf16_to_f32);
            }
        }
    });
}

/// `x` in blocks of 4 rows (zero rows pad the last), each block laid out as `k / lanes` chunks of
/// 4 x `lanes` elements (16 floats or 32 bf16: one 64-byte register): the four rows' next inputs side
/// by side, so the kernel reads `x` sequentially.
fn pack_rows<T: Copy + Default>(x: &[T], m: usize, k: usize, lanes: usize) -> Vec<T> {
    let blocks = m.div_ceil(4);
    let mut packed = vec![T::default(); blocks * 4 * k];
    for row in 0..m {
        let (block, r) = (row / 4, row % 4);
        for chunk in 0..k / lanes {
            let at = block * 4 * k + chunk * 4 * lanes + r * lanes;
            let from = row * k + chunk * lanes;
            packed[at..at + lanes].copy_from_slice(&x[from..from + lanes]);
        }
    }
    packed
}

/// A bf16 (as its bits) widened to f32, exactly.
fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// The last `n % 4` weight rows, one plain dot product per output, of the operands widened to f32
/// by `widen` (exactly: a product of two bf16 is exact in f32 too).
///
/// # Safety
/// `out` points to `m * n` floats.
#[allow(clippy::too_many_arguments)]
unsafe fn leftover_rows<T: Copy>(
    x: &[T],
    m: usize,
    k: usize,
    w: &[T],
    from: usize,
    n: usize,
    out: *mut f32,
    widen: impl Fn(T) -> f32,
) {
    for j in from..n {
        let wr = &w[j * k..(j + 1) * k];
        for i in 0..m {
            let xr = &x[i * k..(i + 1) * k];
            *out.add(i * n + j) = xr.iter().zip(wr).map(|(&a, &b)| widen(a) * widen(b)).sum();
        }
    }
}

/// Weight blocks (of 4 rows) ahead of the one computing whose lines are prefetched.
const PREFETCH_BLOCKS: usize = 2;

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::PREFETCH_BLOCKS;

    /// The loop of [`rows`] and [`rows_bf16`]: weight rows `n0..n1` four at a time, each 64-byte step
    /// of `$lanes` inputs read with `$load` and added into 16 f32 accumulators (4 weight rows x 4
    /// rows of `x`) by `$dot(acc, x, w)`; the blocks ahead prefetched into L2, one line per step.
    macro_rules! stream_weight_rows {
        ($packed:ident, $m:ident, $k:ident, $w:ident, $n0:ident, $n1:ident, $out:ident, $n:ident,
         $lanes:expr, $load:expr, $dot:expr) => {
            let row_blocks = $m.div_ceil(4);
            let mut j = $n0;
            while j < $n1 {
                let wp = $w.as_ptr().add(j * $k);
                let ahead = wp.wrapping_add(PREFETCH_BLOCKS * 4 * $k);
                for rb in 0..row_blocks {
                    let xp = $packed.as_ptr().add(rb * 4 * $k);
                    let mut acc = [_mm512_setzero_ps(); 16];
                    let mut c = 0;
                    while c < $k {
                        // The block ahead's 4 x k / lanes lines, spread over the passes of this
                        // block.
                        let mut r = rb;
                        while r < 4 {
                            _mm_prefetch::<_MM_HINT_T1>(ahead.wrapping_add(r * $k + c) as *const i8);
                            r += row_blocks;
                        }
                        let w0 = $load(wp.add(c));
                        let w1 = $load(wp.add($k + c));
                        let w2 = $load(wp.add(2 * $k + c));
                        let w3 = $load(wp.add(3 * $k + c));
                        for (i, a) in acc.chunks_exact_mut(4).enumerate() {
                            let xv = $load(xp.add(c * 4 + i * $lanes));
                            a[0] = $dot(a[0], xv, w0);
                            a[1] = $dot(a[1], xv, w1);
                            a[2] = $dot(a[2], xv, w2);
                            a[3] = $dot(a[3], xv, w3);
                        }
                        c += $lanes;
                    }
                    let sums = reduce16(&acc);
                    let lanes: [f32; 16] = std::mem::transmute(sums);
                    for r in 0..4.min($m - rb * 4) {
                        let o = $out.add((rb * 4 + r) * $n + j);
                        std::ptr::copy_nonoverlapping(lanes.as_ptr().add(r * 4), o, 4);
                    }
                }
                j += 4;
            }
        };
    }

    /// `acc + x * w`, in the argument order of `_mm512_dpbf16_ps`.
    #[inline(always)]
    unsafe fn fmadd(acc: __m512, x: __m512, w: __m512) -> __m512 {
        _mm512_fmadd_ps(x, w, acc)
    }

    /// Output columns `n0..n1` (multiples of 4) of every row: weight rows `n0..n1`.
    ///
    /// # Safety
    /// AVX-512F is present; `packed` is [`super::pack_rows`] of `m` rows of width `k` (a multiple of
    /// 16); `w` is `[n, k]`; `out` points to `m * n` floats.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn rows(
        packed: &[f32],
        m: usize,
        k: usize,
        w: &[f32],
        n0: usize,
        n1: usize,
        out: *mut f32,
        n: usize,
    ) {
        stream_weight_rows!(packed, m, k, w, n0, n1, out, n, 16, _mm512_loadu_ps, fmadd);
    }

    /// As [`rows`] for bf16 operands (their bits): each step takes 32 inputs of a row, one 64-byte
    /// line, and `vdpbf16ps` adds their pairwise products into 16 f32 lanes.
    ///
    /// # Safety
    /// AVX-512F and AVX512_BF16 are present; `packed` is [`super::pack_rows`] of `m` rows of width
    /// `k` (a multiple of 32) in 32-lane chunks; `w` is `[n, k]`; `out` points to `m * n` floats.
    #[target_feature(enable = "avx512f,avx512bf16")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn rows_bf16(
        packed: &[u16],
        m: usize,
        k: usize,
        w: &[u16],
        n0: usize,
        n1: usize,
        out: *mut f32,
        n: usize,
    ) {
        let load = |p: *const u16| -> __m512bh { std::mem::transmute(_mm512_loadu_si512(p as _)) };
        stream_weight_rows!(packed, m, k, w, n0, n1, out, n, 32, load, _mm512_dpbf16_ps);
    }

    /// Lane `4r + c` of the result is the sum of the lanes of `acc[4r + c]`.
    #[target_feature(enable = "avx512f")]
    unsafe fn reduce16(acc: &[__m512; 16]) -> __m512 {
        let mut pairs = [_mm512_setzero_ps(); 8];
        for (i, p) in pairs.iter_mut().enumerate() {
            let (a, b) = (acc[2 * i], acc[2 * i + 1]);
            *p = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
        }
        let mut quads = [_mm512_setzero_ps(); 4];
        for (i, q) in quads.iter_mut().enumerate() {
            let (a, b) = (
                _mm512_castps_pd(pairs[2 * i]),
                _mm512_castps_pd(pairs[2 * i + 1]),
            );
            *q = _mm512_add_ps(
                _mm512_castpd_ps(_mm512_unpacklo_pd(a, b)),
                _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)),
            );
        }
        // quads[i]: per 128-bit lane, partial sums of acc[4i..4i + 4]; add the four lanes.
        let low = _mm512_add_ps(
            _mm512_shuffle_f32x4::<0x44>(quads[0], quads[1]),
            _mm512_shuffle_f32x4::<0xEE>(quads[0], quads[1]),
        );
        let high = _mm512_add_ps(
            _mm512_shuffle_f32x4::<0x44>(quads[2], quads[3]),
            _mm512_shuffle_f32x4::<0xEE>(quads[2], quads[3]),
        );
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0x88>(low, high),
            _mm512_shuffle_f32x4::<0xDD>(low, high),
        )
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::PREFETCH_BLOCKS;

    /// As [`super::avx512::rows`], in 8-lane registers and two rows of `x` at a time (16 registers).
    ///
    /// # Safety
    /// AVX2 and FMA are present; otherwise as [`super::avx512::rows`].
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn rows(
        packed: &[f32],
        m: usize,
        k: usize,
        w: &[f32],
        n0: usize,
        n1: usize,
        out: *mut f32,
        n: usize,
    ) {
        let row_pairs = m.div_ceil(2);
        let mut j = n0;
        while j < n1 {
            let wp = w.as_ptr().add(j * k);
            let ahead = wp.wrapping_add(PREFETCH_BLOCKS * 4 * k);
            for rp in 0..row_pairs {
                // Rows 2rp and 2rp + 1 sit in packed block rp / 2, at lanes (rp % 2) * 2 and + 1.
                let xp = packed.as_ptr().add((rp / 2) * 4 * k + (rp % 2) * 32);
                let mut acc = [_mm256_setzero_ps(); 8];
                let mut c = 0;
                while c < k {
                    let mut r = rp;
                    while r < 4 {
                        _mm_prefetch::<_MM_HINT_T1>(ahead.wrapping_add(r * k + c) as *const i8);
                        r += row_pairs;
                    }
                    for half in 0..2 {
                        let at = c + half * 8;
                        let w0 = _mm256_loadu_ps(wp.add(at));
                        let w1 = _mm256_loadu_ps(wp.add(k + at));
                        let w2 = _mm256_loadu_ps(wp.add(2 * k + at));
                        let w3 = _mm256_loadu_ps(wp.add(3 * k + at));
                        for (i, a) in acc.chunks_exact_mut(4).enumerate() {
                            let xv = _mm256_loadu_ps(xp.add(c * 4 + i * 16 + half * 8));
                            a[0] = _mm256_fmadd_ps(xv, w0, a[0]);
                            a[1] = _mm256_fmadd_ps(xv, w1, a[1]);
                            a[2] = _mm256_fmadd_ps(xv, w2, a[2]);
                            a[3] = _mm256_fmadd_ps(xv, w3, a[3]);
                        }
                    }
                    c += 16;
                }
                let sums = reduce8(&acc);
                let lanes: [f32; 8] = std::mem::transmute(sums);
                for r in 0..2.min(m - rp * 2) {
                    let o = out.add((rp * 2 + r) * n + j);
                    std::ptr::copy_nonoverlapping(lanes.as_ptr().add(r * 4), o, 4);
                }
            }
            j += 4;
        }
    }

    /// Lane `4r + c` of the result is the sum of the lanes of `acc[4r + c]`.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn reduce8(acc: &[__m256; 8]) -> __m256 {
        let a = _mm256_hadd_ps(acc[0], acc[1]);
        let b = _mm256_hadd_ps(acc[2], acc[3]);
        let c = _mm256_hadd_ps(acc[4], acc[5]);
        let d = _mm256_hadd_ps(acc[6], acc[7]);
        // Per 128-bit half: partial sums of acc[0..4] (low quad) and acc[4..8].
        let low = _mm256_hadd_ps(a, b);
        let high = _mm256_hadd_ps(c, d);
        _mm256_add_ps(
            _mm256_permute2f128_ps::<0x20>(low, high),
            _mm256_permute2f128_ps::<0x31>(low, high),
        )
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod avx512 {
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn rows(
        _: &[f32],
        _: usize,
        _: usize,
        _: &[f32],
        _: usize,
        _: usize,
        _: *mut f32,
        _: usize,
    ) {
        unreachable!("isa() is None off x86_64")
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod avx2 {
    pub(super) use super::avx512::rows;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every ISA against an f64 product, for row counts around the block sizes, widths that leave
    /// weight rows over, and a weight large enough to be split across threads. Each output is within
    /// the deterministic bound of an f32 sum of `k` products, `k u sum |x_i w_i|` (`u` = 2^-24).
    #[test]
    fn matches_an_f64_product() {
        let isas: Vec<Isa> = match isa() {
            Some(Isa::Avx512) => vec![Isa::Avx512, Isa::Avx2],
            Some(Isa::Avx2) => vec![Isa::Avx2],
            None => return,
        };
        for &(m, k, n) in &[
            (1, 16, 4),
            (3, 64, 101),
            (5, 32, 9),
            (16, 512, 1408),
            (32, 256, 1030),
        ] {
            let x = Tensor::randn([m, k], (Kind::Float, Device::Cpu));
            let w = Tensor::randn([n, k], (Kind::Float, Device::Cpu));
            let (xd, wd) = (x.to_kind(Kind::Double), w.to_kind(Kind::Double));
            let want = Vec::<f64>::try_from(xd.matmul(&wd.tr()).view([-1])).unwrap();
            let scale = Vec::<f64>::try_from(xd.abs().matmul(&wd.abs().tr()).view([-1])).unwrap();
            let bound = k as f64 * f64::powi(2.0, -24);
            let xs = Vec::<f32>::try_from(x.view([-1])).unwrap();
            let ws = Vec::<f32>::try_from(w.view([-1])).unwrap();
            for &isa in &isas {
                for threads in [1, 2, 3] {
                    let mut got = vec![f32::NAN; (m * n) as usize];
                    product(
                        isa, &xs, &ws, &mut got, m as usize, k as usize, n as usize, threads,
                    );
                    let worst = got
                        .iter()
                        .zip(want.iter().zip(&scale))
                        .map(|(&g, (&e, &s))| (g as f64 - e).abs() / s)
                        .fold(0.0, f64::max);
                    assert!(
                        worst <= bound,
                        "{isa:?} {threads} threads, [{m}x{k}] x [{k}x{n}]: error {worst:e} of \
                         sum |x w|, above the bound {bound:e}"
                    );
                }
            }
        }
    }

    /// The bf16 kernel against an f64 product of the same bf16 values: every product of two bf16 is
    /// exact in f32, so the bound of an f32 sum of `k` terms holds as above.
    #[test]
    fn bf16_matches_an_f64_product() {
        if !has_bf16_dot() {
            return;
        }
        for &(m, k, n) in &[(1, 32, 4), (3, 64, 101), (6, 96, 9), (16, 512, 1408)] {
            let x = Tensor::randn([m, k], (Kind::Float, Device::Cpu)).to_kind(Kind::BFloat16);
            let w = Tensor::randn([n, k], (Kind::Float, Device::Cpu)).to_kind(Kind::BFloat16);
            let (xd, wd) = (x.to_kind(Kind::Double), w.to_kind(Kind::Double));
            let want = Vec::<f64>::try_from(xd.matmul(&wd.tr()).view([-1])).unwrap();
            let scale = Vec::<f64>::try_from(xd.abs().matmul(&wd.abs().tr()).view([-1])).unwrap();
            let bound = k as f64 * f64::powi(2.0, -24);
            let bits = |t: &Tensor| {
                Vec::<i16>::try_from(t.view_dtype(Kind::Int16).view([-1]))
                    .unwrap()
                    .into_iter()
                    .map(|b| b as u16)
                    .collect::<Vec<u16>>()
            };
            let (xs, ws) = (bits(&x), bits(&w));
            for threads in [1, 2, 3] {
                let mut got = vec![f32::NAN; (m * n) as usize];
                product_bf16(
                    &xs, &ws, &mut got, m as usize, k as usize, n as usize, threads,
                );
                let worst = got
                    .iter()
                    .zip(want.iter().zip(&scale))
                    .map(|(&g, (&e, &s))| (g as f64 - e).abs() / s)
                    .fold(0.0, f64::max);
                assert!(
                    worst <= bound,
                    "bf16 {threads} threads, [{m}x{k}] x [{k}x{n}]: error {worst:e} above {bound:e}"
                );
            }
            // Through `linear`: the f32 sums rounded once to bf16.
            let y = linear(&x, &w).expect("the bf16 kernel applies");
            assert_eq!(y.kind(), Kind::BFloat16);
            let want_bf16 = xd
                .matmul(&wd.tr())
                .to_kind(Kind::BFloat16)
                .to_kind(Kind::Double);
            let diff = (y.to_kind(Kind::Double) - &want_bf16).abs();
            let tol = want_bf16.abs() * f64::powi(2.0, -7) + 1e-3;
            assert!(bool::try_from(diff.le_tensor(&tol).all()).unwrap());
        }
    }
}
