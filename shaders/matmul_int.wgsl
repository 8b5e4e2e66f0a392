// matmul_int.wgsl: out[t, r] = xs[t] * sum_b (d[r,b] * sum_c q[t,c] w[r,c] ...)
// with int8 activation codes (act_quant) against Q8_0 / Q4_0 / Q4_1 weight
// planes: per 32-column block an exact i32 dot (dot4I8Packed), then an f32
// epilogue with the block's scale and min (lib/imatmul.wgsl has the math).
// Uses lib/f16.wgsl and lib/imatmul.wgsl.
//
// Shapes as the float kernels (lib/qmatmul.wgsl, see there for why): an
// invocation owns whole weight rows; the mat-vec keeps R rows, the tiled
// kernel TA tokens x TB rows. An x block is two vec4 loads here (32 bytes
// against 128 of f32), its lane sum computed once and shared by every row.
// Q4 nibbles are widened to int8 lanes per row (spread4); the alternative,
// reordering x into the nibbles' even / odd order once per token, costs
// more in the tiled kernel, where 8 tokens share each row's block.

@group(0) @binding(3) var<storage, read> codes: array<vec4<u32>>;

const Q4_0: u32 = 0u;
const Q4_1: u32 = 1u;
const Q8_0: u32 = 2u;

// A weight block as int8 lanes with its scale d and centred min mc
// (Q4_1: m + 8 d; Q4_0: 0, as w = d (q - 8); Q8_0: 0).
struct WBlock {
    w: Lanes,
    d: f32,
    mc: f32,
}

// `blk` = row * nb + block; `fmt` is a literal at every call, so the
// branches fold when the pipeline is compiled.
fn load_wblock(blk: u32, fmt: u32) -> WBlock {
    var b: WBlock;
    b.d = f16_at(scales[blk >> 1u], blk);
    b.mc = 0.0;
    if fmt == Q8_0 {
        b.w = Lanes(codes[2u * blk], codes[2u * blk + 1u]);
    } else {
        b.w = nib_lanes(codes[blk]);
        if fmt == Q4_1 {
            b.mc = fma(8.0, b.d, f16_at(mins[blk >> 1u], blk));
        }
    }
    return b;
}

// The block's f32 contribution for a token block x with lane sum xs.
fn block_out(b: WBlock, x: Lanes, xs: i32, fmt: u32) -> f32 {
    let dq = idot(b.w, x);
    if fmt == Q8_0 {
        return b.d * f32(dq);
    }
    return group_out(dq, xs, 8, b.d, b.mc);
}

// Q8_0's codes are signed: no lane sum needed.
fn x_sum(x: Lanes, fmt: u32) -> i32 {
    if fmt == Q8_0 {
        return 0;
    }
    return lane_sum(x);
}

// ---------------------------------------------------------------------------
// matvec: one token; invocation i computes rows (wg * WG + i) * R .. + R.

// Rows per invocation: 1, 2 or 4 (set by matmul_int.rs from the row count).
override R: u32 = 4u;

fn matvec(wg: u32, lid: u32, fmt: u32) {
    let row0 = (wg * WG + lid) * R;
    // Rows past the end clamp to the last one (loads stay in bounds, results
    // are not written); invocations with none skip the loop.
    let nb = select(0u, p.nb, row0 < p.rows);
    let last = p.rows - 1u;
    let b0 = min(row0, last) * p.nb;
    let b1 = min(row0 + 1u, last) * p.nb;
    let b2 = min(row0 + 2u, last) * p.nb;
    let b3 = min(row0 + 3u, last) * p.nb;
    var acc = vec4<f32>(0.0);
    for (var kb = 0u; kb < nb; kb++) {
        let x = x_lanes(p.x_row, kb);
        let xs = x_sum(x, fmt);
        acc.x += block_out(load_wblock(b0 + kb, fmt), x, xs, fmt);
        if R > 1u {
            acc.y += block_out(load_wblock(b1 + kb, fmt), x, xs, fmt);
        }
        if R > 2u {
            acc.z += block_out(load_wblock(b2 + kb, fmt), x, xs, fmt);
            acc.w += block_out(load_wblock(b3 + kb, fmt), x, xs, fmt);
        }
    }
    store_rows(row0, xscale[p.x_row] * acc);
}

