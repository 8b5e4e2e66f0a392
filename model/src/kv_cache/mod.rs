//! The KV cache: per layer, keys and values of every past position.
//!
//! Two layouts:
//! - **f16** (the default): head-major `[n_kv_heads, max_ctx, head_dim]`, two
//!   values per u32 word, one buffer per layer for K and one for V (a
//!   layer's cache then stays under the storage binding limit up to long
//!   contexts); ops `kv_f16_write` + `kv_f16_attention`.
//! - **quantized** (`q8`, `q4`, `q2` for either side, `qjl` for keys): an f16
//!   window of the recent tokens and a quantized store, ops
//!   `kv_quant_store` and `kv_quant_attention`; `lamina_engine::kv`
//!   documents segments, formats and layouts. `static` is that cache with
//!   a model's static per-head scales (PrefixQuant's KV4, [`KvStatic`]).
//!
//! Either way the cache may begin with a **pivot** segment (IntactKV /
//! PrefixQuant): the KV of a few fixed tokens, computed once by the
//! full-precision model and kept in f16, never quantized; sequences start
//! after it ([`Pivot`], computed by `crate::pivot`).

pub mod qjl;

use std::sync::Arc;

use lamina_engine::kv::{KvLayout, KvQuant, QjlShape};
use lamina_engine::{DType, Gpu, Tensor};

use self::qjl::QjlSketch;
use crate::checkpoint::{KvStatic, Pivot};
use crate::{LlamaConfig, ModelError, Result};

/// Most tokens one prompt step processes by default (llama.cpp's `-b`):
/// the CLI's default batch, and the step a quantized cache's window ring is
/// sized for unless [`KvFormat::batch`] says otherwise.
pub const DEFAULT_BATCH: u32 = 512;
/// Default recent window kept in f16 (QJL's and KIVI's 128-token buffer).
pub const DEFAULT_RECENT: u32 = 128;
/// Default front positions of a quantized cache kept in f16 (the pivot's
/// included): StreamingLLM's four attention sinks.
pub const DEFAULT_SINK: u32 = 4;
/// Seed of the QJL sketch (the same S for every run of a model).
pub const QJL_SEED: u64 = 0x0051_4a4c;

/// What the cache stores, as `--kv` and its companion flags say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvFormat {
    pub k: KvQuant,
    pub v: KvQuant,
    /// Fewest recent tokens kept in f16 (quantized formats).
    pub recent: u32,
    /// Channels per scale group of q8 / q4 / q2.
    pub qgroup: u32,
    /// Integer keys (q8 / q4 / q2) quantized per channel over each token
    /// group, as KIVI does (`--kv-keys channel`, the default), rather than
    /// per token like values.
    pub k_channel: bool,
    /// QJL sketch rows; 0 = twice head_dim (the paper's m = 256 at head_dim 128).
    pub qjl_m: u32,
    /// QJL outlier channels per token group (their sketch has m / 2 rows).
    pub qjl_outliers: u32,
    /// QJL outlier channels as 8-bit codes over the token group instead of
    /// a second sketch.
    pub qjl_outlier_q8: bool,
    /// Quantized formats: the first this many positions of the cache (the
    /// pivot's included) are never quantized (attention sinks; `--kv-sink`).
    pub sink: u32,
    /// QJL keys of the first this many layers get twice the sketch rows
    /// (the paper's code gives its initial layers more bits).
    pub qjl_initial_layers: u32,
    /// Prompt steps attend to their own tokens in f16 (`--kv-exact-prompt`,
    /// as QJL's code does); only decode steps see them quantized.
    pub exact_prompt: bool,
    /// Most tokens one step writes (the session's batch): a quantized
    /// cache's f16 window ring is sized for steps of this many tokens.
    pub batch: u32,
    /// Integer keys and values with the model's static per-head scales
    /// (`--kv static`; [`KvFormat::with_static`] sets the width).
    pub static_scales: bool,
}

impl Default for KvFormat {
    fn default() -> Self {
        Self::F16
    }
}

