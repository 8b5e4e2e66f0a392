// matmul_q_sg.wgsl: out[t, r] = sum_c x[t, c] * W[r, c] with W in Q4_0 / Q4_1 /
// Q8_0 planes, using subgroup operations. Uses lib/qblock.wgsl.
//
// Each invocation owns whole weight rows, so it streams its rows' packed
// codes once and needs no reduction; every invocation of the workgroup works
// on the same token(s), so one 32-column x block is loaded by a few lanes of
// each subgroup and broadcast to the rest. Why this shape: on llvmpipe
// (lavapipe) every load whose address is not a compile-time constant becomes
// a scalar loop over the SIMD lanes (about 40 instructions per lane for a
// vec4), so the kernels are bound by load instructions, not bytes: a
// broadcast is a register shuffle, and streaming a row per lane costs one
// vec4 load per 32 Q4 weights, the floor. Straight-line code only: llvmpipe
// runs both sides of every branch with masks, and its loops cost a mask
// test per iteration.

const WG: u32 = 64u;

// Lanes that load an x block together: 4 is valid for every subgroup size
// (>= 4 in WebGPU); 8 (one load per lane instead of two) needs subgroups of
// at least 8 lanes. Set by matmul.rs.
override XL: u32 = 4u;

struct XBlock {
    v: array<vec4<f32>, 8>,
}

// x vec4s base .. base + 8 (one 32-column block of one token) in every lane.
// All lanes of the subgroup must pass the same `base`.
fn x_block(base: u32, lane: u32) -> XBlock {
    var b: XBlock;
    if XL == 8u {
        let v = x[base + (lane & 7u)];
        b.v[0] = subgroupBroadcast(v, 0u);
        b.v[1] = subgroupBroadcast(v, 1u);
        b.v[2] = subgroupBroadcast(v, 2u);
        b.v[3] = subgroupBroadcast(v, 3u);
        b.v[4] = subgroupBroadcast(v, 4u);
        b.v[5] = subgroupBroadcast(v, 5u);
        b.v[6] = subgroupBroadcast(v, 6u);
        b.v[7] = subgroupBroadcast(v, 7u);
    } else {
        let v0 = x[base + (lane & 3u)];
        let v1 = x[base + 4u + (lane & 3u)];
        b.v[0] = subgroupBroadcast(v0, 0u);
        b.v[1] = subgroupBroadcast(v0, 1u);
        b.v[2] = subgroupBroadcast(v0, 2u);
        b.v[3] = subgroupBroadcast(v0, 3u);
        b.v[4] = subgroupBroadcast(v1, 0u);
        b.v[5] = subgroupBroadcast(v1, 1u);
        b.v[6] = subgroupBroadcast(v1, 2u);
        b.v[7] = subgroupBroadcast(v1, 3u);
    }
    return b;
}

// ---------------------------------------------------------------------------
// matvec: one token; invocation i computes rows (wg * WG + i) * R .. + R.

// Rows per invocation: 1, 2 or 4 (set by matmul.rs from the row count).
override R: u32 = 4u;

// Q4 codes masked in place: component k of nibs_lo / nibs_hi is nibble k (or
// 4 + k) of the word times 16^k, except nibble 7, shifted down (a mask would
// leave it above i32's range). x is pre-scaled to match (X_LO, X_HI), which
// saves a shift per weight; the products are exact, so nothing is lost.
fn nibs_lo(w: u32) -> vec4<f32> {
    return vec4<f32>(vec4<i32>(vec4<u32>(w) & vec4<u32>(0xfu, 0xf0u, 0xf00u, 0xf000u)));
}
fn nibs_hi(w: u32) -> vec4<f32> {
    return vec4<f32>(vec4<i32>(vec4<u32>(w & 0xf0000u, w & 0xf00000u, w & 0xf000000u, w >> 28u)));
}
const X_LO = vec4<f32>(1.0, 0.0625, 0.00390625, 0.000244140625);
const X_HI = vec4<f32>(0.0000152587890625, 9.5367431640625e-7, 5.9604644775390625e-8, 1.0);

