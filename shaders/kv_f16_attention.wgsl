// kv_f16_attention.wgsl: fused causal GQA attention over the f16 KV cache,
// online softmax; see ops/kv_f16_attention.rs for the math, layouts and the
// choice of path.
//
//   kv_f16_attention         prefill: an invocation owns 4 query rows (token,
//                            head) of one KV head; all invocations of a
//                            workgroup walk the same keys in blocks of 32
//                            (same addresses: a broadcast on GPUs). The output
//                            accumulator lives in `out` itself.
//   kv_f16_attention_decode  one token, split-KV: an invocation owns a range
//                            of keys and 4 query heads of one GQA group, and
//                            writes a partial (m, l, acc) per head to `scratch`.
//   attention_combine        merges the decode ranges of a head into `out`.
//
// Why it is shaped like this (lavapipe first, where tests and most users
// run; invocations are SIMD lanes of a CPU core, and every load is a loop
// over the lanes, so the cost is the number of load instructions):
// - no workgroup memory and no barriers: each invocation is independent;
// - a block is 32 keys x 4 rows held as 8 mat4x4 in registers, its code
//   written out: lavapipe does not unroll loops, and a private array indexed
//   by a loop variable becomes memory traffic;
// - K/V are read 16 bytes (8 f16) per load;
// - lavapipe stops an invocation after 65535 loop iterations in total, so
//   loops run per block and per 8 dims, never per key or per dim.

struct Params {
    n_tokens: u32,
    pos: u32,
    kv_len: u32,
    n_heads: u32,
    n_kv_heads: u32,
    max_ctx: u32,
    n_chunks: u32,
    chunk_len: u32,
    scale: f32,
    // Several sequences' decode (the grid's z; ops/kv_f16_attention.rs,
    // `Seqs`): cache rows and scratch vec4s between two sequences' (0 for
    // one), and each one's (kv_len, n_chunks, chunk_len, 0).
    slot_rows: u32,
    seq_recs: u32,
    _p0: u32,
    seqs: array<vec4<u32>, MAX_SEQS>,
}

const MAX_SEQS: u32 = 8u; // kv::MAX_SEQS (tests/tests/contracts.rs)

@group(0) @binding(0) var<uniform> p: Params;
// Several sequences' decode: q, out [seqs, n_heads, 2 * W8], caches and
// scratch one slot a sequence, slot_rows cache rows / seq_recs vec4s apart.
@group(0) @binding(1) var<storage, read> q: array<vec4<f32>>;             // [n_tokens, n_heads, 2 * W8]
@group(0) @binding(2) var<storage, read> k_cache: array<vec4<u32>>;       // [n_kv_heads, max_ctx, W8], 8 f16 each
@group(0) @binding(3) var<storage, read> v_cache: array<vec4<u32>>;       // [n_kv_heads, max_ctx, W8]
@group(0) @binding(4) var<storage, read_write> out: array<vec4<f32>>;     // [n_tokens, n_heads, 2 * W8]
@group(0) @binding(5) var<storage, read_write> scratch: array<vec4<f32>>; // [n_heads, n_chunks, 1 + 2 * W8]

// Set per pipeline by ops/kv_f16_attention.rs; defaults: head_dim 64, no GQA.
override W8: u32 = 8u;    // head_dim / 8: 16-byte words per cache row
override G: u32 = 1u;     // query heads per KV head

const WG: u32 = 64u;      // kv::ATTENTION_WG (tests/tests/contracts.rs)

// ---------------------------------------------------------------------------
// Helpers (KB, NEG, lo4/hi4, Values4, Scores, Block, softmax_block, the
// accumulators and the combine entry) are in lib/softmax4.wgsl.

// Sequence z's split and offsets (lib/softmax4.wgsl): its query row is row
// z of q, its cache the z-th slot of the bound caches.
fn decode_seq(z: u32) -> DecodeSeq {
    let s = p.seqs[z];
    return DecodeSeq(s.x, s.y, s.z, z * p.n_heads * 2u * W8, z * p.slot_rows, z * p.seq_recs);
}