impl KvFormat {
    /// Today's f16 cache.
    pub const F16: KvFormat = KvFormat {
        k: KvQuant::F16,
        v: KvQuant::F16,
        recent: DEFAULT_RECENT,
        qgroup: 32,
        k_channel: true,
        qjl_m: 0,
        qjl_outliers: 4,
        qjl_outlier_q8: false,
        sink: DEFAULT_SINK,
        qjl_initial_layers: 0,
        exact_prompt: false,
        batch: DEFAULT_BATCH,
        static_scales: false,
    };

    /// The cache a model with static KV scales `kv` runs by default:
    /// keys and values at its width, every position past the pivot
    /// quantized (no recent window, no sinks: the prefix is the sink).
    pub fn static_for(kv: &KvStatic) -> Result<KvFormat> {
        KvFormat {
            recent: 0,
            sink: 0,
            ..KvFormat::F16
        }
        .with_static(kv)
    }

    /// This format with `kv`'s static scales: keys and values at its width,
    /// keys per head or per channel as `kv` has them; recent window and
    /// sinks as they are.
    pub fn with_static(self, kv: &KvStatic) -> Result<KvFormat> {
        let q = match kv.bits {
            8 => KvQuant::Q8,
            4 => KvQuant::Q4,
            b => {
                return Err(ModelError::Invalid(format!(
                    "static KV scales for {b} bits (4 or 8)"
                )));
            }
        };
        Ok(KvFormat {
            k: q,
            v: q,
            k_channel: kv.k_channel,
            exact_prompt: false,
            static_scales: true,
            ..self
        })
    }

    /// Whether the plain f16 layout serves it.
    pub fn is_f16(&self) -> bool {
        self.k == KvQuant::F16 && self.v == KvQuant::F16
    }

    /// "f16", "q4" (both sides alike) or "k=qjl,v=q2", then what the key
    /// flags change: ", keys per token" (integer keys), ", q8 outliers" (QJL).
    pub fn name(&self) -> String {
        let mut name = if self.k == self.v {
            self.k.name().to_string()
        } else {
            format!("k={},v={}", self.k.name(), self.v.name())
        };
        if self.k.bits().is_some() && !self.k_channel {
            name.push_str(", keys per token");
        }
        if self.k == KvQuant::Qjl && self.qjl_outlier_q8 && self.qjl_outliers > 0 {
            name.push_str(", q8 outliers");
        }
        if self.static_scales {
            let keys = if self.k_channel {
                ", keys per channel"
            } else {
                ""
            };
            name = format!("{}, static scales{keys}", self.k.name());
        }
        if self.exact_prompt && !self.is_f16() {
            name.push_str(", exact prompt");
        }
        name
    }

    /// The sketch shape of layer `layer` for this model's head_dim.
    pub fn qjl_shape(&self, head_dim: usize, layer: usize) -> QjlShape {
        if self.k != KvQuant::Qjl {
            return QjlShape {
                m: 0,
                m_out: 0,
                outliers: 0,
                outlier_q8: false,
            };
        }
        let mut m = if self.qjl_m == 0 {
            2 * head_dim as u32
        } else {
            self.qjl_m
        };
        if layer < self.qjl_initial_layers as usize {
            m *= 2;
        }
        QjlShape {
            m,
            m_out: if self.qjl_outliers > 0 && !self.qjl_outlier_q8 {
                (m / 2).next_multiple_of(32).min(m)
            } else {
                0
            },
            outliers: self.qjl_outliers,
            outlier_q8: self.qjl_outlier_q8 && self.qjl_outliers > 0,
        }
    }

    /// Layer 0's layout, see [`KvFormat::layer_layout`].
    pub fn layout(&self, cfg: &LlamaConfig, max_ctx: usize, pivot: usize) -> KvLayout {
        self.layer_layout(cfg, 0, max_ctx, pivot)
    }

