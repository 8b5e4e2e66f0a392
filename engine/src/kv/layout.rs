//! [`KvLayout`]: the shape, formats and buffer layout of one layer's
//! quantized cache (the formats and segments are described in `kv/mod.rs`),
//! and how both quantized-cache shaders receive it: override constants
//! ([`KvOverride`]) and the `cache` member of their parameter blocks
//! ([`KvCacheParams`]).

use super::format::{GROUP, KvQuant, MAX_OUTLIERS, QjlShape};
use crate::pipeline::Kernel;
use crate::{EngineError, Result, ensure_shape};

/// Shape and formats of one layer's quantized cache (the same for all layers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KvLayout {
    pub n_kv_heads: u32,
    pub head_dim: u32,
    pub max_ctx: u32,
    /// Pivot positions `[0, pivot)`, f16, never quantized.
    pub pivot: u32,
    /// Fewest recent tokens kept in f16 (R).
    pub recent: u32,
    /// Window ring rows after the pivot rows.
    pub ring: u32,
    pub k: KvQuant,
    pub v: KvQuant,
    /// Channels per scale group of the integer formats (divides head_dim).
    pub qgroup: u32,
    /// Integer keys with one scale per channel over each token group
    /// (KIVI) instead of per token. Needs q8, q4 or q2 keys.
    pub k_channel: bool,
    pub qjl: QjlShape,
    /// Prompt steps attend to their own tokens in f16, from the window
    /// ring, not to the store the step's flush wrote them into (QJL's code
    /// attends exactly inside the prompt). Decode steps are unchanged.
    pub exact_prompt: bool,
    /// Static scales (PrefixQuant's KV4): integer keys and values with
    /// `(scale, min)` words fixed at quantize time after each store's rows
    /// ([`KvLayout::k_static_at`], [`KvLayout::v_static_at`]; the host
    /// writes them once): one per KV head, or for keys with `k_channel` one
    /// per channel of each head. Rows are codes only, and tokens enter the
    /// store one at a time, not by groups of [`GROUP`].
    pub static_scales: bool,
}

impl KvLayout {
    /// The ring a graph with steps of up to `max_rows` tokens needs.
    pub fn ring_for(recent: u32, max_rows: u32) -> u32 {
        max_rows + recent + GROUP
    }

    /// u32 words of one row of format `f` (`channel`: codes only, the
    /// scales being per channel in the aux words).
    fn row_words(&self, f: KvQuant, channel: bool) -> u32 {
        let hd = self.head_dim;
        match f {
            KvQuant::F16 => hd / 2,
            KvQuant::Q8 | KvQuant::Q4 | KvQuant::Q2 => {
                let scales = if channel || self.static_scales {
                    0
                } else {
                    hd / self.qgroup.max(1)
                };
                (hd * f.bits().unwrap_or(8)).div_ceil(32) + scales
            }
            KvQuant::Qjl => {
                self.qjl.m / 32 + self.qjl.m_out / 32 + 1 + u32::from(self.qjl.outlier_q8)
            }
        }
    }
    pub fn k_words(&self) -> u32 {
        self.row_words(self.k, self.k_channel)
    }
    pub fn v_words(&self) -> u32 {
        self.row_words(self.v, false)
    }
    /// Token groups per KV head.
    pub fn groups(&self) -> u32 {
        self.max_ctx.div_ceil(GROUP)
    }
    /// Aux words per token group of one KV head: QJL's outlier word, then
    /// (8-bit outliers) one `(scale, min)` word per outlier channel;
    /// per-channel integer keys: one `(scale, min)` word per channel.
    pub fn aux_words(&self) -> u32 {
        match self.k {
            KvQuant::Qjl if self.qjl.outlier_q8 => 1 + self.qjl.outliers,
            KvQuant::Qjl => 1,
            KvQuant::Q8 | KvQuant::Q4 | KvQuant::Q2 if self.k_channel && !self.static_scales => {
                self.head_dim
            }
            _ => 0,
        }
    }
    /// Word offset of the aux words in k_store.
    pub fn aux_base(&self) -> u32 {
        self.n_kv_heads * self.max_ctx * self.k_words()
    }
    /// Word offset of the aux words of KV head `kvh`'s token group `g`.
    pub fn aux_at(&self, kvh: u32, g: u32) -> u32 {
        self.aux_base() + (kvh * self.groups() + g) * self.aux_words()
    }
    /// Word offset of S in k_win (after the window rows; a multiple of 4).
    pub fn sketch_base(&self) -> u32 {
        self.n_kv_heads * (self.pivot + self.ring) * self.head_dim / 2
    }
    /// Floats of S (0 unless keys are QJL).
    pub fn sketch_len(&self) -> u32 {
        if self.k == KvQuant::Qjl {
            self.head_dim * self.qjl.m
        } else {
            0
        }
    }
    /// Static `(scale, min)` words of one KV head's keys: one, or one per
    /// channel (`k_channel`).
    pub fn k_static_words(&self) -> u32 {
        if self.k_channel { self.head_dim } else { 1 }
    }
    /// Word offset in k_store of KV head `kvh`'s first static `(scale,
    /// min)` word (after the aux words).
    pub fn k_static_at(&self, kvh: u32) -> u32 {
        self.aux_base()
            + self.n_kv_heads * self.groups() * self.aux_words()
            + kvh * self.k_static_words()
    }
    /// Word offset in v_store of KV head `kvh`'s static `(scale, min)` word
    /// (after the rows).
    pub fn v_static_at(&self, kvh: u32) -> u32 {
        self.n_kv_heads * self.max_ctx * self.v_words() + kvh
    }
    /// The static words of all KV heads of one store (0 without static scales).
    fn static_words(&self, per_head: u32) -> u32 {
        if self.static_scales {
            self.n_kv_heads * per_head
        } else {
            0
        }
    }
    pub fn k_store_bytes(&self) -> u64 {
        4 * u64::from(self.k_static_at(0) + self.static_words(self.k_static_words()))
    }
    pub fn v_store_bytes(&self) -> u64 {
        4 * u64::from(self.v_static_at(0) + self.static_words(1))
    }
    /// Tokens that enter the store together: one with static scales, else
    /// a group of [`GROUP`] (per-channel keys and QJL's outliers take their
    /// statistics over the group).
    pub fn granule(&self) -> u32 {
        if self.static_scales { 1 } else { GROUP }
    }
    /// Bytes of one window buffer's rows (pivot rows + ring).
    pub fn window_bytes(&self) -> u64 {
        2 * u64::from(self.n_kv_heads)
            * u64::from(self.pivot + self.ring)
            * u64::from(self.head_dim)
    }
    /// Bytes of the key window buffer: its rows, then S.
    pub fn k_win_bytes(&self) -> u64 {
        self.window_bytes() + 4 * u64::from(self.sketch_len())
    }
    /// Bytes one stored token costs in this layer, keys and values, every
    /// scale, norm and outlier index included.
    pub fn store_bytes_per_token(&self) -> f64 {
        let aux = 4.0 * f64::from(self.aux_words()) / f64::from(GROUP);
        f64::from(self.n_kv_heads) * (4.0 * f64::from(self.k_words() + self.v_words()) + aux)
    }
    /// End of the store when `len` tokens are in the cache.
    pub fn boundary(&self, len: u32) -> u32 {
        let old = len.saturating_sub(self.pivot + self.recent);
        self.pivot + old / self.granule() * self.granule()
    }
    /// Window row of position `j`.
    pub fn window_row(&self, j: u32) -> u32 {
        if j < self.pivot {
            j
        } else {
            self.pivot + (j - self.pivot) % self.ring.max(1)
        }
    }

