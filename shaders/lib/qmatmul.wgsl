// lib/qmatmul.wgsl: the block-format matmul kernels shared by matmul_q.wgsl
// and matmul_q_sg.wgsl (uses lib/qblock.wgsl, fma_tok and the nibble helpers from lib/tiles.wgsl, and x_block / any_lane from
// lib/xload.wgsl or lib/xload_sg.wgsl: the two shaders differ only in how
// invocations share the x loads, directly or through subgroup broadcasts).
//
// Each invocation owns whole weight rows, so it streams its rows' packed
// codes once and needs no reduction, and all invocations of a workgroup work
// on the same token(s). Why this shape: on llvmpipe (lavapipe) every load
// whose address is not a compile-time constant becomes a scalar loop over the
// SIMD lanes (about 40 instructions per lane for a vec4), so the kernels are
// bound by load instructions, not bytes: one vec4 of codes per 32 Q4 weights
// is the floor, and x is loaded once per subgroup and broadcast. Straight-line
// code only: llvmpipe runs both sides of every branch with masks, and its
// loops cost a mask test per iteration. On GPUs the row-per-invocation reads
// are uncoalesced but each 16-byte load is used whole and the rest of the
// line by the next blocks.

const WG: u32 = 64u;

// ---------------------------------------------------------------------------
// matvec: one token; invocation i computes rows (wg * WG + i) * R .. + R.

// Rows per invocation: 1, 2 or 4 (set by matmul.rs from the row count);
// each x block serves R rows.
override R: u32 = 4u;

// The formats whose codes are plain nibbles (nib_dot's layout).
fn is_q4(fmt: u32) -> bool {
    return fmt == Q4_0 || fmt == Q4_1 || fmt == Q4_K;
}

// sum(q x) over one block with x as prepared by prep_x (Q4: pre-scaled).
// Four independent accumulation chains (the vec4 components) instead of one.
fn qdot(b: WBlock, xs: XBlock, fmt: u32) -> f32 {
    if is_q4(fmt) {
        return nib_dot(b.c[0], xs);
    }
    var a = codes4(b, 0u, fmt) * xs.v[0];
    a = fma(codes4(b, 1u, fmt), xs.v[1], a);
    a = fma(codes4(b, 2u, fmt), xs.v[2], a);
    a = fma(codes4(b, 3u, fmt), xs.v[3], a);
    a = fma(codes4(b, 4u, fmt), xs.v[4], a);
    a = fma(codes4(b, 5u, fmt), xs.v[5], a);
    a = fma(codes4(b, 6u, fmt), xs.v[6], a);
    a = fma(codes4(b, 7u, fmt), xs.v[7], a);
    return (a.x + a.y) + (a.z + a.w);
}

// sum(q x) over each half of a block (the formats with a scale per 16).
fn qdot_halves(b: WBlock, xs: XBlock, fmt: u32) -> vec2<f32> {
    var a = codes4(b, 0u, fmt) * xs.v[0];
    a = fma(codes4(b, 1u, fmt), xs.v[1], a);
    a = fma(codes4(b, 2u, fmt), xs.v[2], a);
    a = fma(codes4(b, 3u, fmt), xs.v[3], a);
    var h = codes4(b, 4u, fmt) * xs.v[4];
    h = fma(codes4(b, 5u, fmt), xs.v[5], h);
    h = fma(codes4(b, 6u, fmt), xs.v[6], h);
    h = fma(codes4(b, 7u, fmt), xs.v[7], h);
    return vec2<f32>((a.x + a.y) + (a.z + a.w), (h.x + h.y) + (h.z + h.w));
}

// d * sum(q x) + m * sum(x) for block `blk` of the weight (per half where
// the format scales halves).
fn block_dot(blk: u32, xp: XPrep, fmt: u32) -> f32 {
    return wblock_dot(load_wblock(blk, fmt), xp, fmt);
}

fn wblock_dot(b: WBlock, xp: XPrep, fmt: u32) -> f32 {
    if is_float(fmt) {
        return qdot(b, xp.xs, fmt);
    }
    if kq_halves(fmt) {
        let q = qdot_halves(b, xp.xs, fmt);
        return fma(b.d, q.x, fma(b.d2, q.y, fma(b.m, xp.lo, b.m2 * (xp.sum - xp.lo))));
    }
    return fma(b.d, qdot(b, xp.xs, fmt), b.m * xp.sum);
}

