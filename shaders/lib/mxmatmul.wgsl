// lib/mxmatmul.wgsl: matmul kernels for Mixed weights (SliM-LLM groups: a
// bit width from 1 to 8 per column group, shared by all rows), used by
// matmul_mx.wgsl and matmul_mx_sg.wgsl with the plane readers of
// lib/mxcodes.wgsl, fma_tok from lib/tiles.wgsl and x_block / any_lane from
// lib/xload.wgsl or lib/xload_sg.wgsl.
//
// Planes (engine/src/weight/): a chunk of 32 codes of a `bits`-wide group
// is `bits` u32 words: one segment of 8-bit codes, or segments of 4, 2 and 1
// bits (those set in `bits`, lowest code bits first), element k of a width-s
// segment at bit s*k of its words. Codes are group-major: group g's region
// (offset from the table) holds each row's `bits * chunks` words in turn;
// within a row's part, superchunks of up to 4 chunks, each segment's words
// for all k chunks of the superchunk together (k * s words, chunk c at c*s).
// A full superchunk of an aligned region is `bits` whole vec4s: the vector
// path; other superchunks (short groups, group sizes under 128) load words
// one by one. w = d * q + m with f16 d, m per (row, group). The table holds
// the groups sorted by class (see CLASS_WORDS in lib/mxcodes.wgsl).
//
// Same shapes as lib/qmatmul.wgsl (see there for why): an invocation owns
// whole rows; the mat-vec keeps R rows, the tiled kernel TA tokens x TB rows.
// Groups are walked by class (width, and vector or scalar loads), with code
// specialised for each class: no width branch is left at run time.
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
    // GLU: the element where up starts in x (lib/xload.wgsl).
    x_up: u32,
    // NORM: RMSNorm's epsilon (lib/xnorm.wgsl).
    eps: f32,
    _pad1: u32,
    _pad2: u32,
    // Where the results go (lib/mmout.wgsl).
    o: MmOut,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> codes: array<u32>;
@group(0) @binding(7) var<storage, read> codes4: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> scales: array<u32>;
@group(0) @binding(4) var<storage, read> mins: array<u32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;
@group(0) @binding(6) var<storage, read> table: array<u32>;
// NORM: RMSNorm's weight (lib/xnorm.wgsl); another read binding otherwise.
@group(0) @binding(8) var<storage, read> norm_w: array<vec4<f32>>;

const WG: u32 = 64u;

