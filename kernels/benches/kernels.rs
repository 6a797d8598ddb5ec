//! Kernel throughput per tier, one thread.
//!
//! Decode (n = 1) matrix products report GB/s of weight bytes read
//! (`Throughput::Bytes`); prefill (n = 64, 512) products report op/s with
//! `Throughput::Elements(2·rows·cols·n)`, so criterion's "elem/s" is
//! op/s (divide by 1e9 for GOP/s).
//!
//! `cargo bench -p microllm-kernels --bench kernels -- <filter>`, e.g.
//! `-- decode/avx512` or `-- prefill`.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use microllm_kernels::dispatch::{Isa, Kernels};
use microllm_kernels::pool::Pool;
use microllm_kernels::quant::{
    encode, BlockQ8, F32Activations, Q8Activations, QuantizedWeights, TensorType, WeightsRef, QK,
};
use std::time::Duration;

fn values(seed: u64, len: usize) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * 0.1
        })
        .collect()
}

/// Owned weights of any type (bytes in the file layout, 64-aligned).
struct Owned {
    ty: TensorType,
    rows: usize,
    cols: usize,
    bytes: Vec<u64>,
    len: usize,
}

impl Owned {
    fn new(ty: TensorType, rows: usize, cols: usize) -> Owned {
        let mut w = values(rows as u64 * 31 + cols as u64, rows * cols);
        if ty.is_sparse() {
            // 2:4: the 2 smallest of every 4 inputs are zero.
            for g in w.chunks_exact_mut(4) {
                let mut o = [0usize, 1, 2, 3];
                o.sort_by(|&a, &b| g[a].abs().total_cmp(&g[b].abs()));
                g[o[0]] = 0.0;
                g[o[1]] = 0.0;
            }
        }
        let b = match ty {
            TensorType::F32 | TensorType::F16 => encode(ty, &w, rows, cols).unwrap(),
            _ => QuantizedWeights::quantize(ty, &w, rows, cols)
                .unwrap()
                .to_le_bytes(),
        };
        let mut bytes = vec![0u64; b.len().div_ceil(8)];
        bytemuck::cast_slice_mut::<u64, u8>(&mut bytes)[..b.len()].copy_from_slice(&b);
        Owned {
            ty,
            rows,
            cols,
            bytes,
            len: b.len(),
        }
    }
    fn get(&self) -> WeightsRef<'_> {
        let b = &bytemuck::cast_slice::<u64, u8>(&self.bytes)[..self.len];
        WeightsRef::from_le_bytes(self.ty, b, self.rows, self.cols).unwrap()
    }
}

fn tiers() -> Vec<&'static Kernels> {
    Isa::available()
        .into_iter()
        .filter_map(Kernels::for_isa)
        .collect()
}

fn config<'a>(
    c: &'a mut Criterion,
    name: &str,
) -> criterion::BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group(name);
    g.sample_size(10)
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    g
}

const TYPES: [TensorType; 5] = [
    TensorType::F32,
    TensorType::F16,
    TensorType::Q8,
    TensorType::Q4,
    TensorType::Q4m,
];

/// One matrix product over all rows, calling the table entry directly.
fn run(
    k: &Kernels,
    w: &WeightsRef<'_>,
    x: &[f32],
    a: Option<&Q8Activations>,
    n: usize,
    out: &mut [f32],
) {
    // What a model runs: the in-place prompt kernels where the tier has
    // them, on a pool of one thread.
    static POOL: std::sync::OnceLock<Pool> = std::sync::OnceLock::new();
    let pool = POOL.get_or_init(|| Pool::new(1));
    match a {
        Some(a) => w.matmul_q8_with(k, pool, out, a),
        None => w.matmul_act_with(k, pool, out, &F32Activations::new(x, n, w.cols())),
    }
}

/// One matrix-vector product per (shape, type, tier, activation kind),
/// reporting GB/s of the matrix's own bytes.
fn decode_group(
    c: &mut Criterion,
    name: &str,
    shapes: &[(usize, usize)],
    types: &[TensorType],
    acts: &[&str],
) {
    let mut g = config(c, name);
    for &(rows, cols) in shapes {
        for &ty in types {
            let o = Owned::new(ty, rows, cols);
            let w = o.get();
            let x = values(7, cols);
            let a = Q8Activations::quantize(&x, 1, cols);
            let mut out = vec![0f32; rows];
            g.throughput(Throughput::Bytes(o.len as u64));
            for k in tiers() {
                if k.isa == Isa::Scalar && rows == 49152 && ty != TensorType::Q4 {
                    continue; // the scalar head takes long and says little
                }
                for &act in acts {
                    if act == "q8" && !ty.is_quantized() {
                        continue;
                    }
                    let id =
                        BenchmarkId::new(format!("{}/{ty}x{act}", k.isa), format!("{rows}x{cols}"));
                    let aa = (act == "q8").then_some(&a);
                    g.bench_function(id, |b| {
                        b.iter(|| run(k, &w, black_box(&x), aa, 1, &mut out))
                    });
                }
            }
        }
    }
    g.finish();
}

