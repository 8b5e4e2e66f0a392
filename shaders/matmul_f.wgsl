// matmul_f.wgsl: out[t, r] = sum_c x[t, c] * W[r, c] with W in F32 (one
// word per element) or F16 (two per word, low half first; read with
// unpack2x16float so SHADER_F16 is not needed). Rows are `cols` (F32) or
// ceil(cols / 2) (F16) words long and `cols` may be any count, so loads are
// scalar and the last 32-column block is masked; the loop structure matches
// matmul_q.wgsl (see there).

struct Params {
    rows: u32,
    cols: u32,
    nb: u32,
    n_tokens: u32,
    x_row: u32,
    out_stride: u32,
    out_col: u32,
    row_tiles: u32,
    // GLU: the element where up starts in x (lib/xload.wgsl).
    x_up: u32,
    // The block kernels' RMSNorm epsilon (lib/xnorm.wgsl); unused here.
    eps: f32,
    _pad1: u32,
    _pad2: u32,
    // Where the results go (lib/mmout.wgsl).
    o: MmOut,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> codes: array<u32>;
// Bindings 3 and 4 (scales, mins) are unused by these formats.
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

const WG: u32 = 64u;

const F32: u32 = 0u;
const F16: u32 = 1u;

// With GLU, x holds SwiGLU's gate and up (up from element p.x_up on) and
// the input is silu(gate) * up (lib/glu.wgsl, as lib/xload.wgsl does).
override GLU: bool = false;

fn x_at(i: u32) -> f32 {
    if GLU {
        return silu(x[i]) * x[i + p.x_up];
    }
    return x[i];
}

// x[t, c .. c + 4], zero past the row's end.
fn x4(t: u32, c: u32) -> vec4<f32> {
    let i = t * p.cols + c;
    let n = p.cols;
    return vec4<f32>(select(0.0, x_at(i), c < n), select(0.0, x_at(i + 1u), c + 1u < n),
                     select(0.0, x_at(i + 2u), c + 2u < n), select(0.0, x_at(i + 3u), c + 3u < n));
}

// W[row, c .. c + 4] (c a multiple of 4), zero past the row's end.
fn w4(row: u32, c: u32, fmt: u32) -> vec4<f32> {
    var v: vec4<f32>;
    if fmt == F32 {
        let i = row * p.cols + c;
        v = vec4<f32>(bitcast<f32>(codes[i]), bitcast<f32>(codes[i + 1u]),
                      bitcast<f32>(codes[i + 2u]), bitcast<f32>(codes[i + 3u]));
    } else {
        // Padding halves past an odd row end are packed as zero.
        let i = row * ((p.cols + 1u) / 2u) + c / 2u;
        v = vec4<f32>(unpack2x16float(codes[i]), unpack2x16float(codes[i + 1u]));
    }
    return select(vec4<f32>(0.0), v, vec4<u32>(c) + vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(p.cols));
}

// ---------------------------------------------------------------------------
// matvec: one token; thread (g, l) computes R rows over blocks l, l + L, ...

override L: u32 = 1u;
const R: u32 = 4u;

var<workgroup> part: array<vec4<f32>, WG>;

fn matvec(wg: u32, lid: u32, fmt: u32) {
    let g = lid / L;
    let l = lid % L;
    let rows_per_wg = (WG / L) * R;
    let row0 = wg * rows_per_wg + g * R;
    let last = p.rows - 1u;
    let r0 = min(row0, last);
    let r1 = min(row0 + 1u, last);
    let r2 = min(row0 + 2u, last);
    let r3 = min(row0 + 3u, last);
    var acc = vec4<f32>(0.0);
    for (var kb = l; kb < p.nb; kb += L) {
        for (var kq = 0u; kq < 8u; kq++) {
            let c = kb * 32u + kq * 4u;
            let xv = x4(p.x_row, c);
            acc += vec4<f32>(dot(w4(r0, c, fmt), xv), dot(w4(r1, c, fmt), xv),
                             dot(w4(r2, c, fmt), xv), dot(w4(r3, c, fmt), xv));
        }
    }
    part[lid] = acc;
    workgroupBarrier();
    for (var o = lid; o < rows_per_wg; o += WG) {
        let first = (o / R) * L;
        var s = 0.0;
        for (var j = 0u; j < L; j++) {
            s += part[first + j][o % R];
        }
        store_out(0u, wg * rows_per_wg + o, s);
    }
}

@compute @workgroup_size(WG)
fn matvec_f32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    matvec(wid.x + wid.y * nwg.x, lid, F32);
}