fn values4(base: u32, j: u32, last: u32, w: u32) -> Values4 {
    let v0 = v_cache[(base + min(j, last)) * W8 + w];
    let v1 = v_cache[(base + min(j + 1u, last)) * W8 + w];
    let v2 = v_cache[(base + min(j + 2u, last)) * W8 + w];
    let v3 = v_cache[(base + min(j + 3u, last)) * W8 + w];
    return Values4(mat4x4(lo4(v0), lo4(v1), lo4(v2), lo4(v3)), mat4x4(hi4(v0), hi4(v1), hi4(v2), hi4(v3)));
}

// Scores of keys j..j+3 (clamped to `last`) of the KV head at row `base`,
// over dims 8w..8w+7, against the rows whose same dims are the columns of
// qa (0-3) and qb (4-7): column k, component r = q_r . k_{j+k}.
fn scores4(qa: mat4x4<f32>, qb: mat4x4<f32>, base: u32, j: u32, last: u32, w: u32) -> mat4x4<f32> {
    let k0 = k_cache[(base + min(j, last)) * W8 + w];
    let k1 = k_cache[(base + min(j + 1u, last)) * W8 + w];
    let k2 = k_cache[(base + min(j + 2u, last)) * W8 + w];
    let k3 = k_cache[(base + min(j + 3u, last)) * W8 + w];
    return mat4x4(lo4(k0) * qa + hi4(k0) * qb, lo4(k1) * qa + hi4(k1) * qb,
                  lo4(k2) * qa + hi4(k2) * qb, lo4(k3) * qa + hi4(k3) * qb);
}

// Scores, running max m and sum l for keys j0..j0+31 (reads clamped to
// `last`, keys at or past `limit` masked) of the KV head at row `base`;
// `qrow` holds the first q word of each row.
fn block(qrow: vec4<u32>, base: u32, j0: u32, last: u32, limit: vec4<u32>, m: ptr<function, vec4<f32>>,
         l: ptr<function, vec4<f32>>) -> Block {
    var s0 = mat4x4<f32>(); var s1 = mat4x4<f32>(); var s2 = mat4x4<f32>(); var s3 = mat4x4<f32>();
    var s4 = mat4x4<f32>(); var s5 = mat4x4<f32>(); var s6 = mat4x4<f32>(); var s7 = mat4x4<f32>();
    for (var w = 0u; w < W8; w++) {
        let i = qrow + vec4(2u * w);
        let qa = mat4x4(q[i.x], q[i.y], q[i.z], q[i.w]);
        let qb = mat4x4(q[i.x + 1u], q[i.y + 1u], q[i.z + 1u], q[i.w + 1u]);
        s0 += scores4(qa, qb, base, j0, last, w);
        s1 += scores4(qa, qb, base, j0 + 4u, last, w);
        s2 += scores4(qa, qb, base, j0 + 8u, last, w);
        s3 += scores4(qa, qb, base, j0 + 12u, last, w);
        s4 += scores4(qa, qb, base, j0 + 16u, last, w);
        s5 += scores4(qa, qb, base, j0 + 20u, last, w);
        s6 += scores4(qa, qb, base, j0 + 24u, last, w);
        s7 += scores4(qa, qb, base, j0 + 28u, last, w);
    }
    return softmax_block(Scores(s0, s1, s2, s3, s4, s5, s6, s7), j0, vec4(0u), limit, p.scale, m, l);
}