// Codes 4k .. 4k + 3 of a chunk as floats (k is a literal at every call, so
// the component picks are static).
fn chunk_codes(ch: Chunk, k: u32, bits: u32) -> vec4<f32> {
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

// sum(q x) over one chunk, four accumulation chains. A 4-bit chunk takes x
// pre-scaled by prescale4 and masks its nibbles in place (no shifts).
fn chunk_dot(ch: Chunk, bits: u32, xb: XBlock) -> f32 {
    if bits == 4u {
        return nib_dot(ch.a, xb);
    }
    var a = chunk_codes(ch, 0u, bits) * xb.v[0];
    a = fma(chunk_codes(ch, 1u, bits), xb.v[1], a);
    a = fma(chunk_codes(ch, 2u, bits), xb.v[2], a);
    a = fma(chunk_codes(ch, 3u, bits), xb.v[3], a);
    a = fma(chunk_codes(ch, 4u, bits), xb.v[4], a);
    a = fma(chunk_codes(ch, 5u, bits), xb.v[5], a);
    a = fma(chunk_codes(ch, 6u, bits), xb.v[6], a);
    a = fma(chunk_codes(ch, 7u, bits), xb.v[7], a);
    return (a.x + a.y) + (a.z + a.w);
}

// x as a 4-bit chunk_dot takes it (a no-op for other widths; `bits` is a
// literal at every call).
fn prescale4(b: XBlock, bits: u32) -> XBlock {
    if bits != 4u {
        return b;
    }
    return nib_scale(b);
}

// ---------------------------------------------------------------------------
// matvec: one token; invocation i computes rows (wg * WG + i) * R .. + R.

override R: u32 = 4u;

// What every group of a matvec call shares.
struct MvRows {
    r: vec4<u32>,
    xbase: u32,
    lane: u32,
    sgs: u32,
    live: bool,
}

// The groups of one class; `bits` and `vec` are literals at every call, so
// every width and path branch below folds when the pipeline is compiled
// (llvmpipe runs both sides of a branch it cannot fold).
fn mv_class(acc: ptr<function, vec4<f32>>, st: MvRows, bits: u32, vec: bool) {
    let cls = 2u * (bits - 1u) + select(1u, 0u, vec);
    let i0 = table[cls];
    let i1 = select(i0, table[cls + 1u], st.live);
    for (var i = i0; i < i1; i++) {
        let base = table[CLASS_WORDS + 2u * i];
        let e = table[CLASS_WORDS + 2u * i + 1u];
        let g = e & 0xfffffu;
        let nch = e >> 20u;
        let gw = bits * nch;
        let xc = g * (p.group / 4u);
        var dq = vec4<f32>(0.0);
        var xs = 0.0;
        for (var s = 0u; s < nch; s += 4u) {
            let off = s * bits;
            if vec {
                // A chunk per iteration, as in mm_class.
                for (var c = 0u; c < 4u; c++) {
                    let xr = x_block_normed(st.xbase, xc + (s + c) * 8u, st.lane, st.sgs);
                    xs += x_sum(xr);
                    let xb = prescale4(xr, bits);
                    dq.x += chunk_dot(vload_chunk((base + st.r.x * gw + off) / 4u, c, bits), bits, xb);
                    if R > 1u {
                        dq.y += chunk_dot(vload_chunk((base + st.r.y * gw + off) / 4u, c, bits), bits, xb);
                    }
                    if R > 2u {
                        dq.z += chunk_dot(vload_chunk((base + st.r.z * gw + off) / 4u, c, bits), bits, xb);
                        dq.w += chunk_dot(vload_chunk((base + st.r.w * gw + off) / 4u, c, bits), bits, xb);
                    }
                }
            } else {
                let k = min(4u, nch - s);
                for (var c = 0u; c < k; c++) {
                    let xr = x_block_normed(st.xbase, xc + (s + c) * 8u, st.lane, st.sgs);
                    xs += x_sum(xr);
                    let xb = prescale4(xr, bits);
                    dq.x += chunk_dot(load_chunk(base + st.r.x * gw + off, k, c, bits), bits, xb);
                    if R > 1u {
                        dq.y += chunk_dot(load_chunk(base + st.r.y * gw + off, k, c, bits), bits, xb);
                    }
                    if R > 2u {
                        dq.z += chunk_dot(load_chunk(base + st.r.z * gw + off, k, c, bits), bits, xb);
                        dq.w += chunk_dot(load_chunk(base + st.r.w * gw + off, k, c, bits), bits, xb);
                    }
                }
            }
        }
        let s0 = st.r.x * p.n_groups + g;
        (*acc).x += fma(scale_at(s0), dq.x, min_at(s0) * xs);
        if R > 1u {
            let s1 = st.r.y * p.n_groups + g;
            (*acc).y += fma(scale_at(s1), dq.y, min_at(s1) * xs);
        }
        if R > 2u {
            let s2 = st.r.z * p.n_groups + g;
            let s3 = st.r.w * p.n_groups + g;
            (*acc).z += fma(scale_at(s2), dq.z, min_at(s2) * xs);
            (*acc).w += fma(scale_at(s3), dq.w, min_at(s3) * xs);
        }
    }
}

fn matvec(wg: u32, lid: u32, lane: u32, sgs: u32) {
    norm_prologue(p.x_row, lid);
    let row0 = (wg * WG + lid) * R;
    // As in lib/qmatmul.wgsl: rows past the end clamp to the last row (loads
    // stay in bounds, nothing is written); whole subgroups past it skip.
    let last = p.rows - 1u;
    var st: MvRows;
    st.r = min(vec4<u32>(row0) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(last));
    st.xbase = p.x_row * p.nb * 8u;
    st.lane = lane;
    st.sgs = sgs;
    st.live = any_lane(row0 < p.rows);
    var acc = vec4<f32>(0.0);
    mv_classes(&acc, st);
    store_rows(row0, norm_vec(acc));
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

// One chunk (chunk j of group g) of the four rows in `w` against the TA
// tokens' x blocks.
fn mx_chunk(acc: ptr<function, Acc>, w: ptr<function, RowChunks>, g: u32, j: u32, tb: array<u32, TA>,
            lane: u32, sgs: u32, bits: u32) {
    let xo = g * (p.group / 4u) + j * 8u;
    var xt: Tokens;
    xt[0] = x_block(tb[0] + xo, lane, sgs);
    xt[1] = x_block(tb[1] + xo, lane, sgs);
    xt[2] = x_block(tb[2] + xo, lane, sgs);
    xt[3] = x_block(tb[3] + xo, lane, sgs);
    xt[4] = x_block(tb[4] + xo, lane, sgs);
    xt[5] = x_block(tb[5] + xo, lane, sgs);
    xt[6] = x_block(tb[6] + xo, lane, sgs);
    xt[7] = x_block(tb[7] + xo, lane, sgs);
    mx_step(acc, w, &xt, 0u, bits);
    mx_step(acc, w, &xt, 1u, bits);
    mx_step(acc, w, &xt, 2u, bits);
    mx_step(acc, w, &xt, 3u, bits);
    mx_step(acc, w, &xt, 4u, bits);
    mx_step(acc, w, &xt, 5u, bits);
    mx_step(acc, w, &xt, 6u, bits);
    mx_step(acc, w, &xt, 7u, bits);
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
    var wv = fma(chunk_codes((*w).c0, q, bits), vec4<f32>((*w).d.x), vec4<f32>((*w).m.x));
    (*acc)[0] = fma_tok((*acc)[0], x0, x1, x2, x3, wv);
    (*acc)[1] = fma_tok((*acc)[1], x4, x5, x6, x7, wv);
    wv = fma(chunk_codes((*w).c1, q, bits), vec4<f32>((*w).d.y), vec4<f32>((*w).m.y));
    (*acc)[2] = fma_tok((*acc)[2], x0, x1, x2, x3, wv);
    (*acc)[3] = fma_tok((*acc)[3], x4, x5, x6, x7, wv);
    wv = fma(chunk_codes((*w).c2, q, bits), vec4<f32>((*w).d.z), vec4<f32>((*w).m.z));
    (*acc)[4] = fma_tok((*acc)[4], x0, x1, x2, x3, wv);
    (*acc)[5] = fma_tok((*acc)[5], x4, x5, x6, x7, wv);
    wv = fma(chunk_codes((*w).c3, q, bits), vec4<f32>((*w).d.w), vec4<f32>((*w).m.w));
    (*acc)[6] = fma_tok((*acc)[6], x0, x1, x2, x3, wv);
    (*acc)[7] = fma_tok((*acc)[7], x4, x5, x6, x7, wv);
}

// What every group of a tiled call shares.
struct MmTile {
    r: vec4<u32>,
    tb: array<u32, TA>,
    lane: u32,
    sgs: u32,
    live: bool,
}

// The groups of one class (bits and vec literals, as in mv_class).
fn mm_class(acc: ptr<function, Acc>, st: ptr<function, MmTile>, bits: u32, vec: bool) {
    let cls = 2u * (bits - 1u) + select(1u, 0u, vec);
    let i0 = table[cls];
    let i1 = select(i0, table[cls + 1u], (*st).live);
    let lane = (*st).lane;
    let sgs = (*st).sgs;
    let tb = (*st).tb;
    let rr = (*st).r;
    for (var i = i0; i < i1; i++) {
        let base = table[CLASS_WORDS + 2u * i];
        let e = table[CLASS_WORDS + 2u * i + 1u];
        let g = e & 0xfffffu;
        let nch = e >> 20u;
        var w: RowChunks;
        let si = rr * p.n_groups + vec4<u32>(g);
        w.d = vec4<f32>(scale_at(si.x), scale_at(si.y), scale_at(si.z), scale_at(si.w));
        w.m = vec4<f32>(min_at(si.x), min_at(si.y), min_at(si.z), min_at(si.w));
        let gw = bits * nch;
        for (var s = 0u; s < nch; s += 4u) {
            let o = vec4<u32>(base) + rr * gw + vec4<u32>(s * bits);
            if vec {
                // One chunk per iteration (not unrolled): a single copy of
                // mx_chunk per class keeps the pipeline's code small.
                let b4 = o / 4u;
                for (var c = 0u; c < 4u; c++) {
                    w.c0 = vload_chunk(b4.x, c, bits);
                    w.c1 = vload_chunk(b4.y, c, bits);
                    w.c2 = vload_chunk(b4.z, c, bits);
                    w.c3 = vload_chunk(b4.w, c, bits);
                    mx_chunk(acc, &w, g, s + c, tb, lane, sgs, bits);
                }
            } else {
                let k = min(4u, nch - s);
                for (var c = 0u; c < k; c++) {
                    w.c0 = load_chunk(o.x, k, c, bits);
                    w.c1 = load_chunk(o.y, k, c, bits);
                    w.c2 = load_chunk(o.z, k, c, bits);
                    w.c3 = load_chunk(o.w, k, c, bits);
                    mx_chunk(acc, &w, g, s + c, tb, lane, sgs, bits);
                }
            }
        }
    }
}

fn matmul(wg: u32, lid: u32, lane: u32, sgs: u32) {
    let t0 = (wg / p.row_tiles) * TA;
    let r0 = ((wg % p.row_tiles) * WG + lid) * TB;
    let last = p.rows - 1u;
    var st: MmTile;
    st.r = min(vec4<u32>(r0) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(last));
    // Tokens past the step's end repeat the last one; never written.
    let last_t = p.n_tokens - 1u;
    let stride = p.nb * 8u;
    st.tb[0] = min(t0, last_t) * stride;
    st.tb[1] = min(t0 + 1u, last_t) * stride;
    st.tb[2] = min(t0 + 2u, last_t) * stride;
    st.tb[3] = min(t0 + 3u, last_t) * stride;
    st.tb[4] = min(t0 + 4u, last_t) * stride;
    st.tb[5] = min(t0 + 5u, last_t) * stride;
    st.tb[6] = min(t0 + 6u, last_t) * stride;
    st.tb[7] = min(t0 + 7u, last_t) * stride;
    st.lane = lane;
    st.sgs = sgs;
    st.live = any_lane(r0 < p.rows);
    var acc: Acc;
    mm_classes(&acc, &st);
    store_tile(t0, r0, acc);
}