// Blocks blk and blk + 1 of a quantized format (blk even, so one scale word
// and one min word hold both): half the scale loads of two block_dot calls.
fn block_dot2(blk: u32, xs0: XBlock, xsum0: f32, xs1: XBlock, xsum1: f32, fmt: u32) -> f32 {
    let d = unpack2x16float(scales[blk >> 1u]);
    var m = vec2<f32>(0.0);
    if fmt == Q4_0 {
        m = -8.0 * d;
    } else if fmt == Q4_1 {
        m = unpack2x16float(mins[blk >> 1u]);
    }
    var b0: WBlock;
    var b1: WBlock;
    load_codes(&b0, blk, fmt);
    load_codes(&b1, blk + 1u, fmt);
    return fma(d.x, qdot(b0, xs0, fmt), fma(d.y, qdot(b1, xs1, fmt), m.x * xsum0 + m.y * xsum1));
}

// An x block ready for qdot (Q4: pre-scaled), its plain sum and (for the
// formats that scale halves) the sum of its first half.
struct XPrep {
    xs: XBlock,
    sum: f32,
    lo: f32,
}

fn prep_x(b: XBlock, fmt: u32) -> XPrep {
    var r: XPrep;
    r.xs = b;
    r.sum = x_sum(b);
    r.lo = 0.0;
    if kq_halves(fmt) {
        let s = (b.v[0] + b.v[1]) + (b.v[2] + b.v[3]);
        r.lo = (s.x + s.y) + (s.z + s.w);
    }
    if is_q4(fmt) {
        r.xs = nib_scale(b);
    }
    return r;
}

// The first block of weight rows r0 .. r0 + 3 (rows past the end clamped
// to the last one: loads stay in bounds, results are not written).
fn row_blocks4(r0: u32) -> vec4<u32> {
    let last = p.rows - 1u;
    return min(vec4<u32>(r0) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(last)) * p.nb;
}

// The first x vec4 of tokens t0 .. t0 + 3 of a tiled step (tokens past the
// step's end repeat the last one; never written).
fn token_rows4(t0: u32) -> vec4<u32> {
    let last = p.n_tokens - 1u;
    return min(vec4<u32>(t0) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(last)) * (p.nb * 8u);
}

// What one mat-vec invocation works on: its first row (rows row0 .. row0 +
// R), the first block of each of its R rows (rows past the end clamped to
// the last one: loads stay in bounds, results are not written), the blocks
// it loops over (0 where the whole subgroup's rows are past the end, which
// keeps the bound uniform for the broadcasts) and its token's x.
struct MvRows {
    row0: u32,
    b: vec4<u32>,
    nb: u32,
    xbase: u32,
}

fn mv_rows(wg: u32, lid: u32) -> MvRows {
    var s: MvRows;
    s.row0 = (wg * WG + lid) * R;
    s.nb = select(0u, p.nb, any_lane(s.row0 < p.rows));
    s.b = row_blocks4(s.row0);
    s.xbase = p.x_row * p.nb * 8u;
    return s;
}

// One block a step. Each kind of mat-vec is a function of its own, called
// by its own entry points (not a branch on an override): lavapipe turns
// all the code an entry point reaches into NIR before it folds constants,
// and a dead second loop tripled a pipeline's build time.
fn matvec(wg: u32, lid: u32, lane: u32, sgs: u32, fmt: u32) {
    norm_prologue(p.x_row, lid);
    let s = mv_rows(wg, lid);
    var acc = vec4<f32>(0.0);
    for (var kb = 0u; kb < s.nb; kb++) {
        let x0 = prep_x(x_block_normed(s.xbase, kb * 8u, lane, sgs), fmt);
        acc.x += block_dot(s.b.x + kb, x0, fmt);
        if R > 1u {
            acc.y += block_dot(s.b.y + kb, x0, fmt);
        }
        if R > 2u {
            acc.z += block_dot(s.b.z + kb, x0, fmt);
            acc.w += block_dot(s.b.w + kb, x0, fmt);
        }
    }
    store_rows(s.row0, norm_vec(acc));
}

// Two blocks a step, for the formats with one scale (and min) per block
// when a row has an even count, so a row's blocks pair up in scale words
// (the `matvec2_` entry points, picked by matmul.rs).
fn matvec2(wg: u32, lid: u32, lane: u32, sgs: u32, fmt: u32) {
    norm_prologue(p.x_row, lid);
    let s = mv_rows(wg, lid);
    var acc = vec4<f32>(0.0);
    for (var kb = 0u; kb < s.nb; kb += 2u) {
        let x0 = prep_x(x_block_normed(s.xbase, kb * 8u, lane, sgs), fmt);
        let x1 = prep_x(x_block_normed(s.xbase, kb * 8u + 8u, lane, sgs), fmt);
        acc.x += block_dot2(s.b.x + kb, x0.xs, x0.sum, x1.xs, x1.sum, fmt);
        if R > 1u {
            acc.y += block_dot2(s.b.y + kb, x0.xs, x0.sum, x1.xs, x1.sum, fmt);
        }
        if R > 2u {
            acc.z += block_dot2(s.b.z + kb, x0.xs, x0.sum, x1.xs, x1.sum, fmt);
            acc.w += block_dot2(s.b.w + kb, x0.xs, x0.sum, x1.xs, x1.sum, fmt);
        }
    }
    store_rows(s.row0, norm_vec(acc));
}