// sum(q x) over one block with x as prepared by matvec (Q4: pre-scaled).
// Four independent fma chains (the vec4 components) instead of one.
fn qdot(b: WBlock, xs: XBlock, fmt: u32) -> f32 {
    var a: vec4<f32>;
    if fmt == Q8_0 {
        a = byte4(b.lo.x) * xs.v[0];
        a = fma(byte4(b.lo.y), xs.v[1], a);
        a = fma(byte4(b.lo.z), xs.v[2], a);
        a = fma(byte4(b.lo.w), xs.v[3], a);
        a = fma(byte4(b.hi.x), xs.v[4], a);
        a = fma(byte4(b.hi.y), xs.v[5], a);
        a = fma(byte4(b.hi.z), xs.v[6], a);
        a = fma(byte4(b.hi.w), xs.v[7], a);
    } else {
        a = nibs_lo(b.lo.x) * xs.v[0];
        a = fma(nibs_hi(b.lo.x), xs.v[1], a);
        a = fma(nibs_lo(b.lo.y), xs.v[2], a);
        a = fma(nibs_hi(b.lo.y), xs.v[3], a);
        a = fma(nibs_lo(b.lo.z), xs.v[4], a);
        a = fma(nibs_hi(b.lo.z), xs.v[5], a);
        a = fma(nibs_lo(b.lo.w), xs.v[6], a);
        a = fma(nibs_hi(b.lo.w), xs.v[7], a);
    }
    return (a.x + a.y) + (a.z + a.w);
}

// d * sum(q x) + m * sum(x) for block `blk` of the weight.
fn block_dot(blk: u32, xs: XBlock, xsum: f32, fmt: u32) -> f32 {
    let b = load_wblock(blk, fmt);
    return fma(b.d, qdot(b, xs, fmt), b.m * xsum);
}

fn matvec(wg: u32, lid: u32, lane: u32, fmt: u32) {
    let row0 = (wg * WG + lid) * R;
    // A subgroup whose rows are all past the end skips the loop; the others
    // clamp their extra rows to the last one (loads stay in bounds, results
    // are not written). The bound is uniform per subgroup, as the broadcasts need.
    let nb = select(0u, p.nb, subgroupAny(row0 < p.rows));
    let last = p.rows - 1u;
    let b0 = min(row0, last) * p.nb;
    let b1 = min(row0 + 1u, last) * p.nb;
    let b2 = min(row0 + 2u, last) * p.nb;
    let b3 = min(row0 + 3u, last) * p.nb;
    let xbase = p.x_row * p.nb * 8u;
    var acc = vec4<f32>(0.0);
    for (var kb = 0u; kb < nb; kb++) {
        var xs = x_block(xbase + kb * 8u, lane);
        let s = ((xs.v[0] + xs.v[1]) + (xs.v[2] + xs.v[3])) + ((xs.v[4] + xs.v[5]) + (xs.v[6] + xs.v[7]));
        let xsum = (s.x + s.y) + (s.z + s.w);
        if fmt != Q8_0 {
            xs.v[0] *= X_LO;
            xs.v[1] *= X_HI;
            xs.v[2] *= X_LO;
            xs.v[3] *= X_HI;
            xs.v[4] *= X_LO;
            xs.v[5] *= X_HI;
            xs.v[6] *= X_LO;
            xs.v[7] *= X_HI;
        }
        acc.x += block_dot(b0 + kb, xs, xsum, fmt);
        if R > 1u {
            acc.y += block_dot(b1 + kb, xs, xsum, fmt);
        }
        if R > 2u {
            acc.z += block_dot(b2 + kb, xs, xsum, fmt);
            acc.w += block_dot(b3 + kb, xs, xsum, fmt);
        }
    }
    for (var i = 0u; i < R; i++) {
        if row0 + i < p.rows {
            out[p.out_col + row0 + i] = acc[i];
        }
    }
}

@compute @workgroup_size(WG)
fn matvec_sg_q4_0(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32, @builtin(subgroup_invocation_id) lane: u32) {
    matvec(wid.x + wid.y * nwg.x, lid, lane, Q4_0);
}

@compute @workgroup_size(WG)
fn matvec_sg_q4_1(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32, @builtin(subgroup_invocation_id) lane: u32) {
    matvec(wid.x + wid.y * nwg.x, lid, lane, Q4_1);
}

@compute @workgroup_size(WG)
fn matvec_sg_q8_0(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32, @builtin(subgroup_invocation_id) lane: u32) {
    matvec(wid.x + wid.y * nwg.x, lid, lane, Q8_0);
}

