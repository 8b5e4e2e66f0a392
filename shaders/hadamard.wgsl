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
    // hadamard_quant only (lib/actq.wgsl).
    act: ActParams,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
// hadamard_quant: x is read only; the codes and a scale per row.
@group(0) @binding(2) var<storage, read_write> codes: array<u32>;
@group(0) @binding(3) var<storage, read_write> scales: array<f32>;

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

// One row (n = K * P floats, n + WG <= TILE) per workgroup: the transform as
// `hadamard` computes it (one pass, inner = cols = 1), each output kept in
// registers, then the row's codes as lib/actq.wgsl makes them. The tile's
// tail past the row holds the max reduction (a second workgroup array
// would exceed WebGPU's 16 KiB default).
@compute @workgroup_size(WG)
fn hadamard_quant(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let row = wid.x + wid.y * nwg.x;
    if row >= p.n_chunks { return; }
    let n = p.n;
    let base = row * n;
    for (var t = lid; t < n; t += WG) {
        tile[t] = x[base + t];
    }
    workgroupBarrier();
    for (var h = 1u; h < p.p; h *= 2u) {
        for (var t = lid; t < n / 2u; t += WG) {
            let i0 = (t / h) * 2u * h + t % h;
            let u = tile[i0];
            let v = tile[i0 + h];
            tile[i0] = u + v;
            tile[i0 + h] = u - v;
        }
        workgroupBarrier();
    }
    var ys: array<f32, 16>;
    var m = 0.0;
    var i = 0u;
    for (var t = lid; t < n; t += WG) {
        var y = tile[t];
        if p.k > 1u {
            let a = t / p.p;
            let b = t - a * p.p;
            y = 0.0;
            for (var c = 0u; c < p.k; c++) {
                y += sign_of(a, c) * tile[b + c * p.p];
            }
        }
        y *= p.scale;
        ys[i] = y;
        m = max(m, abs(y));
        i++;
    }
    workgroupBarrier();
    // The row's max |y| (used in the dynamic mode) over the tile's tail.
    tile[n + lid] = m;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s /= 2u) {
        if lid < s { tile[n + lid] = max(tile[n + lid], tile[n + lid + s]); }
        workgroupBarrier();
    }
    let sc = act_scale(p.act, tile[n]);
    workgroupBarrier();
    i = 0u;
    for (var t = lid; t < n; t += WG) {
        tile[t] = ys[i];
        i++;
    }
    workgroupBarrier();
    for (var w = lid; w < n / 4u; w += WG) {
        let v = vec4<f32>(tile[4u * w], tile[4u * w + 1u], tile[4u * w + 2u], tile[4u * w + 3u]);
        codes[row * (n / 4u) + w] = act_codes4(v, sc.y, p.act.qmax);
    }
    if lid == 0u {
        scales[row] = sc.x;
    }
}