@compute @workgroup_size(WG)
fn matvec_f16(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    matvec(wid.x + wid.y * nwg.x, lid, F16);
}

// ---------------------------------------------------------------------------
// Tiled matmul: TM tokens x TN rows per workgroup; x tiles staged in
// workgroup memory, thread (ty, tx) keeps 4 tokens x 8 rows.

const TM: u32 = 32u;
const TN: u32 = 64u;

var<workgroup> xs: array<vec4<f32>, 256>; // [TM tokens][8 vec4 of one block]

fn mv4(x0: vec4<f32>, x1: vec4<f32>, x2: vec4<f32>, x3: vec4<f32>, w: vec4<f32>) -> vec4<f32> {
    return vec4<f32>(dot(x0, w), dot(x1, w), dot(x2, w), dot(x3, w));
}

fn matmul(wg: u32, lid: u32, fmt: u32) {
    let tile_r = wg % p.row_tiles;
    let tile_t = wg / p.row_tiles;
    let ty = lid / 8u;
    let tx = lid % 8u;
    let t0 = tile_t * TM;
    let r0 = tile_r * TN + tx * 8u;
    let last = p.rows - 1u;
    let last_t = p.n_tokens - 1u;
    var acc = array<vec4<f32>, 8>();
    for (var kb = 0u; kb < p.nb; kb++) {
        for (var i = 0u; i < 4u; i++) {
            let e = lid + i * WG;
            xs[e] = x4(min(t0 + e / 8u, last_t), kb * 32u + (e % 8u) * 4u);
        }
        workgroupBarrier();
        let xb = ty * 32u;
        for (var kq = 0u; kq < 8u; kq++) {
            let c = kb * 32u + kq * 4u;
            let x0 = xs[xb + kq];
            let x1 = xs[xb + 8u + kq];
            let x2 = xs[xb + 16u + kq];
            let x3 = xs[xb + 24u + kq];
            acc[0] += mv4(x0, x1, x2, x3, w4(min(r0, last), c, fmt));
            acc[1] += mv4(x0, x1, x2, x3, w4(min(r0 + 1u, last), c, fmt));
            acc[2] += mv4(x0, x1, x2, x3, w4(min(r0 + 2u, last), c, fmt));
            acc[3] += mv4(x0, x1, x2, x3, w4(min(r0 + 3u, last), c, fmt));
            acc[4] += mv4(x0, x1, x2, x3, w4(min(r0 + 4u, last), c, fmt));
            acc[5] += mv4(x0, x1, x2, x3, w4(min(r0 + 5u, last), c, fmt));
            acc[6] += mv4(x0, x1, x2, x3, w4(min(r0 + 6u, last), c, fmt));
            acc[7] += mv4(x0, x1, x2, x3, w4(min(r0 + 7u, last), c, fmt));
        }
        workgroupBarrier();
    }
    // acc[r]: row r0 + r's tokens t0 + 4 ty .. + 4 (lib/mmout.wgsl).
    let t = t0 + ty * 4u;
    store_tok4(t, r0, acc[0]);
    store_tok4(t, r0 + 1u, acc[1]);
    store_tok4(t, r0 + 2u, acc[2]);
    store_tok4(t, r0 + 3u, acc[3]);
    store_tok4(t, r0 + 4u, acc[4]);
    store_tok4(t, r0 + 5u, acc[5]);
    store_tok4(t, r0 + 6u, acc[6]);
    store_tok4(t, r0 + 7u, acc[7]);
}

@compute @workgroup_size(WG)
fn matmul_f32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    matmul(wid.x + wid.y * nwg.x, lid, F32);
}

@compute @workgroup_size(WG)
fn matmul_f16(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    matmul(wid.x + wid.y * nwg.x, lid, F16);
}
