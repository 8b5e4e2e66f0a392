// rope.wgsl: rotary position embedding in place, on the queries and the
// keys in one dispatch. One invocation per (token, pair j): the angle's
// sin/cos are computed once and applied to pair j of every query and key
// head. rope_hadamard: RoPE, then the Walsh-Hadamard transform of each head
// scaled by 1/sqrt(head_dim), one workgroup per (token, head), query heads
// first. Uses lib/rope.wgsl (angles, pairs) and lib/trig.wgsl (sincos).

struct Params {
    n_tokens: u32,
    n_heads: u32,
    head_dim: u32,
    pos: u32,
    style: u32,
    log2_theta: f32,
    hadamard_scale: f32,
    n_kv_heads: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// [n_tokens, n_heads, head_dim] and [n_tokens, n_kv_heads, head_dim].
@group(0) @binding(1) var<storage, read_write> q: array<f32>;
@group(0) @binding(2) var<storage, read_write> k: array<f32>;
// The `_scaled` entry points only: each pair's frequency divisor.
@group(0) @binding(3) var<storage, read> factors: array<f32>;

const WG: u32 = 64u;
// The largest head_dim of rope_hadamard (rope::HADAMARD_MAX_DIM).
const HD_MAX: u32 = 256u;

var<workgroup> head: array<f32, HD_MAX>;
// rope_hadamard: each pair's frequency divisor (1 when unscaled).
var<workgroup> divs: array<f32, HD_MAX / 2>;

@compute @workgroup_size(WG)
fn rope(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let idx = (wid.x + wid.y * nwg.x) * WG + lid;
    if idx >= p.n_tokens * (p.head_dim / 2u) { return; }
    rope_pair(idx, 1.0);
}

@compute @workgroup_size(WG)
fn rope_scaled(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let idx = (wid.x + wid.y * nwg.x) * WG + lid;
    if idx >= p.n_tokens * (p.head_dim / 2u) { return; }
    rope_pair(idx, factors[idx % (p.head_dim / 2u)]);
}

// Pair idx % (head_dim / 2) of token idx / (head_dim / 2), in every query
// and key head.
fn rope_pair(idx: u32, div: f32) {
    let half = p.head_dim / 2u;
    let t = idx / half;
    let j = idx % half;
    let sc = angle_sincos(p.pos + t, j, div);
    let ab = pair(j);
    for (var h = 0u; h < p.n_heads; h++) {
        let base = (t * p.n_heads + h) * p.head_dim;
        let y = rotate(vec2<f32>(q[base + ab.x], q[base + ab.y]), sc);
        q[base + ab.x] = y.x;
        q[base + ab.y] = y.y;
    }
    for (var h = 0u; h < p.n_kv_heads; h++) {
        let base = (t * p.n_kv_heads + h) * p.head_dim;
        let y = rotate(vec2<f32>(k[base + ab.x], k[base + ab.y]), sc);
        k[base + ab.x] = y.x;
        k[base + ab.y] = y.y;
    }
}

@compute @workgroup_size(WG)
fn rope_hadamard(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    for (var j = lid; j < p.head_dim / 2u; j += WG) {
        divs[j] = 1.0;
    }
    rope_hadamard_head(wid.x + wid.y * nwg.x, lid);
}

@compute @workgroup_size(WG)
fn rope_hadamard_scaled(@builtin(workgroup_id) wid: vec3<u32>,
                        @builtin(num_workgroups) nwg: vec3<u32>,
                        @builtin(local_invocation_index) lid: u32) {
    for (var j = lid; j < p.head_dim / 2u; j += WG) {
        divs[j] = factors[j];
    }
    rope_hadamard_head(wid.x + wid.y * nwg.x, lid);
}

// Head id % (n_heads + n_kv_heads) of token id / (n_heads + n_kv_heads):
// a query head, then the key heads (divs filled by the entry point; the
// early return and the q / k branches are uniform across the workgroup, so
// the barriers below stay in uniform control flow).
fn rope_hadamard_head(id: u32, lid: u32) {
    workgroupBarrier();
    let heads = p.n_heads + p.n_kv_heads;
    if id >= p.n_tokens * heads { return; }
    let t = id / heads;
    let h = id % heads;
    let is_q = h < p.n_heads;
    let base = select((t * p.n_kv_heads + h - p.n_heads) * p.head_dim,
                      (t * p.n_heads + h) * p.head_dim, is_q);
    let half = p.head_dim / 2u;
    for (var j = lid; j < half; j += WG) {
        let sc = angle_sincos(p.pos + t, j, divs[j]);
        let ab = pair(j);
        var x: vec2<f32>;
        if is_q {
            x = vec2<f32>(q[base + ab.x], q[base + ab.y]);
        } else {
            x = vec2<f32>(k[base + ab.x], k[base + ab.y]);
        }
        let y = rotate(x, sc);
        head[ab.x] = y.x;
        head[ab.y] = y.y;
    }
    workgroupBarrier();
    // Butterflies h apart, in the order of hadamard.wgsl and the CPU's.
    for (var h = 1u; h < p.head_dim; h *= 2u) {
        for (var i = lid; i < half; i += WG) {
            let i0 = (i / h) * 2u * h + i % h;
            let u = head[i0];
            let v = head[i0 + h];
            head[i0] = u + v;
            head[i0 + h] = u - v;
        }
        workgroupBarrier();
    }
    for (var i = lid; i < p.head_dim; i += WG) {
        if is_q {
            q[base + i] = head[i] * p.hadamard_scale;
        } else {
            k[base + i] = head[i] * p.hadamard_scale;
        }
    }
}
