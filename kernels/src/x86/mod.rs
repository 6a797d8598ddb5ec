//! x86-64 kernels: one file per tier, each function compiled with its
//! `#[target_feature]` set and only reached through the tables below,
//! which [`crate::dispatch`] hands out after checking the CPU.

use crate::dispatch::{Isa, Kernels};

/// Compiles a generic body with a tier's `target_feature` set: `fn` gives
/// the `unsafe fn` that the tier's kernels call, `entry fn` a safe table
/// entry around it (sound because `crate::dispatch` hands a tier's table
/// out only after the CPU reported its features).
macro_rules! tier_fn {
    ($feat:literal, $tier:literal; $(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)? => $body:expr) => {
        $(#[$doc])*
        #[target_feature(enable = $feat)]
        unsafe fn $name($($arg: $ty),*) $(-> $ret)? {
            $body
        }
    };
    ($feat:literal, $tier:literal; entry $(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)? => $body:expr) => {
        $(#[$doc])*
        pub(crate) fn $name($($arg: $ty),*) $(-> $ret)? {
            #[target_feature(enable = $feat)]
            unsafe fn imp($($arg: $ty),*) $(-> $ret)? {
                $body
            }
            // SAFETY: only reachable through the tier's table ($tier, or a
            // table built on it), handed out after its features were detected.
            unsafe { imp($($arg),*) }
        }
    };
}
pub(crate) use tier_fn;

pub mod amx;
pub mod avx2;
// The AVX-512 intrinsics are stable since Rust 1.89, the workspace's
// minimum.
pub mod avx512;
pub mod maddubs;
mod packed;
pub(crate) use packed::Packed;
pub mod vnni;

/// AVX2, FMA and F16C (Haswell and later, Zen 1 and later).
pub fn avx2_available() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

/// AVX-512 F/BW/VL with VNNI (Ice Lake and later, Zen 4 and later), on
/// top of AVX2.
pub fn avx512_available() -> bool {
    avx2_available()
        && is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vnni")
}

/// AVX-512 VBMI (byte permutes) and GFNI (bit-matrix byte ops), both in
/// Ice Lake and later and Zen 4 and later: the `q4s24` int8 kernel needs
/// them on top of the AVX-512 tier.
pub fn avx512_vbmi_available() -> bool {
    avx512_available() && is_x86_feature_detected!("avx512vbmi") && is_x86_feature_detected!("gfni")
}

/// How far ahead of the bytes a decode kernel is reading it asks for the
/// next ones ([`prefetch`]). One core alone does not keep enough reads in
/// flight for the memory's bandwidth, and the hardware prefetcher stops at
/// every 4 KiB page; about 1.5 KiB ahead measured best for both the dense
/// and the sparse int8 kernels on SmolLM2 (more arrives too early and is
/// evicted, less too late).
pub(crate) const PREFETCH_AHEAD: usize = 1536;

/// How far past the next 4-row tile's bytes the AVX-512 int8 decode
/// kernel asks for weights ([`prefetch_line`]). With each pair of blocks of
/// a row it reads, it asks for one line of the same row 4 rows on, plus
/// this: requests spread evenly over the reads, which also reaches into the
/// next matrix while a matrix ends. Asking for a whole tile at once at its
/// start ([`prefetch`], 768 or 1536 bytes ahead: session 13) kept memory
/// busier in bursts and idle between them. Session 14, alternating runs,
/// tg128 tok/s, tile-start → spread with 4 KiB: q8 1 thread 106 → 117,
/// 2 threads 186 → 222; q4 163 → 225 and 285 → 350 (2 KiB and 8 KiB were
/// each slower in at least one of these).
pub(crate) const PREFETCH_SPREAD: usize = 4096;

/// Asks for the cache lines of `base[ahead..ahead + len]` (in bytes) to be
/// loaded into L1. Only hints: the addresses need not be valid (a
/// prefetch never faults), so a kernel may ask past the end of its plane.
#[inline(always)]
pub(crate) fn prefetch(base: *const u8, len: usize, ahead: usize) {
    let mut o = 0;
    while o < len {
        // SAFETY: `_mm_prefetch` is SSE (part of x86-64) and never faults;
        // `wrapping_add` forms the address without claiming it is in
        // bounds.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                base.wrapping_add(ahead + o) as *const i8,
            )
        };
        o += 64;
    }
}

