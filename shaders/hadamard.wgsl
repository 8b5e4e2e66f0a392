// hadamard.wgsl: one pass of the Hadamard transform, in place (see
// engine/src/ops/hadamard.rs for the math). The pass views each chunk of n
// floats as [K * p, inner] and applies (M ⊗ H_p) * scale along the first
// axis, M = H_K or H_Kᵀ given as sign bits. A workgroup's tile holds
// per_wg chunks x (K * p) rows x cols adjacent columns, laid out
// [chunk][a][b][col] (row a * p + b): the Walsh-Hadamard butterflies over
// b run in workgroup memory, then each output sums K tile values with
// signs and goes straight back to x.

struct Params {
    n_chunks: u32,
    n: u32,
    k: u32,
    p: u32,
    inner: u32,
    cols: u32,
    per_wg: u32,
    scale: f32,
    signs: array<vec4<u32>, 11>,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;

const WG: u32 = 256u;
const TILE: u32 = 4096u;

var<workgroup> tile: array<f32, TILE>;

// M[a, c] as ±1.
fn sign_of(a: u32, c: u32) -> f32 {
    let bit = a * p.k + c;
    let word = bit / 32u;
    let neg = (p.signs[word / 4u][word % 4u] >> (bit % 32u)) & 1u;
    return select(1.0, -1.0, neg != 0u);
}

@compute @workgroup_size(WG)
fn hadamard(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let id = wid.x + wid.y * nwg.x;
    let col_blocks = p.inner / p.cols;
    let first = (id / col_blocks) * p.per_wg;
    if first >= p.n_chunks { return; }
    let col0 = (id % col_blocks) * p.cols;
    let chunks = min(p.per_wg, p.n_chunks - first);
    // Tile elements per chunk, per row a, and in all.
    let span = p.k * p.p * p.cols;
    let a_stride = p.p * p.cols;
    let count = chunks * span;

    for (var t = lid; t < count; t += WG) {
        let r = t % span;
        tile[t] = x[(first + t / span) * p.n + (r / p.cols) * p.inner + col0 + r % p.cols];
    }
    workgroupBarrier();

    // Butterflies over b: partners h rows apart, h * cols tile elements.
    for (var h = p.cols; h < a_stride; h *= 2u) {
        for (var t = lid; t < count / 2u; t += WG) {
            let i0 = (t / h) * 2u * h + t % h;
            let u = tile[i0];
            let v = tile[i0 + h];
            tile[i0] = u + v;
            tile[i0 + h] = u - v;
        }
        workgroupBarrier();
    }

    for (var t = lid; t < count; t += WG) {
        let r = t % span;
        var y = tile[t];
        if p.k > 1u {
            let a = r / a_stride;
            let base = t - a * a_stride;
            y = 0.0;
            for (var c = 0u; c < p.k; c++) {
                y += sign_of(a, c) * tile[base + c * a_stride];
            }
        }
        x[(first + t / span) * p.n + (r / p.cols) * p.inner + col0 + r % p.cols] = y * p.scale;
    }
}
