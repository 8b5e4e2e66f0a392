// matmul_q.wgsl: out[t, r] = sum_c x[t, c] * W[r, c] with W in Q4_0 / Q4_1 /
// Q8_0 planes, for devices without subgroup operations (matmul_q_sg.wgsl is
// the faster path where they exist). Uses lib/qblock.wgsl (formats, bindings).

const WG: u32 = 64u;

// ---------------------------------------------------------------------------
// matvec: one token. Thread (g, l) of the workgroup computes R rows
// (row0 = g*R ..) over blocks l, l + L, l + 2L, ...; the L partial sums of a
// row are added through workgroup memory at the end.

// Threads per row; a power of two dividing nb (set by matmul.rs).
override L: u32 = 1u;
// Rows per thread (the four components of `acc`).
const R: u32 = 4u;

var<workgroup> part: array<vec4<f32>, WG>;

struct XBlock {
    v: array<vec4<f32>, 8>,
    sum: f32,
}

fn load_xblock(base: u32) -> XBlock {
    var b: XBlock;
    b.v[0] = x[base];
    b.v[1] = x[base + 1u];
    b.v[2] = x[base + 2u];
    b.v[3] = x[base + 3u];
    b.v[4] = x[base + 4u];
    b.v[5] = x[base + 5u];
    b.v[6] = x[base + 6u];
    b.v[7] = x[base + 7u];
    let s = (b.v[0] + b.v[1]) + (b.v[2] + b.v[3]) + (b.v[4] + b.v[5]) + (b.v[6] + b.v[7]);
    b.sum = s.x + s.y + s.z + s.w;
    return b;
}

// d * sum(q x) + m * sum(x) over block `blk` of the weight.
fn block_dot(blk: u32, xb: XBlock, fmt: u32) -> f32 {
    let b = load_wblock(blk, fmt);
    let q = dot(codes4(b, 0u, fmt), xb.v[0]) + dot(codes4(b, 1u, fmt), xb.v[1])
          + dot(codes4(b, 2u, fmt), xb.v[2]) + dot(codes4(b, 3u, fmt), xb.v[3])
          + dot(codes4(b, 4u, fmt), xb.v[4]) + dot(codes4(b, 5u, fmt), xb.v[5])
          + dot(codes4(b, 6u, fmt), xb.v[6]) + dot(codes4(b, 7u, fmt), xb.v[7]);
    return b.d * q + b.m * xb.sum;
}

fn matvec(wg: u32, lid: u32, fmt: u32) {
    let g = lid / L;
    let l = lid % L;
    let rows_per_wg = (WG / L) * R;
    let row0 = wg * rows_per_wg + g * R;
    // Rows past the end read the last row (no divergent branch), never written.
    let last = p.rows - 1u;
    let b0 = min(row0, last) * p.nb;
    let b1 = min(row0 + 1u, last) * p.nb;
    let b2 = min(row0 + 2u, last) * p.nb;
    let b3 = min(row0 + 3u, last) * p.nb;
    let xbase = p.x_row * p.nb * 8u;
    var acc = vec4<f32>(0.0);
    for (var kb = l; kb < p.nb; kb += L) {
        let xb = load_xblock(xbase + kb * 8u);
        acc += vec4<f32>(block_dot(b0 + kb, xb, fmt), block_dot(b1 + kb, xb, fmt),
                         block_dot(b2 + kb, xb, fmt), block_dot(b3 + kb, xb, fmt));
    }
    part[lid] = acc;
    workgroupBarrier();
    for (var o = lid; o < rows_per_wg; o += WG) {
        let first = (o / R) * L;
        var s = 0.0;
        for (var j = 0u; j < L; j++) {
            s += part[first + j][o % R];
        }
        let row = wg * rows_per_wg + o;
        if row < p.rows {
            out[p.out_col + row] = s;
        }
    }
}

@compute @workgroup_size(WG)
fn matvec_q4_0(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    matvec(wid.x + wid.y * nwg.x, lid, Q4_0);
}

@compute @workgroup_size(WG)
fn matvec_q4_1(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    matvec(wid.x + wid.y * nwg.x, lid, Q4_1);
}

@compute @workgroup_size(WG)
fn matvec_q8_0(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    matvec(wid.x + wid.y * nwg.x, lid, Q8_0);
}