    pub fn check(&self, op: &'static str, max_rows: u32) -> Result<()> {
        let hd = self.head_dim;
        ensure_shape!(
            hd.is_multiple_of(8) && (8..=256).contains(&hd),
            op,
            "head_dim {hd} must be a multiple of 8 in 8..=256"
        );
        ensure_shape!(
            self.n_kv_heads > 0 && self.max_ctx > self.pivot,
            op,
            "n_kv_heads must be nonzero and max_ctx {} past the pivot {}",
            self.max_ctx,
            self.pivot
        );
        ensure_shape!(
            self.ring >= Self::ring_for(self.recent, max_rows)
                || self.ring >= self.max_ctx - self.pivot,
            op,
            "window ring of {} rows too small for steps of {max_rows} tokens and a recent window of {} \
             (needs {} rows, or every position past the pivot)",
            self.ring,
            self.recent,
            Self::ring_for(self.recent, max_rows)
        );
        if (self.k.bits().is_some() || self.v.bits().is_some()) && !self.static_scales {
            ensure_shape!(
                self.qgroup > 0 && self.qgroup.is_multiple_of(8) && hd.is_multiple_of(self.qgroup),
                op,
                "scale group {} must be a multiple of 8 dividing head_dim {hd}",
                self.qgroup
            );
        }
        ensure_shape!(
            !self.k_channel || self.k.bits().is_some(),
            op,
            "per-channel key scales need integer keys (q8, q4 or q2)"
        );
        ensure_shape!(
            !self.static_scales || (self.k.bits().is_some() && self.v.bits().is_some()),
            op,
            "static scales need integer keys and values (q8, q4 or q2)"
        );
        if self.v == KvQuant::Qjl {
            return Err(EngineError::Shape {
                op,
                msg: "QJL is a key format; values need f16, q8, q4 or q2".into(),
            });
        }
        if self.k == KvQuant::Qjl {
            let s = self.qjl;
            ensure_shape!(
                s.m > 0
                    && s.m.is_multiple_of(32)
                    && s.m_out.is_multiple_of(32)
                    && s.m_out <= s.m
                    && s.outliers <= MAX_OUTLIERS
                    && s.outliers < hd
                    && if s.outlier_q8 {
                        s.m_out == 0
                    } else {
                        (s.outliers == 0) == (s.m_out == 0)
                    },
                op,
                "QJL sketch m {} / m_out {} / outliers {}: rows must be multiples of 32, m_out <= m, \
                 at most {MAX_OUTLIERS} outliers, and outlier rows exactly when outliers are sketched",
                s.m,
                s.m_out,
                s.outliers
            );
        }
        Ok(())
    }