    /// Layer `layer`'s layout for a cache of `max_ctx` positions with
    /// `pivot` of them pivots, for steps of up to [`batch`](Self::batch) tokens. The
    /// layout's front rows (never quantized) are the pivot's and, up to
    /// `sink` positions, the sequence's first tokens.
    pub fn layer_layout(
        &self,
        cfg: &LlamaConfig,
        layer: usize,
        max_ctx: usize,
        pivot: usize,
    ) -> KvLayout {
        let pivot = pivot.max(self.sink as usize);
        let room = (max_ctx - pivot.min(max_ctx)) as u32;
        KvLayout {
            n_kv_heads: cfg.n_kv_heads as u32,
            head_dim: cfg.head_dim as u32,
            max_ctx: max_ctx as u32,
            pivot: pivot as u32,
            recent: self.recent,
            ring: KvLayout::ring_for(self.recent, self.batch.max(1))
                .min(room)
                .max(1),
            k: self.k,
            v: self.v,
            qgroup: self.qgroup,
            k_channel: self.k_channel && self.k.bits().is_some(),
            qjl: self.qjl_shape(cfg.head_dim, layer),
            exact_prompt: self.exact_prompt && !self.is_f16(),
            static_scales: self.static_scales,
        }
    }

    /// Bytes one token occupies in the cache over all layers, keys and
    /// values, every scale, norm and outlier index included (the fixed f16
    /// window and pivot rows are not per token: see [`KvCache::fixed_bytes`]).
    pub fn bytes_per_token(&self, cfg: &LlamaConfig) -> f64 {
        if self.is_f16() {
            return cfg.n_layers as f64 * 4.0 * cfg.kv_dim() as f64;
        }
        (0..cfg.n_layers)
            .map(|l| self.layer_layout(cfg, l, 1024, 0).store_bytes_per_token())
            .sum()
    }

    /// Checks the format against a model's shape.
    pub fn check(&self, cfg: &LlamaConfig) -> Result<()> {
        if self.is_f16() {
            return Ok(());
        }
        (0..cfg.n_layers.min(self.qjl_initial_layers as usize + 1))
            .try_for_each(|l| self.layer_layout(cfg, l, 1024, 0).check("kv cache", 1))
            .map_err(|e| ModelError::Input(format!("KV cache format {}: {e}", self.name())))
    }
}

fn quant(s: &str) -> Result<KvQuant> {
    KvQuant::ALL
        .into_iter()
        .find(|q| q.name() == s)
        .ok_or_else(|| {
            ModelError::Input(format!(
                "unknown KV cache format `{s}` (available: f16, q8, q4, q2, qjl, static)"
            ))
        })
}

impl std::str::FromStr for KvFormat {
    type Err = ModelError;
    /// `f16`, `q8`, `q4`, `q2` (keys and values alike), `qjl` (QJL keys with
    /// q2 values), `k=FORMAT,v=FORMAT`, or `static` (the model's static
    /// scales; q4 here until [`KvFormat::with_static`] gives the width).
    fn from_str(s: &str) -> Result<Self> {
        let mut f = KvFormat::F16;
        if s == "static" {
            f.k = KvQuant::Q4;
            f.v = KvQuant::Q4;
            f.k_channel = false;
            f.static_scales = true;
            return Ok(f);
        }
        if s.contains('=') {
            let (mut k, mut v) = (None, None);
            for part in s.split(',') {
                match part.split_once('=') {
                    Some(("k", x)) => k = Some(quant(x)?),
                    Some(("v", x)) => v = Some(quant(x)?),
                    _ => {
                        return Err(ModelError::Input(format!(
                            "bad KV cache format `{s}`: expected k=FORMAT,v=FORMAT"
                        )));
                    }
                }
            }
            let (Some(k), Some(v)) = (k, v) else {
                return Err(ModelError::Input(format!(
                    "bad KV cache format `{s}`: name both k= and v="
                )));
            };
            (f.k, f.v) = (k, v);
        } else {
            f.k = quant(s)?;
            f.v = if f.k == KvQuant::Qjl {
                KvQuant::Q2
            } else {
                f.k
            };
        }
        if f.v == KvQuant::Qjl {
            return Err(ModelError::Input(
                "QJL is a key format; values take f16, q8, q4 or q2".into(),
            ));
        }
        Ok(f)
    }
}