// ---------------------------------------------------------------------------
// Tiled matmul: a workgroup computes TM tokens x TN rows of out. Per K block
// the x tile (TM tokens x 32 columns) is staged in workgroup memory; thread
// (ty, tx) keeps 4 tokens (ty*4 ..) x 8 rows (tx*8 ..) of accumulators, one
// vec4 (over its tokens) per row, and dequantizes its rows' codes in
// registers: the packed codes are 4-8x fewer bytes to move than a
// dequantized W tile, and each decoded weight serves 4 tokens.

const TM: u32 = 32u;
const TN: u32 = 64u;

var<workgroup> xs: array<vec4<f32>, 256>; // [TM tokens][8 vec4 of one block]

// (dot(x0, w), .., dot(x3, w)): four tokens' dots with one row's 4 weights.
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
    let rb0 = min(r0, last) * p.nb;
    let rb1 = min(r0 + 1u, last) * p.nb;
    let rb2 = min(r0 + 2u, last) * p.nb;
    let rb3 = min(r0 + 3u, last) * p.nb;
    let rb4 = min(r0 + 4u, last) * p.nb;
    let rb5 = min(r0 + 5u, last) * p.nb;
    let rb6 = min(r0 + 6u, last) * p.nb;
    let rb7 = min(r0 + 7u, last) * p.nb;
    var acc = array<vec4<f32>, 8>();
    for (var kb = 0u; kb < p.nb; kb++) {
        // Stage x[t0 .. t0 + TM, block kb]: 256 vec4, 4 per thread.
        for (var i = 0u; i < 4u; i++) {
            let e = lid + i * WG;
            let t = min(t0 + e / 8u, last_t);
            xs[e] = x[(t * p.nb + kb) * 8u + e % 8u];
        }
        workgroupBarrier();
        let w0 = load_wblock(rb0 + kb, fmt);
        let w1 = load_wblock(rb1 + kb, fmt);
        let w2 = load_wblock(rb2 + kb, fmt);
        let w3 = load_wblock(rb3 + kb, fmt);
        let w4 = load_wblock(rb4 + kb, fmt);
        let w5 = load_wblock(rb5 + kb, fmt);
        let w6 = load_wblock(rb6 + kb, fmt);
        let w7 = load_wblock(rb7 + kb, fmt);
        let xb = ty * 32u;
        for (var kq = 0u; kq < 8u; kq++) {
            let x0 = xs[xb + kq];
            let x1 = xs[xb + 8u + kq];
            let x2 = xs[xb + 16u + kq];
            let x3 = xs[xb + 24u + kq];
            acc[0] += mv4(x0, x1, x2, x3, deq4(w0, kq, fmt));
            acc[1] += mv4(x0, x1, x2, x3, deq4(w1, kq, fmt));
            acc[2] += mv4(x0, x1, x2, x3, deq4(w2, kq, fmt));
            acc[3] += mv4(x0, x1, x2, x3, deq4(w3, kq, fmt));
            acc[4] += mv4(x0, x1, x2, x3, deq4(w4, kq, fmt));
            acc[5] += mv4(x0, x1, x2, x3, deq4(w5, kq, fmt));
            acc[6] += mv4(x0, x1, x2, x3, deq4(w6, kq, fmt));
            acc[7] += mv4(x0, x1, x2, x3, deq4(w7, kq, fmt));
        }
        workgroupBarrier();
    }
    for (var a = 0u; a < 4u; a++) {
        let t = t0 + ty * 4u + a;
        for (var r = 0u; r < 8u; r++) {
            if t < p.n_tokens && r0 + r < p.rows {
                out[t * p.out_stride + p.out_col + r0 + r] = acc[r][a];
            }
        }
    }
}

@compute @workgroup_size(WG)
fn matmul_q4_0(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    matmul(wid.x + wid.y * nwg.x, lid, Q4_0);
}

@compute @workgroup_size(WG)
fn matmul_q4_1(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    matmul(wid.x + wid.y * nwg.x, lid, Q4_1);
}

@compute @workgroup_size(WG)
fn matmul_q8_0(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    matmul(wid.x + wid.y * nwg.x, lid, Q8_0);
}