fn decode(c: &mut Criterion) {
    let shapes = [(576, 576), (1536, 576), (576, 1536), (49152, 576)];
    decode_group(c, "decode", &shapes, &TYPES, &["f32", "q8"]);
}

/// Decode of 2:4 sparse `q4s24` and `q8s24` (weights pruned 2:4 by
/// magnitude) beside dense `q4` and `q8` of the same shape (whose speed
/// does not depend on the values), int8 activations.
fn sparse(c: &mut Criterion) {
    let types = [
        TensorType::Q4,
        TensorType::Q4S24,
        TensorType::Q8,
        TensorType::Q8S24,
    ];
    decode_group(c, "sparse", &[(1536, 576), (576, 1536)], &types, &["q8"]);
}

fn prefill(c: &mut Criterion) {
    let mut g = config(c, "prefill");
    let (rows, cols) = (1536, 576);
    for n in [64usize, 512] {
        for ty in TYPES {
            let o = Owned::new(ty, rows, cols);
            let w = o.get();
            let x = values(9, n * cols);
            let a = Q8Activations::quantize(&x, n, cols);
            let mut out = vec![0f32; rows * n];
            g.throughput(Throughput::Elements((2 * rows * cols * n) as u64));
            for k in tiers() {
                if k.isa == Isa::Scalar && n == 512 {
                    continue;
                }
                for act in ["f32", "q8"] {
                    if act == "q8" && !ty.is_quantized() {
                        continue;
                    }
                    let id = BenchmarkId::new(
                        format!("{}/{ty}x{act}", k.isa),
                        format!("n{n}_{rows}x{cols}"),
                    );
                    let aa = (act == "q8").then_some(&a);
                    g.bench_function(id, |b| {
                        b.iter(|| run(k, &w, black_box(&x), aa, n, &mut out))
                    });
                }
            }
        }
    }
    g.finish();
}

fn small(c: &mut Criterion) {
    let mut g = config(c, "small");
    let cols = 576;
    let x = values(3, cols * 4);
    let mut q = vec![BlockQ8 { qs: [0; QK] }; cols * 4 / QK];
    let mut d = vec![0f32; cols * 4 / QK];
    let mut s = vec![0i32; cols * 4 / QK];
    let y = values(4, 64);
    let z = values(5, 64);
    for k in tiers() {
        g.throughput(Throughput::Bytes((cols * 4 * 4) as u64));
        g.bench_function(BenchmarkId::new("quantize_q8", k.isa), |b| {
            b.iter(|| (k.quantize_q8)(black_box(&x), &mut q, &mut d, &mut s))
        });
        g.throughput(Throughput::Elements(64));
        g.bench_function(BenchmarkId::new("dot64", k.isa), |b| {
            b.iter(|| (k.dot)(black_box(&y), black_box(&z)))
        });
        let mut yy = y.clone();
        g.bench_function(BenchmarkId::new("axpy64", k.isa), |b| {
            b.iter(|| (k.axpy)(&mut yy, black_box(0.5), black_box(&z)))
        });
    }
    g.finish();
}

/// The cost of handing a matrix product to the threads: 8 empty tasks on
/// 2 threads, through the engine's spinning pool and through rayon's
/// fork-join (what the engine used before). Decoding one SmolLM2-135M token
/// makes about 240 such hand-offs (7 products and attention per layer).
fn dispatch(c: &mut Criterion) {
    use rayon::prelude::*;
    let mut g = config(c, "dispatch");
    let pool = Pool::new(2);
    let rayon2 = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    g.bench_function("pool_2_threads_8_tasks", |b| {
        b.iter(|| {
            pool.run(8, &|i| {
                black_box(i);
            })
        })
    });
    g.bench_function("rayon_2_threads_8_tasks", |b| {
        b.iter(|| {
            rayon2.install(|| {
                (0..8usize).into_par_iter().for_each(|i| {
                    black_box(i);
                })
            })
        })
    });
    g.finish();
}

criterion_group!(benches, decode, sparse, prefill, small, dispatch);
criterion_main!(benches);