// ---------------------------------------------------------------------------
// Tiled matmul: a workgroup computes TA tokens x (WG * TB) rows; invocation i
// keeps TB rows (i * TB ..) x TA tokens of accumulators and widens each
// weight block once for all TA tokens.

const TA: u32 = 8u;
const TB: u32 = 4u;

// acc[2r] holds row r's sums with tokens 0..3, acc[2r + 1] with tokens 4..7.
alias Acc = array<vec4<f32>, 8>;
alias Tokens = array<Lanes, TA>;

// Row block b against tokens t0 .. t0 + 3 (t0 = 0 or 4, a literal).
fn tok4(b: WBlock, xt: ptr<function, Tokens>, xs: vec4<i32>, t0: u32, fmt: u32) -> vec4<f32> {
    return vec4<f32>(block_out(b, (*xt)[t0], xs.x, fmt), block_out(b, (*xt)[t0 + 1u], xs.y, fmt),
                     block_out(b, (*xt)[t0 + 2u], xs.z, fmt), block_out(b, (*xt)[t0 + 3u], xs.w, fmt));
}

fn matmul(wg: u32, lid: u32, fmt: u32) {
    let t0 = (wg / p.row_tiles) * TA;
    let r0 = ((wg % p.row_tiles) * WG + lid) * TB;
    let nb = select(0u, p.nb, r0 < p.rows);
    let last = p.rows - 1u;
    let rb0 = min(r0, last) * p.nb;
    let rb1 = min(r0 + 1u, last) * p.nb;
    let rb2 = min(r0 + 2u, last) * p.nb;
    let rb3 = min(r0 + 3u, last) * p.nb;
    // Tokens past the step's end repeat the last one; never written.
    let last_t = p.n_tokens - 1u;
    var tk: array<u32, TA>;
    for (var a = 0u; a < TA; a++) {
        tk[a] = min(t0 + a, last_t);
    }
    var acc: Acc;
    for (var kb = 0u; kb < nb; kb++) {
        var xt: Tokens;
        xt[0] = x_lanes(tk[0], kb);
        xt[1] = x_lanes(tk[1], kb);
        xt[2] = x_lanes(tk[2], kb);
        xt[3] = x_lanes(tk[3], kb);
        xt[4] = x_lanes(tk[4], kb);
        xt[5] = x_lanes(tk[5], kb);
        xt[6] = x_lanes(tk[6], kb);
        xt[7] = x_lanes(tk[7], kb);
        let xs0 = vec4<i32>(x_sum(xt[0], fmt), x_sum(xt[1], fmt), x_sum(xt[2], fmt), x_sum(xt[3], fmt));
        let xs1 = vec4<i32>(x_sum(xt[4], fmt), x_sum(xt[5], fmt), x_sum(xt[6], fmt), x_sum(xt[7], fmt));
        var w = load_wblock(rb0 + kb, fmt);
        acc[0] += tok4(w, &xt, xs0, 0u, fmt);
        acc[1] += tok4(w, &xt, xs1, 4u, fmt);
        w = load_wblock(rb1 + kb, fmt);
        acc[2] += tok4(w, &xt, xs0, 0u, fmt);
        acc[3] += tok4(w, &xt, xs1, 4u, fmt);
        w = load_wblock(rb2 + kb, fmt);
        acc[4] += tok4(w, &xt, xs0, 0u, fmt);
        acc[5] += tok4(w, &xt, xs1, 4u, fmt);
        w = load_wblock(rb3 + kb, fmt);
        acc[6] += tok4(w, &xt, xs0, 0u, fmt);
        acc[7] += tok4(w, &xt, xs1, 4u, fmt);
    }
    store_tile(t0, r0, scale_tile(acc, t0));
}

// ---------------------------------------------------------------------------

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
