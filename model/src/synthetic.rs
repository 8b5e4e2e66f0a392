//! Llama models of any shape with seeded random weights, for speed
//! measurements at real sizes without a checkpoint, and as small test models
//! for the GPU-vs-reference checks.
//!
//! Weights are drawn so that activations stay in a sane range through any
//! number of layers:
//! - norm weights `1 + N(0, 0.05^2)` (stored f32, as GGUF stores norms);
//! - linear weights `N(0, 1/in)`, so each projection keeps the scale of its input;
//!   `wo` and `w_down` are further scaled by `1/sqrt(2 n_layers)` (GPT-2's residual
//!   scaling), so the residual stream grows to O(1) rather than O(sqrt(layers));
//! - embeddings `N(0, 4/dim)`: with tied embeddings the logits are
//!   `rmsnorm(x) · e`, whose standard deviation is then about 2.
//!
//! `N` here is the cheap approximation of [`standard_normal`] (right mean
//! and variance, bounded tails), which keeps a 7B model's generation short.
//!
//! Generation is deterministic in `(cfg, dtype, seed)` whatever the thread
//! count: each chunk of rows has its own RNG stream, seeded from the tensor
//! and chunk index.

use std::thread;

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

use lamina_engine::WeightFormat;
use lamina_engine::weight::kquant;

use crate::checkpoint::encode::quantize_into;
use crate::checkpoint::ggml::dequantize;
use crate::checkpoint::{
    Bytes, HostDType, HostTensor, LayerTensor, LlamaWeights, LoadedModel, ModelTensor, Role,
};
use crate::{LlamaConfig, ModelError, Result, RopeStyle};

/// Preset names accepted by [`synthetic_config`], besides the custom syntax.
pub const PRESETS: [&str; 4] = ["tiny", "135m", "1b", "7b"];

/// Values generated per RNG stream (one work item); rows are never split.
const CHUNK_VALUES: usize = 1 << 16;

/// The shape of a named preset, or of a custom
/// `L{layers}-d{dim}-h{heads}-kv{kv_heads}-f{ffn}-v{vocab}` spec
/// (head_dim = dim / heads), e.g. `L4-d256-h8-kv2-f640-v1000`.
///
/// | preset | layers | dim | heads | kv | ffn | vocab | like |
/// |---|---|---|---|---|---|---|---|
/// | tiny | 2 | 64 | 4 | 2 | 160 | 512 | tests |
/// | 135m | 30 | 576 | 9 | 3 | 1536 | 49152 | SmolLM2-135M |
/// | 1b | 16 | 2048 | 32 | 8 | 8192 | 128256 | Llama-3.2-1B (no rope scaling) |
/// | 7b | 32 | 4096 | 32 | 32 | 11008 | 32000 | Llama-2-7B (untied lm_head) |
pub fn synthetic_config(preset: &str) -> Result<LlamaConfig> {
    let base = |n_layers, dim, n_heads, n_kv_heads, ffn_dim, vocab_size| LlamaConfig {
        arch: "llama".into(),
        n_layers,
        dim,
        n_heads,
        n_kv_heads,
        head_dim: dim / n_heads,
        ffn_dim,
        vocab_size,
        norm_eps: 1e-5,
        rope_theta: 10_000.0,
        // The layout llama.cpp's GGUF files use, so a synthetic model
        // exercises the same path as a loaded one.
        rope_style: RopeStyle::Interleaved,
        max_seq_len: 4096,
        tied_embeddings: true,
        hadamard: Default::default(),
        rope_factors: Vec::new(),
        qkv_bias: false,
    };
    let cfg = match preset.to_ascii_lowercase().as_str() {
        "tiny" => LlamaConfig {
            max_seq_len: 512,
            ..base(2, 64, 4, 2, 160, 512)
        },
        "135m" => LlamaConfig {
            rope_theta: 100_000.0,
            max_seq_len: 8192,
            ..base(30, 576, 9, 3, 1536, 49152)
        },
        "1b" => LlamaConfig {
            rope_theta: 500_000.0,
            max_seq_len: 131_072,
            ..base(16, 2048, 32, 8, 8192, 128_256)
        },
        "7b" => LlamaConfig {
            tied_embeddings: false,
            ..base(32, 4096, 32, 32, 11008, 32000)
        },
        _ => {
            let [l, d, h, kv, f, v] = parse_custom(preset)?;
            if h == 0 || !d.is_multiple_of(h) {
                return Err(ModelError::Input(format!(
                    "synthetic model `{preset}`: dim {d} is not a multiple of heads {h}"
                )));
            }
            base(l, d, h, kv, f, v)
        }
    };
    cfg.validate()
        .map_err(|e| ModelError::Input(format!("synthetic model `{preset}`: {e}")))?;
    Ok(cfg)
}

