// rope_kv_f16.wgsl: RoPE on the queries (in place) and the keys, with the
// rotated keys and the values stored straight into the f16 KV cache: the
// rope and kv_f16_write passes in one dispatch (ops/rope.rs, RopeKvF16; the
// cache's layout and rounding are kv_f16_write's). One invocation per
// (token, i < head_dim / 4) takes pairs 2i and 2i + 1 of every head: two
// whole f16 words of each key and value row (interleaved pairs: words 2i
// and 2i + 1; neox: words i and i + head_dim / 4), so no invocations share
// a word. Uses lib/rope.wgsl, lib/trig.wgsl and lib/f16.wgsl.

struct Params {
    n_tokens: u32,
    n_heads: u32,
    head_dim: u32,
    pos: u32,
    style: u32,
    log2_theta: f32,
    n_kv_heads: u32,
    max_ctx: u32,
    // Several sequences (ops/rope.rs, kv::Seqs; 0: one): row t is sequence
    // t's token, at position seq_pos[t / 4][t % 4] (u32 max: no token this
    // step), its rows in the cache slot_words further per sequence.
    n_seqs: u32,
    slot_words: u32,
    _p0: u32,
    _p1: u32,
    seq_pos: array<vec4<u32>, MAX_SEQS / 4u>,
}

const MAX_SEQS: u32 = 8u; // kv::MAX_SEQS (tests/tests/contracts.rs)

@group(0) @binding(0) var<uniform> p: Params;
// [n_tokens, n_heads, head_dim] and [n_tokens, n_kv_heads, head_dim] each
// for k and v; k and v are only read, but bound writable as q is, since all
// three may be views of one buffer.
@group(0) @binding(1) var<storage, read_write> q: array<f32>;
@group(0) @binding(2) var<storage, read_write> k: array<f32>;
@group(0) @binding(3) var<storage, read_write> v: array<f32>;
// [n_kv_heads, max_ctx, head_dim] f16, two per word.
@group(0) @binding(4) var<storage, read_write> k_cache: array<u32>;
@group(0) @binding(5) var<storage, read_write> v_cache: array<u32>;
// The `_scaled` entry point only: each pair's frequency divisor.
@group(0) @binding(6) var<storage, read> factors: array<f32>;

const WG: u32 = 64u;

@compute @workgroup_size(WG)
fn rope_kv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let idx = (wid.x + wid.y * nwg.x) * WG + lid;
    if idx >= p.n_tokens * (p.head_dim / 4u) { return; }
    rope_quad(idx, vec2<f32>(1.0));
}

@compute @workgroup_size(WG)
fn rope_kv_scaled(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let idx = (wid.x + wid.y * nwg.x) * WG + lid;
    if idx >= p.n_tokens * (p.head_dim / 4u) { return; }
    let j = 2u * (idx % (p.head_dim / 4u));
    rope_quad(idx, vec2<f32>(factors[j], factors[j + 1u]));
}

// Row t's position, and its first cache word (before the head's row).
fn row_pos(t: u32) -> u32 {
    if p.n_seqs == 0u {
        return p.pos + t;
    }
    return p.seq_pos[t / 4u][t % 4u];
}
fn row_slot(t: u32) -> u32 {
    return select(0u, t * p.slot_words, p.n_seqs > 0u);
}

// Pairs 2i, 2i + 1 (i = idx % (head_dim / 4)) of token idx / (head_dim / 4)
// in every head; `div`: their frequency divisors.
fn rope_quad(idx: u32, div: vec2<f32>) {
    let quarter = p.head_dim / 4u;
    let t = idx / quarter;
    let i = idx % quarter;
    let j0 = 2u * i;
    let pos = row_pos(t);
    let sc0 = angle_sincos(pos, j0, div.x);
    let sc1 = angle_sincos(pos, j0 + 1u, div.y);
    let a0 = pair(j0);
    let a1 = pair(j0 + 1u);
    for (var h = 0u; h < p.n_heads; h++) {
        let base = (t * p.n_heads + h) * p.head_dim;
        let y0 = rotate(vec2<f32>(q[base + a0.x], q[base + a0.y]), sc0);
        let y1 = rotate(vec2<f32>(q[base + a1.x], q[base + a1.y]), sc1);
        q[base + a0.x] = y0.x;
        q[base + a0.y] = y0.y;
        q[base + a1.x] = y1.x;
        q[base + a1.y] = y1.y;
    }
    // Rows past the cache's end are dropped (as kv_f16_write does), and
    // those of sequences without a token this step.
    if pos >= p.max_ctx {
        return;
    }
    // The two words each row of the cache gets, and the elements in them.
    let neox = p.style == 1u;
    let w0 = select(j0, i, neox);
    let w1 = select(j0 + 1u, i + quarter, neox);
    let row_words = p.head_dim / 2u;
    for (var h = 0u; h < p.n_kv_heads; h++) {
        let base = (t * p.n_kv_heads + h) * p.head_dim;
        let y0 = rotate(vec2<f32>(k[base + a0.x], k[base + a0.y]), sc0);
        let y1 = rotate(vec2<f32>(k[base + a1.x], k[base + a1.y]), sc1);
        // Interleaved: word j0 holds pair j0, word j0 + 1 pair j0 + 1. Neox:
        // word i holds the pairs' first elements, word i + quarter their
        // second ones.
        let k0 = select(y0, vec2<f32>(y0.x, y1.x), neox);
        let k1 = select(y1, vec2<f32>(y0.y, y1.y), neox);
        let dst = row_slot(t) + (h * p.max_ctx + pos) * row_words;
        k_cache[dst + w0] = to_f16x2(k0);
        k_cache[dst + w1] = to_f16x2(k1);
        v_cache[dst + w0] = to_f16x2(vec2<f32>(v[base + 2u * w0], v[base + 2u * w0 + 1u]));
        v_cache[dst + w1] = to_f16x2(vec2<f32>(v[base + 2u * w1], v[base + 2u * w1 + 1u]));
    }
}
