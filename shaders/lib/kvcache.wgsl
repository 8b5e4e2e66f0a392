// kvcache.wgsl: what the quantized KV cache's two shaders (kv_store.wgsl,
// kv_attention.wgsl) share: the parameter block (ops/kv_store.rs KvParams),
// the layout's override constants, and window and format helpers.

struct Params {
    n_tokens: u32,
    pos: u32,
    kv_len: u32,
    n_heads: u32,
    n_kv_heads: u32,
    max_ctx: u32,
    n_chunks: u32,
    chunk_len: u32,
    scale: f32,
    pivot: u32,
    ring: u32,
    recent: u32,
    lo: u32,        // store: first position to flush
    hi: u32,        // store: end of the flush
    aux_base: u32,
    sketch_base: u32,
    qs_off: u32,    // attention: vec4 offset of the query sketches in scratch
    _p0: u32,
    _p1: u32,
    _p2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

// Set per pipeline from the layout (ops/kv_store.rs layout_constants).
override HD: u32 = 64u;     // head_dim
override KF: u32 = 2u;      // store key format: 0 f16, 1 q8, 2 q4, 3 q2, 4 qjl
override VF: u32 = 2u;      // store value format (not qjl)
override QG: u32 = 32u;     // channels per scale group
override KW: u32 = 10u;     // words per key row
override VW: u32 = 10u;     // words per value row
override M: u32 = 128u;     // QJL sketch rows
override MO: u32 = 64u;     // QJL outlier sketch rows
override NOUT: u32 = 4u;    // QJL outlier channels per group
override OQ8: u32 = 0u;     // 1: QJL outlier channels as 8-bit codes, not sketched
override KCH: u32 = 0u;     // 1: integer keys with per-channel scales over each token group
override AW: u32 = 1u;      // aux words per token group of a KV head

// Window row of position j: pivot rows first, then the ring.
fn win_row(j: u32) -> u32 {
    return select(p.pivot + (j - p.pivot) % p.ring, j, j < p.pivot);
}

// Bits per code of integer format f (1 q8, 2 q4, 3 q2).
fn bits_of(f: u32) -> u32 {
    return select(select(2u, 4u, f == 2u), 8u, f == 1u);
}

// First aux word of KV head `head`'s token group holding position j >= pivot
// (KvLayout::aux_at).
fn aux_at(head: u32, j: u32) -> u32 {
    return p.aux_base + (head * ((p.max_ctx + 31u) / 32u) + (j - p.pivot) / 32u) * AW;
}
