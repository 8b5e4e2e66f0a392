// kvcache.wgsl: what the quantized KV cache's two shaders (kv_quant_store.wgsl,
// kv_quant_attention.wgsl) share, mirroring engine/src/kv/: the format ids,
// the layout's override constants, the cache-addressing part of both
// parameter blocks, and window and format helpers. Each shader declares its
// own `Params` (bound as `p`), with `n_kv_heads`, `max_ctx` and
// `cache: KvCacheParams` members, which the helpers here read.

// Format ids of the store (KvQuant::id in engine/src/kv/mod.rs; a contract
// test holds them equal).
const KV_F16: u32 = 0u;
const KV_Q8: u32 = 1u;
const KV_Q4: u32 = 2u;
const KV_Q2: u32 = 3u;
const KV_QJL: u32 = 4u;

// How both shaders address the cache's buffers (kv::KvCacheParams).
struct KvCacheParams {
    pivot: u32,         // pivot rows, [0, pivot)
    ring: u32,          // window ring rows after the pivot rows
    aux_base: u32,      // word offset of the aux words in k_store
    sketch_base: u32,   // word offset of S in k_win
}

// Set per pipeline from the layout (kv::KvOverride, KvLayout::constants).
override HD: u32 = 64u;     // head_dim
override KF: u32 = 2u;      // store key format: a KV_* id
override VF: u32 = 2u;      // store value format (not KV_QJL)
override QG: u32 = 32u;     // channels per scale group
override KW: u32 = 10u;     // words per key row
override VW: u32 = 10u;     // words per value row
override M: u32 = 128u;     // QJL sketch rows
override MO: u32 = 64u;     // QJL outlier sketch rows
override NOUT: u32 = 4u;    // QJL outlier channels per group
override OQ8: u32 = 0u;     // 1: QJL outlier channels as 8-bit codes, not sketched
override KCH: u32 = 0u;     // 1: integer keys with per-channel scales over each token group
override AW: u32 = 1u;      // aux words per token group of a KV head
override KST: u32 = 0u;     // 1: static (scale, min) words (keys per channel with KCH), rows of codes only

// Window row of position j: pivot rows first, then the ring.
fn win_row(j: u32) -> u32 {
    return select(p.cache.pivot + (j - p.cache.pivot) % p.cache.ring, j, j < p.cache.pivot);
}

// Bits per code of integer format f (KV_Q8, KV_Q4 or KV_Q2).
fn bits_of(f: u32) -> u32 {
    return select(select(2u, 4u, f == KV_Q4), 8u, f == KV_Q8);
}

// First aux word of KV head `head`'s token group holding position j >= pivot
// (KvLayout::aux_at).
fn aux_at(head: u32, j: u32) -> u32 {
    return p.cache.aux_base + (head * ((p.max_ctx + 31u) / 32u) + (j - p.cache.pivot) / 32u) * AW;
}

// Tokens that enter the store together (KvLayout::granule): one with static
// scales, else a group of 32.
fn granule() -> u32 {
    return select(32u, 1u, KST == 1u);
}

// Word offsets of KV head `head`'s (first) static (scale, min) word: in
// k_store after the aux words (one per channel with KCH), in v_store after
// the rows (KvLayout::k_static_at, v_static_at).
fn k_static_at(head: u32) -> u32 {
    return p.cache.aux_base + p.n_kv_heads * ((p.max_ctx + 31u) / 32u) * AW + head * select(1u, HD, KCH == 1u);
}
fn v_static_at(head: u32) -> u32 {
    return p.n_kv_heads * p.max_ctx * VW + head;
}
