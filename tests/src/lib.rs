//! Shared helpers for Lamina's integration tests.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use lamina_engine::weight::{HostData, HostWeight, MixedData, MixedLayout};
use lamina_engine::{Gpu, WeightFormat, weight};
use rand::{Rng, SeedableRng};

/// The GPU for tests (lavapipe on CI), opened once per test binary.
pub fn gpu() -> Arc<Gpu> {
    static GPU: OnceLock<Arc<Gpu>> = OnceLock::new();
    GPU.get_or_init(|| match Gpu::new() {
        Ok(g) => {
            eprintln!("test GPU: {}", g.describe());
            g
        }
        Err(e) => {
            panic!("tests need a GPU adapter (run scripts/test.sh, which installs lavapipe): {e}")
        }
    })
    .clone()
}

/// Seeded uniform values in [-scale, scale).
pub fn rand_vec(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| r.random_range(-scale..scale)).collect()
}

pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub fn f32_from_bytes(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

pub fn u32_bytes(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Asserts |got - want| <= atol + rtol * |want| elementwise, printing the
/// first offending index with both values and the worst error.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], atol: f32, rtol: f32) {
    assert_eq!(
        got.len(),
        want.len(),
        "{what}: length {} vs {}",
        got.len(),
        want.len()
    );
    let mut worst = (0usize, 0.0f32);
    let mut first_bad = None;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs();
        if !err.is_finite() || err > atol + rtol * w.abs() {
            first_bad.get_or_insert(i);
        }
        if err > worst.1 || !err.is_finite() {
            worst = (i, err);
        }
    }
    if let Some(i) = first_bad {
        panic!(
            "{what}: index {i}: got {} want {} (worst: index {} err {}; atol {atol} rtol {rtol})",
            got[i], want[i], worst.0, worst.1
        );
    }
}

/// ../shared relative to the workspace (the checkout's sibling).
pub fn shared_dir() -> PathBuf {
    let ws = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    for c in [ws.join("shared"), ws.join("../shared")] {
        if c.join("golden").is_dir() {
            return c;
        }
    }
    ws.join("../shared")
}

/// The default model, if fetched: $LAMINA_MODEL, else the cache path.
pub fn model_path() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("LAMINA_MODEL") {
        return Some(PathBuf::from(p));
    }
    let base = std::env::var_os("LAMINA_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|p| PathBuf::from(p).join("lamina")))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/lamina")))?;
    let p = base.join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    p.exists().then_some(p)
}

/// The range each f16 field of a `kquant` file block is drawn from (in
/// `kquant::f16_offsets`' order), chosen so that weights stay within about
/// +-0.1: the largest scale codes times the largest codes.
fn kquant_scale_ranges(f: WeightFormat) -> &'static [(f32, f32)] {
    match f {
        WeightFormat::Q5_0 => &[(-0.006, 0.006)],
        WeightFormat::Q5_1 => &[(0.0, 0.006), (-0.1, 0.0)],
        WeightFormat::IQ4_NL => &[(-0.0008, 0.0008)],
        WeightFormat::Q2_K => &[(0.0, 0.003), (0.0, 0.003)],
        WeightFormat::Q3_K => &[(-0.0008, 0.0008)],
        WeightFormat::Q4_K | WeightFormat::Q5_K => &[(0.0, 0.0002), (0.0, 0.0015)],
        WeightFormat::Q6_K | WeightFormat::IQ4_XS => &[(-0.00003, 0.00003)],
        _ => &[],
    }
}

/// Random file blocks of a `weight::kquant` type (GGUF Q5_0 .. IQ4_XS) for a
/// `rows x cols` weight: random bytes are valid codes and sub-block scales,
/// so only the f16 fields are drawn, small enough that weights stay within
/// about +-0.1.
pub fn random_kquant(f: WeightFormat, rows: u32, cols: u32, seed: u64) -> Vec<u8> {
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    let per = weight::col_multiple(f);
    let block = weight::ggml_row_bytes(f, per);
    let mut out = Vec::with_capacity(rows as usize * weight::ggml_row_bytes(f, cols));
    for _ in 0..rows as usize * (cols / per) as usize {
        let mut b: Vec<u8> = (0..block).map(|_| r.random::<u8>()).collect();
        let fields = weight::kquant::f16_offsets(f);
        for (&at, &(lo, hi)) in fields.iter().zip(kquant_scale_ranges(f)) {
            let v = half::f16::from_f32(r.random_range(lo..hi));
            b[at..at + 2].copy_from_slice(&v.to_le_bytes());
        }
        out.extend(b);
    }
    out
}