/// Parses `L{layers}-d{dim}-h{heads}-kv{kv}-f{ffn}-v{vocab}` (prefixes case-insensitive).
fn parse_custom(spec: &str) -> Result<[usize; 6]> {
    let bad = || {
        ModelError::Input(format!(
            "unknown synthetic model `{spec}`: use one of {PRESETS:?} or \
             L{{layers}}-d{{dim}}-h{{heads}}-kv{{kv_heads}}-f{{ffn}}-v{{vocab}}, e.g. L4-d256-h8-kv2-f640-v1000"
        ))
    };
    let lower = spec.to_ascii_lowercase();
    let parts: Vec<&str> = lower.split('-').collect();
    let prefixes = ["l", "d", "h", "kv", "f", "v"];
    if parts.len() != prefixes.len() {
        return Err(bad());
    }
    let mut out = [0usize; 6];
    for ((o, part), prefix) in out.iter_mut().zip(&parts).zip(prefixes) {
        let digits = part.strip_prefix(prefix).ok_or_else(bad)?;
        *o = digits.parse().map_err(|_| bad())?;
    }
    Ok(out)
}

/// Random weights for `cfg`, linear layers and embeddings encoded as `dtype`
/// (norms stay f32). With `cfg.tied_embeddings` the lm_head is the embedding
/// (`output: None`); otherwise a separate `output` matrix is drawn.
pub fn synthetic_weights(cfg: &LlamaConfig, dtype: HostDType, seed: u64) -> Result<LlamaWeights> {
    cfg.validate()?;
    let (dim, qd, ffn) = (cfg.dim, cfg.q_dim(), cfg.ffn_dim);
    let block = dtype.block_size();
    for (what, cols) in [("dim", dim), ("n_heads * head_dim", qd), ("ffn_dim", ffn)] {
        if !cols.is_multiple_of(block) {
            return Err(ModelError::Input(format!(
                "{dtype:?} quantizes rows in blocks of {block}, but {what} = {cols} is not a multiple"
            )));
        }
    }
    let threads = thread::available_parallelism().map_or(1, |n| n.get());
    // Each tensor gets its own index: it selects the RNG streams, so adding a
    // tensor type never changes the others.
    let mut next_id = 0u64;
    // `shape` is [cols] for a vector, [rows, cols] for a matrix.
    let mut tensor = |name: String, shape: &[usize], std: f32, dt: HostDType, offset: f32| {
        next_id += 1;
        let (rows, cols) = (
            shape[..shape.len() - 1].iter().product(),
            shape[shape.len() - 1],
        );
        let spec = TensorSpec {
            rows,
            cols,
            std,
            offset,
            dtype: dt,
            stream: mix(seed, next_id),
        };
        let data = spec.generate(threads)?;
        Ok::<_, ModelError>(HostTensor {
            mixed: None,
            name,
            shape: shape.to_vec(),
            dtype: dt,
            data: Bytes::Owned(data.into()),
        })
    };

    let linear = |inp: usize| (1.0 / inp as f64).sqrt() as f32;
    let residual = (1.0 / (2.0 * cfg.n_layers as f64).sqrt()) as f32;
    let embd_std = (4.0 / dim as f64).sqrt() as f32;
    const NORM_STD: f32 = 0.05;

    LlamaWeights::try_from_table(cfg, |role| {
        let shape = role.shape(cfg);
        let (std, dt, offset) = match role {
            Role::Model(ModelTensor::TokenEmbd) => (embd_std, dtype, 0.0),
            Role::Model(ModelTensor::Output) => (linear(dim) * 2.0, dtype, 0.0),
            Role::Model(ModelTensor::OutputNorm)
            | Role::Layer(_, LayerTensor::AttnNorm | LayerTensor::FfnNorm) => {
                (NORM_STD, HostDType::F32, 1.0)
            }
            // Qwen2-style q/k/v biases: as large as the projections' outputs.
            Role::Layer(_, LayerTensor::Bq | LayerTensor::Bk | LayerTensor::Bv) => {
                (0.5, HostDType::F32, 0.0)
            }
            // Layers that write the residual stream are scaled down by depth.
            Role::Layer(_, t @ (LayerTensor::Wo | LayerTensor::WDown)) => {
                (linear(t.shape(cfg)[1]) * residual, dtype, 0.0)
            }
            Role::Layer(_, t) => (linear(t.shape(cfg)[1]), dtype, 0.0),
        };
        tensor(role.gguf_name(), &shape, std, dt, offset)
    })
}