/// Asks for the cache line at `p` (a hint: `p` need not be valid).
#[inline(always)]
pub(crate) fn prefetch_line(p: *const u8) {
    // SAFETY: `_mm_prefetch` is SSE (part of x86-64) and never faults.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p as *const i8)
    };
}

/// Runs an in-place prompt kernel (`f` fills every element of the
/// token-major `(n, m)` view it is given) and writes its products into
/// `out (m, n)`, row-major by weight row, as the tables' `(rows, n)`
/// entries return them.
pub(crate) fn into_row_major(
    n: usize,
    m: usize,
    out: &mut [f32],
    f: impl FnOnce(crate::pool::Columns<'_>),
) {
    assert_eq!(out.len(), m * n, "matmul: out is not (rows, n)");
    let mut tmp = vec![0.0f32; n * m];
    f(crate::pool::Columns::new(&mut tmp, n, m, 0..m));
    for (r, o) in out.chunks_exact_mut(n).enumerate() {
        for (t, v) in o.iter_mut().enumerate() {
            *v = tmp[t * m + r];
        }
    }
}

/// Buffers that dropped activation layouts give back, for the next input
/// to reuse: a prompt arranges several inputs per layer, and a fresh
/// buffer each time would be zeroed and faulted in again by one thread.
pub(crate) struct Recycler<T>(std::sync::Mutex<Vec<Vec<T>>>);

impl<T: Clone + Default> Recycler<T> {
    /// Buffers kept at most.
    const KEEP: usize = 4;

    pub(crate) const fn new() -> Recycler<T> {
        Recycler(std::sync::Mutex::new(Vec::new()))
    }

    /// `len` elements of a buffer given back, else a new one; the caller
    /// overwrites every element. The buffer is the shortest one holding
    /// at least `len` (else the longest, extended): inputs of several
    /// widths take turns, and a long buffer cut short for a narrow input
    /// would have its tail written again (by this thread alone) for the
    /// next wide one.
    pub(crate) fn take(&self, len: usize) -> Vec<T> {
        let mut v = {
            let mut free = self.0.lock().unwrap_or_else(|e| e.into_inner());
            let fits = (0..free.len())
                .filter(|&i| free[i].len() >= len)
                .min_by_key(|&i| free[i].len());
            let best = fits.or_else(|| (0..free.len()).max_by_key(|&i| free[i].len()));
            best.map(|i| free.swap_remove(i)).unwrap_or_default()
        };
        v.resize(len, T::default());
        v
    }

    /// Keeps `v` for a later [`Recycler::take`].
    pub(crate) fn give(&self, v: Vec<T>) {
        if v.capacity() > 0 {
            let mut free = self.0.lock().unwrap_or_else(|e| e.into_inner());
            if free.len() < Self::KEEP {
                free.push(v);
            }
        }
    }
}

use crate::quant::sparse::x86 as s24;

/// The AVX2 tier.
pub static AVX2: Kernels = Kernels {
    isa: Isa::Avx2,
    quantize_q8: avx2::quantize,
    matmul_q8_q8: avx2::matmul_q8_q8,
    matmul_q4_q8: avx2::matmul_q4_q8,
    matmul_q4m_q8: avx2::matmul_q4m_q8,
    matmul_q4s24_q8: Some(s24::matmul_s24_q8_avx2::<s24::Q4S24Avx2>),
    matmul_q8s24_q8: Some(s24::matmul_s24_q8_avx2::<s24::Q8S24Avx2>),
    prepare_q8: crate::dispatch::no_prepare_q8,
    matmul_f32: avx2::matmul_f32_entry,
    matmul_f32_cols: None,
    matmul_q8_cols: Some(crate::dispatch::Q8ColsKernel {
        min_tokens: maddubs::MIN_TOKENS,
        takes: maddubs::takes,
        f: maddubs::matmul_q8_cols,
        prepare: maddubs::prepare_q8,
    }),
    dot: avx2::dot,
    axpy: avx2::axpy,
    softmax: avx2::softmax,
    attend: avx2::attend,
    silu_mul: avx2::silu_mul,
};

/// The AVX-512 (VNNI) tier.
pub static AVX512: Kernels = Kernels {
    isa: Isa::Avx512,
    quantize_q8: avx512::quantize,
    matmul_q8_q8: vnni::matmul_q8_q8,
    matmul_q4_q8: vnni::matmul_q4_q8,
    matmul_q4m_q8: avx512::matmul_q4m_q8,
    matmul_q4s24_q8: Some(s24::matmul_s24_q8::<s24::Q4S24Kind>),
    matmul_q8s24_q8: Some(s24::matmul_s24_q8::<s24::Q8S24Kind>),
    prepare_q8: avx512::prepare_q8,
    matmul_f32: vnni::matmul_f32_entry,
    matmul_f32_cols: Some(crate::dispatch::ColsKernel {
        min_tokens: vnni::MIN_TOKENS,
        takes: crate::dispatch::takes_all,
        f: vnni::matmul_f32_cols,
        prepare: vnni::prepare_f32,
    }),
    matmul_q8_cols: Some(crate::dispatch::Q8ColsKernel {
        min_tokens: vnni::MIN_TOKENS,
        takes: vnni::takes_q8,
        f: vnni::matmul_q8_cols,
        prepare: vnni::prepare_q8,
    }),
    dot: avx512::dot,
    axpy: avx512::axpy,
    softmax: avx512::softmax,
    attend: avx512::attend,
    silu_mul: avx512::silu_mul,
};

/// The AVX-512 tier on a CPU without VBMI (Skylake-X, Cascade Lake): 2:4
/// sparse weights take the AVX2 int8 kernels.
pub static AVX512_NO_VBMI: Kernels = Kernels {
    matmul_q4s24_q8: AVX2.matmul_q4s24_q8,
    matmul_q8s24_q8: AVX2.matmul_q8s24_q8,
    ..AVX512
};

/// The AMX tier: the AVX-512 tier with prompts (f32 activations, from
/// [`amx::MIN_TOKENS`] tokens) on the tile unit.
pub static AMX: Kernels = Kernels {
    isa: Isa::Amx,
    matmul_f32: amx::matmul_f32_entry,
    matmul_f32_cols: Some(crate::dispatch::ColsKernel {
        min_tokens: amx::MIN_TOKENS,
        takes: crate::dispatch::takes_all,
        f: amx::matmul_f32_cols,
        prepare: amx::prepare_f32,
    }),
    ..AVX512
};

/// The AMX tier on a CPU without VBMI (none is known; for completeness).
pub static AMX_NO_VBMI: Kernels = Kernels {
    matmul_q4s24_q8: AVX2.matmul_q4s24_q8,
    matmul_q8s24_q8: AVX2.matmul_q8s24_q8,
    ..AMX
};

#[cfg(test)]
mod tests {
    use super::{prefetch, Recycler, PREFETCH_AHEAD};

    /// Narrow and wide inputs taking turns each get back the buffer of
    /// their own length, as it was left (nothing rewritten).
    #[test]
    fn recycler_gives_each_length_its_own_buffer() {
        let r: Recycler<u32> = Recycler::new();
        let (mut wide, mut narrow) = (r.take(30), r.take(10));
        wide.fill(3);
        narrow.fill(1);
        let (wp, np) = (wide.as_ptr(), narrow.as_ptr());
        r.give(wide);
        r.give(narrow);
        for _ in 0..3 {
            let n = r.take(10);
            assert_eq!((n.as_ptr(), n.len()), (np, 10));
            assert!(n.iter().all(|&v| v == 1));
            let w = r.take(30);
            assert_eq!((w.as_ptr(), w.len()), (wp, 30));
            assert!(w.iter().all(|&v| v == 3));
            r.give(n);
            r.give(w);
        }
        // Longer than any: the longest, extended with defaults.
        let l = r.take(40);
        assert_eq!(l.len(), 40);
        assert!(l[..30].iter().all(|&v| v == 3) && l[30..].iter().all(|&v| v == 0));
    }

    /// The decode kernels ask for lines past the end of their planes (the
    /// last rows' look-ahead): that must never fault, nor change memory.
    #[test]
    fn prefetch_past_the_end_is_harmless() {
        let v = [7u8; 100];
        prefetch(v.as_ptr(), v.len(), PREFETCH_AHEAD);
        prefetch(v.as_ptr(), 4096, 0);
        prefetch(std::ptr::null(), 256, 0);
        prefetch(v.as_ptr(), 64, usize::MAX - 63);
        assert!(v.iter().all(|&b| b == 7));
    }
}