/// Random weight in llama.cpp's encoding of `f` (raw f32 / f16 for those),
/// with scales small enough that outputs stay near 1 (Mixed: empty, see
/// the tests' own `RandomMixed`).
pub fn random_ggml(f: WeightFormat, rows: u32, cols: u32, seed: u64) -> Vec<u8> {
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    let n = rows as usize * cols as usize;
    let half = |r: &mut rand::rngs::StdRng, lo: f32, hi: f32| {
        half::f16::from_f32(r.random_range(lo..hi)).to_le_bytes()
    };
    let mut out = Vec::with_capacity(weight::ggml_row_bytes(f, cols) * rows as usize);
    match f {
        WeightFormat::F32 => {
            (0..n).for_each(|_| out.extend(r.random_range(-0.1f32..0.1).to_le_bytes()))
        }
        WeightFormat::F16 => (0..n).for_each(|_| out.extend(half(&mut r, -0.1, 0.1))),
        WeightFormat::Mixed => {}
        WeightFormat::Q4_0 | WeightFormat::Q4_1 | WeightFormat::Q8_0 => {
            for _ in 0..n / 32 {
                match f {
                    WeightFormat::Q4_0 => out.extend(half(&mut r, -0.02, 0.02)),
                    WeightFormat::Q4_1 => {
                        out.extend(half(&mut r, 0.0, 0.02));
                        out.extend(half(&mut r, -0.15, 0.0));
                    }
                    _ => out.extend(half(&mut r, -0.002, 0.002)),
                }
                let qbytes = if f == WeightFormat::Q8_0 { 32 } else { 16 };
                (0..qbytes).for_each(|_| out.push(r.random::<u8>()));
            }
        }
        _ => out = random_kquant(f, rows, cols, seed),
    }
    out
}

/// A random Mixed weight (SliM-LLM's asymmetric groups: every group's
/// scale d and min m ~ -d 2^(b-1), values within about +-0.1).
pub struct RandomMixed {
    pub layout: Arc<MixedLayout>,
    pub codes: Vec<u32>,
    pub scales: Vec<u16>,
    pub mins: Vec<u16>,
}

impl RandomMixed {
    /// Groups of `group` columns whose widths are `bits` in turn.
    pub fn new(rows: u32, cols: u32, group: u32, bits: &[u8], seed: u64) -> RandomMixed {
        let mut r = rand::rngs::StdRng::seed_from_u64(seed);
        let n = cols.div_ceil(group) as usize;
        let widths = (0..n).map(|g| bits[g % bits.len()]).collect();
        let layout = Arc::new(MixedLayout::new(group, cols, widths).unwrap());
        let (mut codes, mut scales, mut mins) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rows {
            for g in 0..layout.n_groups() {
                let b = u32::from(layout.bits[g as usize]);
                let levels = ((1u32 << b) - 1) as f32;
                let d = half::f16::from_f32(r.random_range(0.05f32..0.2) / levels);
                scales.push(d.to_bits());
                mins.push(half::f16::from_f32(r.random_range(-0.12f32..-0.02)).to_bits());
                for _ in 0..layout.group_len(g) / 32 {
                    let q: [u32; 32] = std::array::from_fn(|_| r.random_range(0..1u32 << b));
                    codes.extend(weight::mixed_chunk(&q, b));
                }
            }
        }
        RandomMixed {
            layout,
            codes,
            scales,
            mins,
        }
    }

    /// Group size 32, 64 or 128 and every group's width drawn from {n - 1,
    /// n, n + 1}, n from 2..=7, all by `seed`, as SliM-LLM allocates (so,
    /// over the seeds, short last groups and every width occur; few widths
    /// per weight keep the kernels' per-class code, and the pipeline
    /// compile, small).
    pub fn by_seed(rows: u32, cols: u32, seed: u64) -> RandomMixed {
        let mut r = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5eed);
        let group = [32u32, 64, 128][(seed % 3) as usize];
        let mid = 2 + (seed / 3 % 6) as u8;
        let bits: Vec<u8> = (0..cols.div_ceil(group))
            .map(|_| r.random_range(mid - 1..=mid + 1))
            .collect();
        RandomMixed::new(rows, cols, group, &bits, seed)
    }

    /// The first `rows` rows as a host weight.
    pub fn host(&self, rows: u32) -> HostWeight<'_> {
        HostWeight {
            format: WeightFormat::Mixed,
            rows,
            cols: self.layout.cols,
            data: HostData::Mixed(MixedData {
                layout: &self.layout,
                codes: &self.codes,
                scales: &self.scales,
                mins: &self.mins,
            }),
        }
    }
}