// The super-block types' mat-vec (lib/kblock.wgsl; their `matvec_` entry
// points): each row's scale words are loaded once per super-block of 8
// blocks and decoded in registers for each block, instead of loaded again
// for every block.
fn matvec_super(wg: u32, lid: u32, lane: u32, sgs: u32, fmt: u32) {
    norm_prologue(p.x_row, lid);
    let s = mv_rows(wg, lid);
    var acc = vec4<f32>(0.0);
    for (var kb = 0u; kb < s.nb; kb += 8u) {
        let s0 = kq_super((s.b.x + kb) >> 3u, fmt);
        var s1 = s0;
        var s2 = s0;
        var s3 = s0;
        if R > 1u {
            s1 = kq_super((s.b.y + kb) >> 3u, fmt);
        }
        if R > 2u {
            s2 = kq_super((s.b.z + kb) >> 3u, fmt);
            s3 = kq_super((s.b.w + kb) >> 3u, fmt);
        }
        for (var j = 0u; j < 8u; j++) {
            let k = kb + j;
            let x0 = prep_x(x_block_normed(s.xbase, k * 8u, lane, sgs), fmt);
            acc.x += wblock_dot(kq_wblock(s.b.x + k, kq_sub_scales(s0, j, fmt), fmt), x0, fmt);
            if R > 1u {
                acc.y += wblock_dot(kq_wblock(s.b.y + k, kq_sub_scales(s1, j, fmt), fmt), x0, fmt);
            }
            if R > 2u {
                acc.z += wblock_dot(kq_wblock(s.b.z + k, kq_sub_scales(s2, j, fmt), fmt), x0, fmt);
                acc.w += wblock_dot(kq_wblock(s.b.w + k, kq_sub_scales(s3, j, fmt), fmt), x0, fmt);
            }
        }
    }
    store_rows(s.row0, norm_vec(acc));
}

// ---------------------------------------------------------------------------
// Tiled matmul: a workgroup computes TA tokens x (WG * TB) rows; invocation i
// keeps TB rows (i * TB ..) x TA tokens of accumulators, decodes each weight
// once per block and uses it for all TA tokens. Per block an invocation
// loads TB rows' codes and the TA tokens' x blocks (shared as in the matvec):
// TA = 8, TB = 4 balances the two on llvmpipe (a row's codes and scales cost
// about 1.6 times a token's x block); TB = 8 spills registers there.

const TA: u32 = 8u;
const TB: u32 = 4u;

// acc[2r] holds row r's dots with tokens 0..3, acc[2r + 1] with tokens 4..7.
alias Acc = array<vec4<f32>, 8>;
alias Rows = array<WBlock, TB>;
alias Tokens = array<XBlock, TA>;

// Columns 4q .. 4q + 3 of the block for every (row, token); `q` is a literal
// at each call, so all indexing below is static (dynamic indexes into local
// arrays become per-lane gathers on llvmpipe).
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
}

fn matmul(wg: u32, lid: u32, lane: u32, sgs: u32, fmt: u32) {
    let t0 = (wg / p.row_tiles) * TA;
    let r0 = ((wg % p.row_tiles) * WG + lid) * TB;
    let nb = select(0u, p.nb, any_lane(r0 < p.rows));
    let rb = row_blocks4(r0);
    let ta = token_rows4(t0);
    let tb = token_rows4(t0 + 4u);
    var acc: Acc;
    for (var kb = 0u; kb < nb; kb++) {
        let xo = kb * 8u;
        var xt: Tokens;
        xt[0] = x_block(ta.x + xo, lane, sgs);
        xt[1] = x_block(ta.y + xo, lane, sgs);
        xt[2] = x_block(ta.z + xo, lane, sgs);
        xt[3] = x_block(ta.w + xo, lane, sgs);
        xt[4] = x_block(tb.x + xo, lane, sgs);
        xt[5] = x_block(tb.y + xo, lane, sgs);
        xt[6] = x_block(tb.z + xo, lane, sgs);
        xt[7] = x_block(tb.w + xo, lane, sgs);
        var w: Rows;
        w[0] = load_wblock(rb.x + kb, fmt);
        w[1] = load_wblock(rb.y + kb, fmt);
        w[2] = load_wblock(rb.z + kb, fmt);
        w[3] = load_wblock(rb.w + kb, fmt);
        mm_step(&acc, &w, &xt, 0u, fmt);
        mm_step(&acc, &w, &xt, 1u, fmt);
        mm_step(&acc, &w, &xt, 2u, fmt);
        mm_step(&acc, &w, &xt, 3u, fmt);
        mm_step(&acc, &w, &xt, 4u, fmt);
        mm_step(&acc, &w, &xt, 5u, fmt);
        mm_step(&acc, &w, &xt, 6u, fmt);
        mm_step(&acc, &w, &xt, 7u, fmt);
    }
    store_tile(t0, r0, acc);
}

