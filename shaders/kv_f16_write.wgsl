// kv_f16_write.wgsl: stores the step's new K and V rows into the head-major f16
// caches, one u32 word (two f16, low half first) per invocation.
// Source rows are [n_tokens, n_kv_heads, head_dim]; destinations
// [n_kv_heads, max_ctx, head_dim] at positions pos.. (see ops/kv_f16_write.rs).

struct Params {
    n_words: u32,
    pos: u32,
    n_kv_heads: u32,
    max_ctx: u32,
    row_words: u32,
    _p0: u32,
    _p1: u32,
    _p2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> k: array<vec2<f32>>;
@group(0) @binding(2) var<storage, read> v: array<vec2<f32>>;
@group(0) @binding(3) var<storage, read_write> k_cache: array<u32>;
@group(0) @binding(4) var<storage, read_write> v_cache: array<u32>;

const WG: u32 = 256u;
// to_f16x2: lib/f16.wgsl.

@compute @workgroup_size(WG)
fn kv_f16_write(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * nwg.x) * WG + lid;
    if i >= p.n_words { return; }
    let w = i % p.row_words;
    let row = i / p.row_words;          // token * n_kv_heads + head
    let head = row % p.n_kv_heads;
    let tok = row / p.n_kv_heads;
    let dst = (head * p.max_ctx + p.pos + tok) * p.row_words + w;
    k_cache[dst] = to_f16x2(k[i]);
    v_cache[dst] = to_f16x2(v[i]);
}