    /// `kernel` with every [`KvOverride`] set from this layout.
    pub fn constants(&self, kernel: Kernel) -> Kernel {
        KvOverride::ALL
            .iter()
            .fold(kernel, |k, o| k.with(o.name(), o.value(self)))
    }

    /// The cache-addressing part of both shaders' parameter blocks.
    pub fn cache_params(&self) -> KvCacheParams {
        KvCacheParams {
            pivot: self.pivot,
            ring: self.ring,
            aux_base: self.aux_base(),
            sketch_base: self.sketch_base(),
        }
    }
}

/// The override constants of shaders/lib/kvcache.wgsl, which both quantized
/// cache shaders include; each pipeline sets all of them from its layout
/// ([`KvLayout::constants`]). A contract test checks the names against the
/// shader's overrides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvOverride {
    /// head_dim.
    HeadDim,
    /// The store's key format id ([`KvQuant::id`]).
    KeyFormat,
    /// The store's value format id (not QJL).
    ValueFormat,
    /// Channels per scale group of the integer formats.
    ScaleGroup,
    /// u32 words per key row of the store.
    KeyWords,
    /// u32 words per value row of the store.
    ValueWords,
    /// QJL sketch rows (m).
    SketchRows,
    /// QJL outlier sketch rows (m_out).
    OutlierRows,
    /// QJL outlier channels per token group.
    Outliers,
    /// 1: QJL outlier channels as 8-bit codes, not sketched.
    OutlierQ8,
    /// 1: integer keys with per-channel scales over each token group.
    KeyChannel,
    /// Aux words per token group of a KV head.
    AuxWords,
    /// 1: static scales ([`KvLayout::static_scales`]).
    StaticScales,
}

impl KvOverride {
    pub const ALL: [KvOverride; 13] = [
        KvOverride::HeadDim,
        KvOverride::KeyFormat,
        KvOverride::ValueFormat,
        KvOverride::ScaleGroup,
        KvOverride::KeyWords,
        KvOverride::ValueWords,
        KvOverride::SketchRows,
        KvOverride::OutlierRows,
        KvOverride::Outliers,
        KvOverride::OutlierQ8,
        KvOverride::KeyChannel,
        KvOverride::AuxWords,
        KvOverride::StaticScales,
    ];

    /// The WGSL `override` name.
    pub const fn name(self) -> &'static str {
        match self {
            KvOverride::HeadDim => "HD",
            KvOverride::KeyFormat => "KF",
            KvOverride::ValueFormat => "VF",
            KvOverride::ScaleGroup => "QG",
            KvOverride::KeyWords => "KW",
            KvOverride::ValueWords => "VW",
            KvOverride::SketchRows => "M",
            KvOverride::OutlierRows => "MO",
            KvOverride::Outliers => "NOUT",
            KvOverride::OutlierQ8 => "OQ8",
            KvOverride::KeyChannel => "KCH",
            KvOverride::AuxWords => "AW",
            KvOverride::StaticScales => "KST",
        }
    }

    /// Its value for layout `l`.
    pub fn value(self, l: &KvLayout) -> u32 {
        match self {
            KvOverride::HeadDim => l.head_dim,
            KvOverride::KeyFormat => l.k.id(),
            KvOverride::ValueFormat => l.v.id(),
            KvOverride::ScaleGroup => l.qgroup.max(8),
            KvOverride::KeyWords => l.k_words(),
            KvOverride::ValueWords => l.v_words(),
            KvOverride::SketchRows => l.qjl.m.max(32),
            KvOverride::OutlierRows => l.qjl.m_out,
            KvOverride::Outliers => l.qjl.outliers,
            KvOverride::OutlierQ8 => u32::from(l.qjl.outlier_q8),
            KvOverride::KeyChannel => u32::from(l.k_channel),
            KvOverride::AuxWords => l.aux_words(),
            KvOverride::StaticScales => u32::from(l.static_scales),
        }
    }
}

crate::params_struct! {
    /// How both quantized-cache shaders address the cache's buffers: the
    /// `cache` member of each one's parameter block (`KvCacheParams` in
    /// lib/kvcache.wgsl, whose window and aux helpers read it through
    /// `p.cache`, with `p.max_ctx` from the block itself).
    pub struct KvCacheParams {
        /// Pivot rows, `[0, pivot)`.
        pub pivot: u32,
        /// Window ring rows after the pivot rows.
        pub ring: u32,
        /// Word offset of the aux words in k_store ([`KvLayout::aux_base`]).
        pub aux_base: u32,
        /// Word offset of S in k_win ([`KvLayout::sketch_base`]).
        pub sketch_base: u32,
    }
}