// ---------------------------------------------------------------------------
// Small tiled matmul, for steps of 2 to 4 tokens (a batched decode step of
// a few sequences, a short prompt): a workgroup computes TA4 tokens x (WG *
// TB4) rows, acc[r] holding row r's dots with the 4 tokens. An 8-token tile
// would load and multiply as many x blocks again for tokens that are not
// there; here each weight block, loaded once, serves the 4 tokens, and each
// token's x block 4 rows. TB4 = 4 rather than 8: 7% less GPU time in a
// 4-sequence decode step on lavapipe (44.7 against 48.0 ms of its matmuls).
// It reads x as the 8-token tile does, normed by its own pass (see MatVecIn
// in matmul.rs for what folding the norm in cost here).

const TA4: u32 = 4u;
const TB4: u32 = 4u;

alias Acc4 = array<vec4<f32>, TB4>;
alias Rows4 = array<WBlock, TB4>;
alias Tokens4 = array<XBlock, TA4>;

// Columns 4q .. 4q + 3 of the block for every (row, token); `q` is a literal
// at each call (see mm_step).
fn mm4_step(acc: ptr<function, Acc4>, w: ptr<function, Rows4>, xt: ptr<function, Tokens4>, q: u32, fmt: u32) {
    let x0 = (*xt)[0].v[q];
    let x1 = (*xt)[1].v[q];
    let x2 = (*xt)[2].v[q];
    let x3 = (*xt)[3].v[q];
    (*acc)[0] = fma_tok((*acc)[0], x0, x1, x2, x3, deq4((*w)[0], q, fmt));
    (*acc)[1] = fma_tok((*acc)[1], x0, x1, x2, x3, deq4((*w)[1], q, fmt));
    (*acc)[2] = fma_tok((*acc)[2], x0, x1, x2, x3, deq4((*w)[2], q, fmt));
    (*acc)[3] = fma_tok((*acc)[3], x0, x1, x2, x3, deq4((*w)[3], q, fmt));
}

fn matmul4(wg: u32, lid: u32, lane: u32, sgs: u32, fmt: u32) {
    let t0 = (wg / p.row_tiles) * TA4;
    let r0 = ((wg % p.row_tiles) * WG + lid) * TB4;
    let nb = select(0u, p.nb, any_lane(r0 < p.rows));
    let rb = row_blocks4(r0);
    let ta = token_rows4(t0);
    var acc: Acc4;
    for (var kb = 0u; kb < nb; kb++) {
        let xo = kb * 8u;
        var xt: Tokens4;
        xt[0] = x_block(ta.x + xo, lane, sgs);
        xt[1] = x_block(ta.y + xo, lane, sgs);
        xt[2] = x_block(ta.z + xo, lane, sgs);
        xt[3] = x_block(ta.w + xo, lane, sgs);
        var w: Rows4;
        w[0] = load_wblock(rb.x + kb, fmt);
        w[1] = load_wblock(rb.y + kb, fmt);
        w[2] = load_wblock(rb.z + kb, fmt);
        w[3] = load_wblock(rb.w + kb, fmt);
        mm4_step(&acc, &w, &xt, 0u, fmt);
        mm4_step(&acc, &w, &xt, 1u, fmt);
        mm4_step(&acc, &w, &xt, 2u, fmt);
        mm4_step(&acc, &w, &xt, 3u, fmt);
        mm4_step(&acc, &w, &xt, 4u, fmt);
        mm4_step(&acc, &w, &xt, 5u, fmt);
        mm4_step(&acc, &w, &xt, 6u, fmt);
        mm4_step(&acc, &w, &xt, 7u, fmt);
    }
    store_tile4(t0, r0, acc);
}