/// One layer's pivot K or V (`[len, n_kv_heads * head_dim]`, position-major)
/// as head-major f16 words `[n_kv_heads, rows, head_dim]` with the pivot in
/// rows `0..len` (the rest zero): the front of that layer's cache buffer.
pub fn pivot_rows(x: &[f32], cfg: &LlamaConfig, rows: usize) -> Vec<u32> {
    let (hd, nkv) = (cfg.head_dim, cfg.n_kv_heads);
    let mut img = vec![0.0f32; nkv * rows * hd];
    for (j, row) in x.chunks_exact(nkv * hd).enumerate() {
        for h in 0..nkv {
            img[(h * rows + j) * hd..][..hd].copy_from_slice(&row[h * hd..][..hd]);
        }
    }
    lamina_engine::kv::f16_words(&img)
}

/// One layer's GPU buffers.
pub enum LayerCache {
    F16 {
        k: Tensor,
        v: Tensor,
    },
    Quant {
        k_win: Tensor,
        v_win: Tensor,
        k_store: Tensor,
        v_store: Tensor,
        layout: KvLayout,
    },
}

/// GPU buffers of the cache.
pub struct KvCache {
    pub format: KvFormat,
    pub max_ctx: usize,
    /// The pivot tokens at positions `0..pivot.len()` (empty: none).
    pub pivot: Vec<u32>,
    /// Layer 0's quantized layout (`None` for f16); window, pivot and
    /// recent sizes are the same in every layer, QJL's m may not be.
    pub layout: Option<KvLayout>,
    pub layers: Vec<LayerCache>,
}

fn tensor(gpu: &Gpu, name: String, bytes: u64, dtype: DType, shape: Vec<usize>) -> Result<Tensor> {
    Ok(Tensor {
        buffer: gpu.storage_buffer(&name, bytes)?,
        offset: 0,
        size: bytes,
        shape,
        dtype,
    })
}