// P V of the block over dims 8w..8w+7: column i of .lo / .hi holds dims
// 8w..8w+3 / 8w+4..8w+7 of row i.
fn block_pv(b: Block, base: u32, j0: u32, last: u32, w: u32) -> Values4 {
    var v = values4(base, j0, last, w);
    var o = Values4(v.lo * b.p0, v.hi * b.p0);
    v = values4(base, j0 + 4u, last, w); o.lo += v.lo * b.p1; o.hi += v.hi * b.p1;
    v = values4(base, j0 + 8u, last, w); o.lo += v.lo * b.p2; o.hi += v.hi * b.p2;
    v = values4(base, j0 + 12u, last, w); o.lo += v.lo * b.p3; o.hi += v.hi * b.p3;
    v = values4(base, j0 + 16u, last, w); o.lo += v.lo * b.p4; o.hi += v.hi * b.p4;
    v = values4(base, j0 + 20u, last, w); o.lo += v.lo * b.p5; o.hi += v.hi * b.p5;
    v = values4(base, j0 + 24u, last, w); o.lo += v.lo * b.p6; o.hi += v.hi * b.p6;
    v = values4(base, j0 + 28u, last, w); o.lo += v.lo * b.p7; o.hi += v.hi * b.p7;
    return o;
}

// ---------------------------------------------------------------------------
// Prefill: 4 rows (token, head-in-group) per invocation, keys uniform.

@compute @workgroup_size(WG)
fn kv_f16_attention(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    // One KV head's rows in (token, head-in-group) order, 4 * WG per workgroup.
    let rows = p.n_tokens * G;
    let n_rt = (rows + 4u * WG - 1u) / (4u * WG);
    let id = wid.x + wid.y * nwg.x;
    if id >= n_rt * p.n_kv_heads { return; }
    let rt = id % n_rt;
    let kvh = id / n_rt;
    let base = kvh * p.max_ctx;
    // Keys [0, kend) are visible to some row of the workgroup.
    let kend = p.pos + (min((rt + 1u) * 4u * WG, rows) - 1u) / G + 1u;

    let r4 = vec4((rt * WG + lid) * 4u) + vec4(0u, 1u, 2u, 3u);
    if r4.x >= rows { return; }
    // Rows past the step (in the last invocation) re-read the last row,
    // which is this invocation's too, see no key, and are never stored.
    let ok = r4 < vec4(rows);
    let r = min(r4, vec4(rows - 1u));
    let tok = r / G;
    let limit = select(vec4(0u), vec4(p.pos + 1u) + tok, ok);   // causal: keys <= pos + tok
    let qrow = (tok * p.n_heads + vec4(kvh * G) + r % G) * 2u * W8;

    var m = vec4(NEG);
    var l = vec4(0.0);
    for (var j0 = 0u; j0 < kend; j0 += KB) {
        let b = block(qrow, base, j0, kend - 1u, limit, &m, &l);
        // The accumulator lives in `out`; the last block also normalises.
        let fresh = j0 == 0u;
        let inv = select(vec4(1.0), 1.0 / l, j0 + KB >= kend);
        for (var w = 0u; w < W8; w++) {
            let o = block_pv(b, base, j0, kend - 1u, w);
            let at = qrow + vec4(2u * w);
            accumulate_out4(at, o, b.alpha, inv, fresh, ok);
        }
    }
}

// ---------------------------------------------------------------------------
// Split-KV decode: one key range and 4 query heads of a group per invocation.

@compute @workgroup_size(WG)
fn kv_f16_attention_decode(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let d = decode_seq(wid.z);
    let sl = decode_slot(wid.x + wid.y * nwg.x, lid, d);
    if !sl.valid { return; }
    let qrow = vec4(d.q0) + sl.head * 2u * W8;
    let base = d.row0 + sl.kvh * p.max_ctx;
    let c0 = sl.c0;
    let c1 = sl.c1;

    var m = vec4(NEG);
    var l = vec4(0.0);
    for (var j0 = c0; j0 < c1; j0 += KB) {
        let b = block(qrow, base, j0, c1 - 1u, vec4(c1), &m, &l);
        let fresh = j0 == c0;
        for (var w = 0u; w < W8; w++) {
            accumulate_scratch4(sl.rec + vec4(1u + 2u * w), block_pv(b, base, j0, c1 - 1u, w), b.alpha, fresh, sl.ok);
        }
    }
    store_records(sl, m, l);
}