// ---------------------------------------------------------------------------
// Tiled matmul: a workgroup computes TA tokens x (WG * TB) rows; invocation i
// keeps TB rows (i * TB ..) x TA tokens of accumulators, decodes each weight
// once per block and uses it for all TA tokens; the TA tokens' x blocks are
// shared through the subgroup as in the matvec.

const TA: u32 = 8u;
// Rows per invocation: 4 or 8 (set by matmul.rs from the row count).
override TB: u32 = 8u;

// acc[2r] holds row r's dots with tokens 0..3, acc[2r + 1] with tokens 4..7.
alias Acc = array<vec4<f32>, 16>;
alias Rows = array<WBlock, 8>;
alias Tokens = array<XBlock, TA>;

// acc + (dot(x0, w), dot(x1, w), dot(x2, w), dot(x3, w)), as fma chains.
fn fma_tok(acc: vec4<f32>, x0: vec4<f32>, x1: vec4<f32>, x2: vec4<f32>, x3: vec4<f32>,
           w: vec4<f32>) -> vec4<f32> {
    return vec4<f32>(fma(x0.x, w.x, fma(x0.y, w.y, fma(x0.z, w.z, fma(x0.w, w.w, acc.x)))),
                     fma(x1.x, w.x, fma(x1.y, w.y, fma(x1.z, w.z, fma(x1.w, w.w, acc.y)))),
                     fma(x2.x, w.x, fma(x2.y, w.y, fma(x2.z, w.z, fma(x2.w, w.w, acc.z)))),
                     fma(x3.x, w.x, fma(x3.y, w.y, fma(x3.z, w.z, fma(x3.w, w.w, acc.w)))));
}

// Columns 4q .. 4q + 3 of the block for every (row, token); `q` is a literal
// at each call, so all indexing below is static.
fn mm_step(acc: ptr<function, Acc>, w: ptr<function, Rows>, xt: ptr<function, Tokens>, q: u32, fmt: u32) {
    let x0 = (*xt)[0].v[q];
    let x1 = (*xt)[1].v[q];
    let x2 = (*xt)[2].v[q];
    let x3 = (*xt)[3].v[q];
    let x4 = (*xt)[4].v[q];
    let x5 = (*xt)[5].v[q];
    let x6 = (*xt)[6].v[q];
    let x7 = (*xt)[7].v[q];
    var wv = deq4((*w)[0], q, fmt);
    (*acc)[0] = fma_tok((*acc)[0], x0, x1, x2, x3, wv);
    (*acc)[1] = fma_tok((*acc)[1], x4, x5, x6, x7, wv);
    wv = deq4((*w)[1], q, fmt);
    (*acc)[2] = fma_tok((*acc)[2], x0, x1, x2, x3, wv);
    (*acc)[3] = fma_tok((*acc)[3], x4, x5, x6, x7, wv);
    wv = deq4((*w)[2], q, fmt);
    (*acc)[4] = fma_tok((*acc)[4], x0, x1, x2, x3, wv);
    (*acc)[5] = fma_tok((*acc)[5], x4, x5, x6, x7, wv);
    wv = deq4((*w)[3], q, fmt);
    (*acc)[6] = fma_tok((*acc)[6], x0, x1, x2, x3, wv);
    (*acc)[7] = fma_tok((*acc)[7], x4, x5, x6, x7, wv);
    if TB > 4u {
        wv = deq4((*w)[4], q, fmt);
        (*acc)[8] = fma_tok((*acc)[8], x0, x1, x2, x3, wv);
        (*acc)[9] = fma_tok((*acc)[9], x4, x5, x6, x7, wv);
        wv = deq4((*w)[5], q, fmt);
        (*acc)[10] = fma_tok((*acc)[10], x0, x1, x2, x3, wv);
        (*acc)[11] = fma_tok((*acc)[11], x4, x5, x6, x7, wv);
        wv = deq4((*w)[6], q, fmt);
        (*acc)[12] = fma_tok((*acc)[12], x0, x1, x2, x3, wv);
        (*acc)[13] = fma_tok((*acc)[13], x4, x5, x6, x7, wv);
        wv = deq4((*w)[7], q, fmt);
        (*acc)[14] = fma_tok((*acc)[14], x0, x1, x2, x3, wv);
        (*acc)[15] = fma_tok((*acc)[15], x4, x5, x6, x7, wv);
    }
}