/// One tensor to draw: `offset + std * z` per element with `z` approximately
/// N(0, 1) (see [`standard_normal`]), encoded as `dtype`.
struct TensorSpec {
    rows: usize,
    cols: usize,
    std: f32,
    offset: f32,
    dtype: HostDType,
    stream: u64,
}

impl TensorSpec {
    fn generate(&self, threads: usize) -> Result<Vec<u8>> {
        if let Some(fields) = read_only_format(self.dtype) {
            return self.random_blocks(fields);
        }
        let row_bytes = self.dtype.bytes_for(self.cols);
        let rows_per_chunk = (CHUNK_VALUES / self.cols).max(1);
        let mut data = vec![0u8; self.rows * row_bytes];
        let mut jobs: Vec<(u64, &mut [u8])> = data
            .chunks_mut(rows_per_chunk * row_bytes)
            .enumerate()
            .map(|(i, c)| (i as u64, c))
            .collect();
        let per_thread = jobs.len().div_ceil(threads.max(1)).max(1);
        thread::scope(|s| {
            let handles: Vec<_> = jobs
                .chunks_mut(per_thread)
                .map(|group| {
                    s.spawn(move || {
                        let mut bytes = vec![0u8; 4 * rows_per_chunk * self.cols];
                        let mut values = vec![0.0f32; rows_per_chunk * self.cols];
                        for (chunk, out) in group.iter_mut() {
                            let n = out.len() / row_bytes * self.cols;
                            let mut rng = StdRng::seed_from_u64(mix(self.stream, *chunk));
                            rng.fill_bytes(&mut bytes[..4 * n]);
                            for (v, b) in values.iter_mut().zip(bytes.as_chunks::<4>().0) {
                                *v = self.offset + self.std * standard_normal(*b);
                            }
                            quantize_into(self.dtype, &values[..n], out)?;
                        }
                        Ok::<_, ModelError>(())
                    })
                })
                .collect();
            for h in handles {
                h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))?;
            }
            Ok::<_, ModelError>(())
        })?;
        Ok(data)
    }
}

/// The f16 field offsets of a GGUF type Lamina reads but does not encode
/// (the K-quants, IQ4, Q5): `None` for the types it encodes.
fn read_only_format(dtype: HostDType) -> Option<&'static [usize]> {
    let f = WeightFormat::ALL
        .into_iter()
        .find(|f| f.name() == dtype.name())?;
    kquant::is_kquant(f).then(|| kquant::f16_offsets(f))
}

impl TensorSpec {
    /// A type Lamina does not encode, for speed measurements: random bytes
    /// (every one a valid code or sub-block scale) with every f16 field set
    /// to one value, chosen so the weights' standard deviation is about
    /// `std` (measured on the first blocks with the fields at 1). `offset`
    /// is not applied (these types carry only matrices).
    fn random_blocks(&self, fields: &[usize]) -> Result<Vec<u8>> {
        let block = self.dtype.block_size();
        let bytes = self.dtype.block_bytes().unwrap_or(0);
        let mut data = vec![0u8; self.rows * self.cols / block * bytes];
        StdRng::seed_from_u64(self.stream).fill_bytes(&mut data);
        let set = |data: &mut [u8], v: f32| {
            let h = half::f16::from_f32(v).to_le_bytes();
            for b in data.chunks_exact_mut(bytes) {
                for &at in fields {
                    b[at..at + 2].copy_from_slice(&h);
                }
            }
        };
        let sample = data.len().min(64 * bytes);
        set(&mut data[..sample], 1.0);
        let v = dequantize(self.dtype, &data[..sample], sample / bytes * block)?;
        let mean = v.iter().sum::<f32>() / v.len() as f32;
        let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>() / v.len() as f32;
        set(&mut data, self.std / var.sqrt().max(f32::MIN_POSITIVE));
        Ok(data)
    }
}

