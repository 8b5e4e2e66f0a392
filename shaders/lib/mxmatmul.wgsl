// lib/mxmatmul.wgsl: matmul kernels for Mixed weights (SliM-LLM groups: a
// bit width from 1 to 8 per column group, shared by all rows), used by
// matmul_mx.wgsl and matmul_mx_sg.wgsl with fma_tok from lib/tiles.wgsl and
// x_block / any_lane from lib/xload.wgsl or lib/xload_sg.wgsl.
//
// Planes (engine/src/weight.rs): a row's codes are its groups in order, each
// group its 32-column chunks, each chunk exactly `bits` u32 words: 8 words of
// bytes for 8 bits, else segments of 4, 2 and 1 bits (those set in `bits`,
// lowest code bits first), element k of a width-s segment at bit s*k of the
// segment. w = d * q + m with f16 d, m per (row, group). The table holds per
// group its word offset in a row and `bits | chunks << 8`.
//
// Same shapes as lib/qmatmul.wgsl (see there for why): an invocation owns
// whole rows; the mat-vec keeps R rows, the tiled kernel TA tokens x TB rows.
// The width is uniform across the dispatch for a given group, so the
// segment branches never diverge.
// Mirrors engine/src/ops/matmul.rs (MatMulParams, binding order).

struct Params {
    rows: u32,
    cols: u32,
    nb: u32,
    n_tokens: u32,
    x_row: u32,
    out_stride: u32,
    out_col: u32,
    row_tiles: u32,
    n_groups: u32,
    row_words: u32,
    group: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> codes: array<u32>;
@group(0) @binding(3) var<storage, read> scales: array<u32>;
@group(0) @binding(4) var<storage, read> mins: array<u32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;
@group(0) @binding(6) var<storage, read> table: array<u32>;

const WG: u32 = 64u;

// One chunk's code words: a = the 4-bit segment (or words 0..3 of 8-bit
// codes), b = words 4..7 of 8-bit codes, c = the 2-bit segment, d = the
// 1-bit segment.
struct Chunk {
    a: vec4<u32>,
    b: vec4<u32>,
    c: vec2<u32>,
    d: u32,
}

fn load_chunk(base: u32, bits: u32) -> Chunk {
    var ch: Chunk;
    if bits == 8u {
        ch.a = vec4<u32>(codes[base], codes[base + 1u], codes[base + 2u], codes[base + 3u]);
        ch.b = vec4<u32>(codes[base + 4u], codes[base + 5u], codes[base + 6u], codes[base + 7u]);
        return ch;
    }
    var o = base;
    if (bits & 4u) != 0u {
        ch.a = vec4<u32>(codes[o], codes[o + 1u], codes[o + 2u], codes[o + 3u]);
        o += 4u;
    }
    if (bits & 2u) != 0u {
        ch.c = vec2<u32>(codes[o], codes[o + 1u]);
        o += 2u;
    }
    if (bits & 1u) != 0u {
        ch.d = codes[o];
    }
    return ch;
}

// Codes 4k .. 4k + 3 of a chunk as floats (k is a literal at every call, so
// the component picks are static).
fn codes4(ch: Chunk, k: u32, bits: u32) -> vec4<f32> {
    if bits == 8u {
        var w = ch.b[k & 3u];
        if k < 4u {
            w = ch.a[k];
        }
        return vec4<f32>((vec4<u32>(w) >> vec4<u32>(0u, 8u, 16u, 24u)) & vec4<u32>(255u));
    }
    var v = vec4<u32>(0u);
    var shift = 0u;
    if (bits & 4u) != 0u {
        v = (vec4<u32>(ch.a[k >> 1u]) >> (vec4<u32>(0u, 4u, 8u, 12u) + 16u * (k & 1u))) & vec4<u32>(15u);
        shift = 4u;
    }
    if (bits & 2u) != 0u {
        let s = (vec4<u32>(ch.c[k >> 2u]) >> (vec4<u32>(0u, 2u, 4u, 6u) + 8u * (k & 3u))) & vec4<u32>(3u);
        v |= s << vec4<u32>(shift);
        shift += 2u;
    }
    if (bits & 1u) != 0u {
        let s = (vec4<u32>(ch.d) >> (vec4<u32>(0u, 1u, 2u, 3u) + 4u * k)) & vec4<u32>(1u);
        v |= s << vec4<u32>(shift);
    }
    return vec4<f32>(v);
}

// sum(q x) over one chunk, four accumulation chains.
fn chunk_dot(ch: Chunk, bits: u32, xb: XBlock) -> f32 {
    var a = codes4(ch, 0u, bits) * xb.v[0];
    a = fma(codes4(ch, 1u, bits), xb.v[1], a);
    a = fma(codes4(ch, 2u, bits), xb.v[2], a);
    a = fma(codes4(ch, 3u, bits), xb.v[3], a);
    a = fma(codes4(ch, 4u, bits), xb.v[4], a);
    a = fma(codes4(ch, 5u, bits), xb.v[5], a);
    a = fma(codes4(ch, 6u, bits), xb.v[6], a);
    a = fma(codes4(ch, 7u, bits), xb.v[7], a);
    return (a.x + a.y) + (a.z + a.w);
}

fn block_sum(b: XBlock) -> f32 {
    let s = ((b.v[0] + b.v[1]) + (b.v[2] + b.v[3])) + ((b.v[4] + b.v[5]) + (b.v[6] + b.v[7]));
    return (s.x + s.y) + (s.z + s.w);
}

// f16 scale and min of (row, group) index i.
fn scale_at(i: u32) -> f32 {
    return unpack2x16float(scales[i >> 1u])[i & 1u];
}
fn min_at(i: u32) -> f32 {
    return unpack2x16float(mins[i >> 1u])[i & 1u];
}

// ---------------------------------------------------------------------------
// matvec: one token; invocation i computes rows (wg * WG + i) * R .. + R.

override R: u32 = 4u;

fn matvec(wg: u32, lid: u32, lane: u32, sgs: u32) {
    let row0 = (wg * WG + lid) * R;
    // As in lib/qmatmul.wgsl: rows past the end clamp to the last row (loads
    // stay in bounds, nothing is written); whole subgroups past it skip.
    let ng = select(0u, p.n_groups, any_lane(row0 < p.rows));
    let last = p.rows - 1u;
    let r0 = min(row0, last);
    let r1 = min(row0 + 1u, last);
    let r2 = min(row0 + 2u, last);
    let r3 = min(row0 + 3u, last);
    let xbase = p.x_row * p.nb * 8u;
    var acc = vec4<f32>(0.0);
    for (var g = 0u; g < ng; g++) {
        let off = table[2u * g];
        let t = table[2u * g + 1u];
        let bits = t & 0xffu;
        let nch = t >> 8u;
        let xg = xbase + g * (p.group / 4u);
        var dq = vec4<f32>(0.0);
        var xs = 0.0;
        for (var c = 0u; c < nch; c++) {
            let xb = x_block(xg + c * 8u, lane, sgs);
            xs += block_sum(xb);
            let co = off + c * bits;
            dq.x += chunk_dot(load_chunk(r0 * p.row_words + co, bits), bits, xb);
            if R > 1u {
                dq.y += chunk_dot(load_chunk(r1 * p.row_words + co, bits), bits, xb);
            }
            if R > 2u {
                dq.z += chunk_dot(load_chunk(r2 * p.row_words + co, bits), bits, xb);
                dq.w += chunk_dot(load_chunk(r3 * p.row_words + co, bits), bits, xb);
            }
        }
        let s0 = r0 * p.n_groups + g;
        acc.x += fma(scale_at(s0), dq.x, min_at(s0) * xs);
        if R > 1u {
            let s1 = r1 * p.n_groups + g;
            acc.y += fma(scale_at(s1), dq.y, min_at(s1) * xs);
        }
        if R > 2u {
            let s2 = r2 * p.n_groups + g;
            let s3 = r3 * p.n_groups + g;
            acc.z += fma(scale_at(s2), dq.z, min_at(s2) * xs);
            acc.w += fma(scale_at(s3), dq.w, min_at(s3) * xs);
        }
    }
    for (var i = 0u; i < R; i++) {
        if row0 + i < p.rows {
            out[p.out_col + row0 + i] = acc[i];
        }
    }
}

// ---------------------------------------------------------------------------
// Tiled matmul: a workgroup computes TA tokens x (WG * TB) rows; invocation i
// keeps TB rows x TA tokens of accumulators and decodes each chunk of its
// rows once for all TA tokens.

const TA: u32 = 8u;
const TB: u32 = 4u;

alias Acc = array<vec4<f32>, 8>;
alias Tokens = array<XBlock, TA>;

struct RowChunks {
    c0: Chunk,
    c1: Chunk,
    c2: Chunk,
    c3: Chunk,
    d: vec4<f32>,
    m: vec4<f32>,
}

// Columns 4q .. 4q + 3 of the chunk for every (row, token); q is a literal.
fn mx_step(acc: ptr<function, Acc>, w: ptr<function, RowChunks>, xt: ptr<function, Tokens>, q: u32,
           bits: u32) {
    let x0 = (*xt)[0].v[q];
    let x1 = (*xt)[1].v[q];
    let x2 = (*xt)[2].v[q];
    let x3 = (*xt)[3].v[q];
    let x4 = (*xt)[4].v[q];
    let x5 = (*xt)[5].v[q];
    let x6 = (*xt)[6].v[q];
    let x7 = (*xt)[7].v[q];
    var wv = fma(codes4((*w).c0, q, bits), vec4<f32>((*w).d.x), vec4<f32>((*w).m.x));
    (*acc)[0] = fma_tok((*acc)[0], x0, x1, x2, x3, wv);
    (*acc)[1] = fma_tok((*acc)[1], x4, x5, x6, x7, wv);
    wv = fma(codes4((*w).c1, q, bits), vec4<f32>((*w).d.y), vec4<f32>((*w).m.y));
    (*acc)[2] = fma_tok((*acc)[2], x0, x1, x2, x3, wv);
    (*acc)[3] = fma_tok((*acc)[3], x4, x5, x6, x7, wv);
    wv = fma(codes4((*w).c2, q, bits), vec4<f32>((*w).d.z), vec4<f32>((*w).m.z));
    (*acc)[4] = fma_tok((*acc)[4], x0, x1, x2, x3, wv);
    (*acc)[5] = fma_tok((*acc)[5], x4, x5, x6, x7, wv);
    wv = fma(codes4((*w).c3, q, bits), vec4<f32>((*w).d.w), vec4<f32>((*w).m.w));
    (*acc)[6] = fma_tok((*acc)[6], x0, x1, x2, x3, wv);
    (*acc)[7] = fma_tok((*acc)[7], x4, x5, x6, x7, wv);
}

fn matmul(wg: u32, lid: u32, lane: u32, sgs: u32) {
    let t0 = (wg / p.row_tiles) * TA;
    let r0 = ((wg % p.row_tiles) * WG + lid) * TB;
    let ng = select(0u, p.n_groups, any_lane(r0 < p.rows));
    let last = p.rows - 1u;
    let ra = min(r0, last);
    let rb = min(r0 + 1u, last);
    let rc = min(r0 + 2u, last);
    let rd = min(r0 + 3u, last);
    // Tokens past the step's end repeat the last one; never written.
    let last_t = p.n_tokens - 1u;
    let stride = p.nb * 8u;
    let tb0 = min(t0, last_t) * stride;
    let tb1 = min(t0 + 1u, last_t) * stride;
    let tb2 = min(t0 + 2u, last_t) * stride;
    let tb3 = min(t0 + 3u, last_t) * stride;
    let tb4 = min(t0 + 4u, last_t) * stride;
    let tb5 = min(t0 + 5u, last_t) * stride;
    let tb6 = min(t0 + 6u, last_t) * stride;
    let tb7 = min(t0 + 7u, last_t) * stride;
    var acc: Acc;
    for (var g = 0u; g < ng; g++) {
        let off = table[2u * g];
        let t = table[2u * g + 1u];
        let bits = t & 0xffu;
        let nch = t >> 8u;
        var w: RowChunks;
        let sa = ra * p.n_groups + g;
        let sb = rb * p.n_groups + g;
        let sc = rc * p.n_groups + g;
        let sd = rd * p.n_groups + g;
        w.d = vec4<f32>(scale_at(sa), scale_at(sb), scale_at(sc), scale_at(sd));
        w.m = vec4<f32>(min_at(sa), min_at(sb), min_at(sc), min_at(sd));
        for (var c = 0u; c < nch; c++) {
            let xo = g * (p.group / 4u) + c * 8u;
            var xt: Tokens;
            xt[0] = x_block(tb0 + xo, lane, sgs);
            xt[1] = x_block(tb1 + xo, lane, sgs);
            xt[2] = x_block(tb2 + xo, lane, sgs);
            xt[3] = x_block(tb3 + xo, lane, sgs);
            xt[4] = x_block(tb4 + xo, lane, sgs);
            xt[5] = x_block(tb5 + xo, lane, sgs);
            xt[6] = x_block(tb6 + xo, lane, sgs);
            xt[7] = x_block(tb7 + xo, lane, sgs);
            let co = off + c * bits;
            w.c0 = load_chunk(ra * p.row_words + co, bits);
            w.c1 = load_chunk(rb * p.row_words + co, bits);
            w.c2 = load_chunk(rc * p.row_words + co, bits);
            w.c3 = load_chunk(rd * p.row_words + co, bits);
            mx_step(&acc, &w, &xt, 0u, bits);
            mx_step(&acc, &w, &xt, 1u, bits);
            mx_step(&acc, &w, &xt, 2u, bits);
            mx_step(&acc, &w, &xt, 3u, bits);
            mx_step(&acc, &w, &xt, 4u, bits);
            mx_step(&acc, &w, &xt, 5u, bits);
            mx_step(&acc, &w, &xt, 6u, bits);
            mx_step(&acc, &w, &xt, 7u, bits);
        }
    }
    for (var r = 0u; r < TB; r++) {
        for (var a = 0u; a < TA; a++) {
            let tt = t0 + a;
            if tt < p.n_tokens && r0 + r < p.rows {
                out[tt * p.out_stride + p.out_col + r0 + r] = acc[2u * r + a / 4u][a % 4u];
            }
        }
    }
}