fn matmul(wg: u32, lid: u32, lane: u32, fmt: u32) {
    let t0 = (wg / p.row_tiles) * TA;
    let r0 = ((wg % p.row_tiles) * WG + lid) * TB;
    let nb = select(0u, p.nb, subgroupAny(r0 < p.rows));
    let last = p.rows - 1u;
    var rb: array<u32, 8>;
    rb[0] = min(r0, last) * p.nb;
    rb[1] = min(r0 + 1u, last) * p.nb;
    rb[2] = min(r0 + 2u, last) * p.nb;
    rb[3] = min(r0 + 3u, last) * p.nb;
    rb[4] = min(r0 + 4u, last) * p.nb;
    rb[5] = min(r0 + 5u, last) * p.nb;
    rb[6] = min(r0 + 6u, last) * p.nb;
    rb[7] = min(r0 + 7u, last) * p.nb;
    // Tokens past the step's end repeat the last one; never written.
    let last_t = p.n_tokens - 1u;
    var tb: array<u32, TA>;
    tb[0] = min(t0, last_t) * p.nb * 8u;
    tb[1] = min(t0 + 1u, last_t) * p.nb * 8u;
    tb[2] = min(t0 + 2u, last_t) * p.nb * 8u;
    tb[3] = min(t0 + 3u, last_t) * p.nb * 8u;
    tb[4] = min(t0 + 4u, last_t) * p.nb * 8u;
    tb[5] = min(t0 + 5u, last_t) * p.nb * 8u;
    tb[6] = min(t0 + 6u, last_t) * p.nb * 8u;
    tb[7] = min(t0 + 7u, last_t) * p.nb * 8u;
    var acc: Acc;
    for (var kb = 0u; kb < nb; kb++) {
        var xt: Tokens;
        xt[0] = x_block(tb[0] + kb * 8u, lane);
        xt[1] = x_block(tb[1] + kb * 8u, lane);
        xt[2] = x_block(tb[2] + kb * 8u, lane);
        xt[3] = x_block(tb[3] + kb * 8u, lane);
        xt[4] = x_block(tb[4] + kb * 8u, lane);
        xt[5] = x_block(tb[5] + kb * 8u, lane);
        xt[6] = x_block(tb[6] + kb * 8u, lane);
        xt[7] = x_block(tb[7] + kb * 8u, lane);
        var w: Rows;
        w[0] = load_wblock(rb[0] + kb, fmt);
        w[1] = load_wblock(rb[1] + kb, fmt);
        w[2] = load_wblock(rb[2] + kb, fmt);
        w[3] = load_wblock(rb[3] + kb, fmt);
        if TB > 4u {
            w[4] = load_wblock(rb[4] + kb, fmt);
            w[5] = load_wblock(rb[5] + kb, fmt);
            w[6] = load_wblock(rb[6] + kb, fmt);
            w[7] = load_wblock(rb[7] + kb, fmt);
        }
        mm_step(&acc, &w, &xt, 0u, fmt);
        mm_step(&acc, &w, &xt, 1u, fmt);
        mm_step(&acc, &w, &xt, 2u, fmt);
        mm_step(&acc, &w, &xt, 3u, fmt);
        mm_step(&acc, &w, &xt, 4u, fmt);
        mm_step(&acc, &w, &xt, 5u, fmt);
        mm_step(&acc, &w, &xt, 6u, fmt);
        mm_step(&acc, &w, &xt, 7u, fmt);
    }
    for (var r = 0u; r < TB; r++) {
        for (var a = 0u; a < TA; a++) {
            let t = t0 + a;
            if t < p.n_tokens && r0 + r < p.rows {
                out[t * p.out_stride + p.out_col + r0 + r] = acc[2u * r + a / 4u][a % 4u];
            }
        }
    }
}

@compute @workgroup_size(WG)
fn matmul_sg_q4_0(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32, @builtin(subgroup_invocation_id) lane: u32) {
    matmul(wid.x + wid.y * nwg.x, lid, lane, Q4_0);
}

@compute @workgroup_size(WG)
fn matmul_sg_q4_1(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32, @builtin(subgroup_invocation_id) lane: u32) {
    matmul(wid.x + wid.y * nwg.x, lid, lane, Q4_1);
}

@compute @workgroup_size(WG)
fn matmul_sg_q8_0(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32, @builtin(subgroup_invocation_id) lane: u32) {
    matmul(wid.x + wid.y * nwg.x, lid, lane, Q8_0);
}