/// An approximately standard normal value from 4 random bytes: their sum
/// (Irwin-Hall, n = 4), standardized to mean 0 and variance 1.
///
/// Why not `rand_distr::StandardNormal`: its ziggurat consumes 64 bits and a
/// table lookup per value; with StdRng (ChaCha12) that made a 7B model take
/// over a minute of CPU, five times longer than this. Weights for speed
/// measurements and GPU-vs-CPU checks need the right scale, not exact
/// Gaussian tails (these are bounded at +-3.46 sigma, kurtosis 2.7 vs 3).
fn standard_normal(bytes: [u8; 4]) -> f32 {
    // Each byte is uniform on 0..=255: mean 127.5, variance (256^2 - 1) / 12.
    const MEAN: f32 = 4.0 * 127.5;
    const INV_STD: f32 = 1.0 / 147.799_86; // 1 / sqrt(4 * 5461.25)
    // Sum the four bytes in integer lanes (two 16-bit sums, then one), so
    // there is a single int -> float conversion per value.
    let x = u32::from_le_bytes(bytes);
    let pairs = (x & 0x00ff_00ff) + ((x >> 8) & 0x00ff_00ff);
    let sum = (pairs & 0xffff) + (pairs >> 16);
    (sum as f32 - MEAN) * INV_STD
}

/// SplitMix64 finalizer of `a` combined with `b`: independent-looking seeds
/// for nearby inputs (seed 1 and seed 2 must not give overlapping streams).
fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b
        .wrapping_add(0x9e37_79b9_7f4a_7c15)
        .wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A whole synthetic model: preset `preset`'s config, seeded weights in