impl KvCache {
    /// Allocates a cache of `max_ctx` positions (the pivot's included) and
    /// uploads the pivot's KV and, for a `static_scales` format, the scales
    /// `kv_static` (which must then be given, at the format's width).
    pub fn new(
        gpu: &Arc<Gpu>,
        cfg: &LlamaConfig,
        max_ctx: usize,
        format: KvFormat,
        pivot: Option<&Pivot>,
        kv_static: Option<&KvStatic>,
    ) -> Result<Self> {
        format.check(cfg)?;
        let kv_static = if format.static_scales {
            let kv = kv_static.ok_or_else(|| {
                ModelError::Input(
                    "--kv static: the model has no static KV scales (make them: lamina \
                     quantize --kv-bits 4)"
                        .into(),
                )
            })?;
            kv.check(cfg)?;
            if format.k.bits() != Some(kv.bits) || format.v != format.k {
                return Err(ModelError::Input(format!(
                    "KV cache format {}: the model's static scales are for {} bits",
                    format.name(),
                    kv.bits
                )));
            }
            Some(kv)
        } else {
            None
        };
        let p = pivot.map_or(0, Pivot::len);
        if let Some(pv) = pivot {
            pv.check(cfg)?;
        }
        if p >= max_ctx {
            return Err(ModelError::Input(format!(
                "the pivot's {p} tokens leave no room in a context of {max_ctx}"
            )));
        }
        if !format.is_f16() && format.sink as usize >= max_ctx {
            return Err(ModelError::Input(format!(
                "--kv-sink {} leaves no room in a context of {max_ctx}",
                format.sink
            )));
        }
        let (hd, nkv) = (cfg.head_dim, cfg.n_kv_heads);
        // Positions travel as u32, and a layer's f16 keys as a usize count
        // (32 bits in a browser): a context past either is refused here,
        // before any product of it can wrap.
        let f16_layer_bytes = 2 * nkv as u64 * max_ctx as u64 * hd as u64;
        if u32::try_from(max_ctx).is_err() || usize::try_from(f16_layer_bytes).is_err() {
            return Err(ModelError::Input(format!(
                "a context of {max_ctx} positions is too large (one layer's f16 keys alone \
                 would be {f16_layer_bytes} bytes); use a smaller context"
            )));
        }
        let mut layers = Vec::with_capacity(cfg.n_layers);
        let layout = (!format.is_f16()).then(|| format.layout(cfg, max_ctx, p));
        // One sketch per shape (layers share it unless --qjl-initial-layers).
        let mut sketch: Option<QjlSketch> = None;
        for l in 0..cfg.n_layers {
            let lay_l = (!format.is_f16()).then(|| format.layer_layout(cfg, l, max_ctx, p));
            if let Some(lay) = lay_l.filter(|lay| lay.k == KvQuant::Qjl)
                && sketch.as_ref().is_none_or(|s| s.m != lay.qjl.m as usize)
            {
                sketch = Some(QjlSketch::new_orthogonal(
                    hd,
                    lay.qjl.m as usize,
                    lay.qjl.m_out as usize,
                    QJL_SEED,
                )?);
            }
            let upload_pivot = |t: &Tensor, rows: usize, k: bool| {
                if let Some(pv) = pivot {
                    let src = if k { &pv.k[l] } else { &pv.v[l] };
                    let img = pivot_rows(src, cfg, rows);
                    gpu.queue
                        .write_buffer(&t.buffer, 0, bytemuck::cast_slice(&img));
                }
            };
            match &lay_l {
                None => {
                    let bytes = DType::F16.bytes_for(nkv * max_ctx * hd);
                    let shape = vec![nkv, max_ctx, hd];
                    let k = tensor(
                        gpu,
                        format!("blk.{l}.k_cache"),
                        bytes,
                        DType::F16,
                        shape.clone(),
                    )?;
                    let v = tensor(gpu, format!("blk.{l}.v_cache"), bytes, DType::F16, shape)?;
                    upload_pivot(&k, max_ctx, true);
                    upload_pivot(&v, max_ctx, false);
                    layers.push(LayerCache::F16 { k, v });
                }
                Some(lay) => {
                    let rows = (lay.pivot + lay.ring) as usize;
                    let wb = lay.window_bytes();
                    let shape = vec![nkv, rows, hd];
                    let k_win = tensor(
                        gpu,
                        format!("blk.{l}.k_win"),
                        lay.k_win_bytes(),
                        DType::F16,
                        shape.clone(),
                    )?;
                    let v_win = tensor(gpu, format!("blk.{l}.v_win"), wb, DType::F16, shape)?;
                    upload_pivot(&k_win, rows, true);
                    upload_pivot(&v_win, rows, false);
                    let kb = lay.k_store_bytes();
                    let k_store = tensor(
                        gpu,
                        format!("blk.{l}.k_store"),
                        kb,
                        DType::U32,
                        vec![kb as usize / 4],
                    )?;
                    if let Some(s) = &sketch {
                        gpu.queue.write_buffer(
                            &k_win.buffer,
                            4 * u64::from(lay.sketch_base()),
                            bytemuck::cast_slice(&s.s),
                        );
                    }
                    let vb = lay.v_store_bytes();
                    let v_store = tensor(
                        gpu,
                        format!("blk.{l}.v_store"),
                        vb,
                        DType::U32,
                        vec![vb as usize / 4],
                    )?;
                    if let Some(kv) = kv_static {
                        let (kw, vw) = kv.words(l);
                        gpu.queue.write_buffer(
                            &k_store.buffer,
                            4 * u64::from(lay.k_static_at(0)),
                            bytemuck::cast_slice(&kw),
                        );
                        gpu.queue.write_buffer(
                            &v_store.buffer,
                            4 * u64::from(lay.v_static_at(0)),
                            bytemuck::cast_slice(&vw),
                        );
                    }
                    layers.push(LayerCache::Quant {
                        k_win,
                        v_win,
                        k_store,
                        v_store,
                        layout: *lay,
                    });
                }
            }
        }
        Ok(KvCache {
            format,
            max_ctx,
            pivot: pivot.map(|p| p.tokens.clone()).unwrap_or_default(),
            layout,
            layers,
        })
    }

    /// A cache of its own with this one's format and contents: the pivot's
    /// rows, static scales and QJL sketch that [`KvCache::new`] put there,
    /// for a second sequence beside this one's (a session never reads a
    /// position it has not written, so what sessions wrote past the pivot
    /// may come along unharmed).
    pub fn duplicate(&self, gpu: &Gpu) -> Result<KvCache> {
        let mut one = self.replicate(gpu, 1)?;
        Ok(one.remove(0))
    }