/// `dtype`, no tokenizer (source `synthetic:PRESET`).
pub fn synthetic_model(preset: &str, dtype: HostDType, seed: u64) -> Result<LoadedModel> {
    let config = synthetic_config(preset)?;
    let weights = synthetic_weights(&config, dtype, seed)?;
    Ok(LoadedModel {
        config,
        weights,
        tokenizer_spec: Default::default(),
        source: format!("synthetic:{preset}"),
        file_type: format!("{dtype:?}").to_uppercase(),
        recipe: None,
        pivot: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_have_the_documented_shapes() -> Result<()> {
        let c = synthetic_config("135m")?;
        assert_eq!(
            (c.n_layers, c.dim, c.n_heads, c.n_kv_heads, c.head_dim),
            (30, 576, 9, 3, 64)
        );
        assert_eq!(
            (c.ffn_dim, c.vocab_size, c.rope_theta),
            (1536, 49152, 100_000.0)
        );
        let c = synthetic_config("1B")?;
        assert_eq!(
            (c.n_layers, c.dim, c.n_kv_heads, c.head_dim, c.vocab_size),
            (16, 2048, 8, 64, 128_256)
        );
        let c = synthetic_config("7b")?;
        assert_eq!(
            (c.n_layers, c.dim, c.n_kv_heads, c.head_dim, c.ffn_dim),
            (32, 4096, 32, 128, 11008)
        );
        assert!(!c.tied_embeddings);
        let c = synthetic_config("tiny")?;
        assert_eq!(
            (
                c.n_layers,
                c.dim,
                c.n_heads,
                c.n_kv_heads,
                c.ffn_dim,
                c.vocab_size
            ),
            (2, 64, 4, 2, 160, 512)
        );
        Ok(())
    }

    #[test]
    fn custom_spec_parses() -> Result<()> {
        let c = synthetic_config("L4-d256-h8-kv2-f640-v1000")?;
        assert_eq!(
            (c.n_layers, c.dim, c.n_heads, c.n_kv_heads, c.head_dim),
            (4, 256, 8, 2, 32)
        );
        assert_eq!((c.ffn_dim, c.vocab_size), (640, 1000));
        Ok(())
    }

    #[test]
    fn bad_specs_are_input_errors() {
        for spec in [
            "",
            "huge",
            "L4-d256-h8-kv2-f640",
            "L4-d256-h7-kv1-f640-v10",
            "L4-d256-h8-kv3-f640-v10",
            "L0-d256-h8-kv2-f640-v10",
            "L4-d256-h8-kv2-f640-vx",
            "d256-L4-h8-kv2-f640-v10",
        ] {
            let err = synthetic_config(spec).unwrap_err();
            assert!(matches!(err, ModelError::Input(_)), "{spec}: {err}");
        }
    }

    #[test]
    fn weights_have_the_right_shapes_and_types() -> Result<()> {
        let cfg = synthetic_config("tiny")?;
        let w = synthetic_weights(&cfg, HostDType::Q4_0, 1)?;
        assert_eq!(w.token_embd.shape, [512, 64]);
        assert_eq!(w.layers.len(), 2);
        let l = &w.layers[1];
        assert_eq!(
            (l.wq.shape.as_slice(), l.wk.shape.as_slice()),
            ([64, 64].as_slice(), [32, 64].as_slice())
        );
        assert_eq!(
            (l.wo.shape.as_slice(), l.w_down.shape.as_slice()),
            ([64, 64].as_slice(), [64, 160].as_slice())
        );
        assert_eq!(l.w_gate.dtype, HostDType::Q4_0);
        assert_eq!(l.attn_norm.dtype, HostDType::F32);
        assert_eq!(l.attn_norm.shape, [64]);
        assert_eq!(
            l.w_up.data.as_slice().len(),
            HostDType::Q4_0.bytes_for(160 * 64)
        );
        assert!(w.output.is_none());
        Ok(())
    }

    #[test]
    fn seeded_and_independent_of_threads() -> Result<()> {
        let cfg = synthetic_config("L1-d64-h2-kv1-f4096-v64")?;
        let spec = TensorSpec {
            rows: 4096,
            cols: 64,
            std: 1.0,
            offset: 0.0,
            dtype: HostDType::Q8_0,
            stream: 5,
        };
        // 4096 * 64 values span 4 RNG chunks.
        assert_eq!(spec.generate(1)?, spec.generate(3)?);
        let a = synthetic_weights(&cfg, HostDType::F16, 9)?;
        let b = synthetic_weights(&cfg, HostDType::F16, 9)?;
        let c = synthetic_weights(&cfg, HostDType::F16, 10)?;
        assert_eq!(
            a.layers[0].w_up.data.as_slice(),
            b.layers[0].w_up.data.as_slice()
        );
        assert_ne!(
            a.layers[0].w_up.data.as_slice(),
            c.layers[0].w_up.data.as_slice()
        );
        assert_ne!(
            a.layers[0].w_up.data.as_slice(),
            a.layers[0].w_gate.data.as_slice()
        );
        Ok(())
    }

    #[test]
    fn weight_statistics_match_the_recipe() -> Result<()> {
        let cfg = synthetic_config("L1-d256-h4-kv4-f512-v300")?;
        let w = synthetic_weights(&cfg, HostDType::F32, 3)?;
        let stats = |t: &HostTensor| -> Result<(f64, f64)> {
            let v = t.to_f32()?;
            let mean = v.iter().map(|x| f64::from(*x)).sum::<f64>() / v.len() as f64;
            let var = v
                .iter()
                .map(|x| (f64::from(*x) - mean).powi(2))
                .sum::<f64>()
                / v.len() as f64;
            Ok((mean, var.sqrt()))
        };
        let (m, s) = stats(&w.layers[0].w_gate)?;
        assert!(
            m.abs() < 0.002 && (s - 1.0 / 16.0).abs() < 0.002,
            "w_gate mean {m} std {s}"
        );
        let (m, s) = stats(&w.layers[0].ffn_norm)?;
        assert!(
            (m - 1.0).abs() < 0.02 && (s - 0.05).abs() < 0.01,
            "ffn_norm mean {m} std {s}"
        );
        let (_, s) = stats(&w.layers[0].w_down)?;
        let want = (1.0 / 512f64).sqrt() / 2f64.sqrt();
        assert!(
            (s - want).abs() < 0.05 * want,
            "w_down std {s}, want {want}"
        );
        Ok(())
    }

    #[test]
    fn standard_normal_has_unit_moments() {
        let mut rng = StdRng::seed_from_u64(1);
        let z: Vec<f64> = (0..1 << 20)
            .map(|_| f64::from(standard_normal(rand::Rng::random(&mut rng))))
            .collect();
        let n = z.len() as f64;
        let mean = z.iter().sum::<f64>() / n;
        let var = z.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
        assert!(
            mean.abs() < 0.005 && (var - 1.0).abs() < 0.005,
            "mean {mean} var {var}"
        );
        assert!(
            (standard_normal([0; 4]) + 3.4506).abs() < 1e-3
                && (standard_normal([255; 4]) - 3.4506).abs() < 1e-3
        );
    }

    #[test]
    fn rejects_shapes_that_do_not_fit_blocks() -> Result<()> {
        let cfg = synthetic_config("L1-d48-h2-kv1-f96-v10")?;
        assert!(matches!(
            synthetic_weights(&cfg, HostDType::Q4_1, 0),
            Err(ModelError::Input(_))
        ));
        assert!(synthetic_weights(&cfg, HostDType::F16, 0).is_ok());
        Ok(())
    }
}