    /// `n` caches like [`KvCache::duplicate`]'s, whose f16 layers lie in
    /// one buffer per layer and tensor, `n` slots
    /// ([`f16_slot_stride`](KvCache::f16_slot_stride) apart): a batched
    /// decode step attends over all of them in one dispatch
    /// (`kv_f16_attention::Seqs`). Quantized layers get buffers of their own.
    pub fn replicate(&self, gpu: &Gpu, n: usize) -> Result<Vec<KvCache>> {
        let mut layers: Vec<Vec<LayerCache>> = (0..n).map(|_| Vec::new()).collect();
        for (l, c) in self.layers.iter().enumerate() {
            match c {
                LayerCache::F16 { k, v } => {
                    let stride = Self::f16_slot_stride(gpu, k);
                    let ks = gpu.replicate(&format!("blk.{l}.k_cache"), k, n, stride)?;
                    let vs = gpu.replicate(&format!("blk.{l}.v_cache"), v, n, stride)?;
                    for ((out, k), v) in layers.iter_mut().zip(ks).zip(vs) {
                        out.push(LayerCache::F16 { k, v });
                    }
                }
                LayerCache::Quant {
                    k_win,
                    v_win,
                    k_store,
                    v_store,
                    layout,
                } => {
                    let dup = |t: &Tensor, what: &str| gpu.duplicate(&format!("blk.{l}.{what}"), t);
                    for out in &mut layers {
                        out.push(LayerCache::Quant {
                            k_win: dup(k_win, "k_win")?,
                            v_win: dup(v_win, "v_win")?,
                            k_store: dup(k_store, "k_store")?,
                            v_store: dup(v_store, "v_store")?,
                            layout: *layout,
                        });
                    }
                }
            }
        }
        Ok(layers
            .into_iter()
            .map(|layers| KvCache {
                format: self.format,
                max_ctx: self.max_ctx,
                pivot: self.pivot.clone(),
                layout: self.layout,
                layers,
            })
            .collect())
    }

    /// Bytes between two slots of [`KvCache::replicate`]'s f16 buffers: the
    /// cache rounded up to whole rows that start at the device's binding
    /// alignment.
    pub fn f16_slot_stride(gpu: &Gpu, k: &Tensor) -> u64 {
        let row = 2 * k.shape.last().copied().unwrap_or(1).max(1) as u64;
        let align = u64::from(gpu.caps.min_storage_align.max(4));
        let (mut a, mut b) = (row, align);
        while b != 0 {
            (a, b) = (b, a % b);
        }
        k.size.next_multiple_of(row / a * align)
    }

    /// Positions the pivot takes.
    pub fn pivot_len(&self) -> usize {
        self.pivot.len()
    }

    /// Total bytes on the GPU.
    pub fn bytes(&self) -> u64 {
        self.layers
            .iter()
            .map(|l| match l {
                LayerCache::F16 { k, v } => k.size + v.size,
                LayerCache::Quant {
                    k_win,
                    v_win,
                    k_store,
                    v_store,
                    ..
                } => k_win.size + v_win.size + k_store.size + v_store.size,
            })
            .sum()
    }

    /// Bytes that do not grow with the context: the f16 windows and pivot
    /// rows, and the QJL sketch (0 for the f16 layout, whose pivot rows are
    /// ordinary positions).
    pub fn fixed_bytes(&self) -> u64 {
        self.layers
            .iter()
            .map(|l| match l {
                LayerCache::F16 { .. } => 0,
                LayerCache::Quant { layout, .. } => {
                    2 * layout.window_bytes() + 4 * u64::from(layout.sketch_len())
                }
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The f16 window ring of a quantized cache holds a whole step of the
    /// session's batch, whatever that batch is (it used to follow a fixed 512).
    #[test]
    fn window_ring_follows_the_batch() {
        let cfg = crate::synthetic::synthetic_config("135m").unwrap();
        let mut f: KvFormat = "q4".parse().unwrap();
        for batch in [1, 64, 512, 2048] {
            f.batch = batch;
            let l = f.layout(&cfg, 100_000, 1);
            assert_eq!(l.ring, KvLayout::ring_for(f.recent, batch), "batch {batch}");
            l.check("kv", batch).unwrap();
            assert!(l.check("kv", batch + 1).is_err(), "batch {batch} + 1");
        }
    }
}
