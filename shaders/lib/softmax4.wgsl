// softmax4.wgsl: the online-softmax pieces both attention shaders share
// (kv_f16_attention.wgsl over the f16 cache, kv_quant_attention.wgsl over
// the quantized one), the split-KV decode slots and the combine entry.
// "Rows" are the 4 query rows (or heads) of an invocation; a score matrix
// has one column per key and one component per row. The including shader declares `p` (with
// n_heads, n_kv_heads, n_chunks, chunk_len, kv_len), `out`, `scratch`, the
// overrides W8 (head_dim / 8) and G, and the workgroup size WG.

const KB: u32 = 32u;        // keys per block: 8 groups of 4
const NEG: f32 = -3.0e38;   // stands for -inf; stays finite so NEG - NEG = 0, not NaN

// Eight f16 of a cache word: dims 0-3 and 4-7.
fn lo4(w: vec4<u32>) -> vec4<f32> {
    return vec4(unpack2x16float(w.x), unpack2x16float(w.y));
}
fn hi4(w: vec4<u32>) -> vec4<f32> {
    return vec4(unpack2x16float(w.z), unpack2x16float(w.w));
}

// Dims 8w..8w+7 of values j..j+3, one column per key.
struct Values4 {
    lo: mat4x4<f32>,
    hi: mat4x4<f32>,
}

// Scaled scores of keys j..j+3 where lo <= key < hi (per row), NEG elsewhere.
fn masked4(s: mat4x4<f32>, j: u32, lo: vec4<u32>, hi: vec4<u32>, scale: f32) -> mat4x4<f32> {
    let j4 = vec4(j);
    return mat4x4(select(vec4(NEG), s[0] * scale, (j4 >= lo) & (j4 < hi)),
                  select(vec4(NEG), s[1] * scale, (j4 + 1u >= lo) & (j4 + 1u < hi)),
                  select(vec4(NEG), s[2] * scale, (j4 + 2u >= lo) & (j4 + 2u < hi)),
                  select(vec4(NEG), s[3] * scale, (j4 + 3u >= lo) & (j4 + 3u < hi)));
}

// Largest score per row.
fn rowmax(s: mat4x4<f32>) -> vec4<f32> {
    return max(max(s[0], s[1]), max(s[2], s[3]));
}

// exp(s - m), transposed: one column per row, one component per key. A
// masked score (NEG) gives 0 once the row has seen a key (m finite).
fn probs_t(s: mat4x4<f32>, m: vec4<f32>) -> mat4x4<f32> {
    return transpose(mat4x4(exp(s[0] - m), exp(s[1] - m), exp(s[2] - m), exp(s[3] - m)));
}

// Per-row sum of a transposed probability matrix.
fn row_sums(pt: mat4x4<f32>) -> vec4<f32> {
    return vec4(dot(pt[0], vec4(1.0)), dot(pt[1], vec4(1.0)), dot(pt[2], vec4(1.0)), dot(pt[3], vec4(1.0)));
}

// The raw scores of a block: 32 keys from j0 against 4 rows.
struct Scores {
    s0: mat4x4<f32>, s1: mat4x4<f32>, s2: mat4x4<f32>, s3: mat4x4<f32>,
    s4: mat4x4<f32>, s5: mat4x4<f32>, s6: mat4x4<f32>, s7: mat4x4<f32>,
}

// The block after the softmax update.
struct Block {
    // Transposed probabilities of keys j0 + 4i .. j0 + 4i + 3.
    p0: mat4x4<f32>, p1: mat4x4<f32>, p2: mat4x4<f32>, p3: mat4x4<f32>,
    p4: mat4x4<f32>, p5: mat4x4<f32>, p6: mat4x4<f32>, p7: mat4x4<f32>,
    // Rescale of the old accumulator: exp(m_old - m_new).
    alpha: vec4<f32>,
}

// Masks the block's scores to lo <= key < hi per row, folds them into the
// running max m and sum l, and returns the probabilities.
fn softmax_block(sc: Scores, j0: u32, lo: vec4<u32>, hi: vec4<u32>, scale: f32, m: ptr<function, vec4<f32>>,
                 l: ptr<function, vec4<f32>>) -> Block {
    let s0 = masked4(sc.s0, j0, lo, hi, scale);
    let s1 = masked4(sc.s1, j0 + 4u, lo, hi, scale);
    let s2 = masked4(sc.s2, j0 + 8u, lo, hi, scale);
    let s3 = masked4(sc.s3, j0 + 12u, lo, hi, scale);
    let s4 = masked4(sc.s4, j0 + 16u, lo, hi, scale);
    let s5 = masked4(sc.s5, j0 + 20u, lo, hi, scale);
    let s6 = masked4(sc.s6, j0 + 24u, lo, hi, scale);
    let s7 = masked4(sc.s7, j0 + 28u, lo, hi, scale);
    let mb = max(*m, max(max(max(rowmax(s0), rowmax(s1)), max(rowmax(s2), rowmax(s3))),
                         max(max(rowmax(s4), rowmax(s5)), max(rowmax(s6), rowmax(s7)))));
    var b: Block;
    b.alpha = exp(*m - mb);
    *m = mb;
    b.p0 = probs_t(s0, mb); b.p1 = probs_t(s1, mb); b.p2 = probs_t(s2, mb); b.p3 = probs_t(s3, mb);
    b.p4 = probs_t(s4, mb); b.p5 = probs_t(s5, mb); b.p6 = probs_t(s6, mb); b.p7 = probs_t(s7, mb);
    *l = *l * b.alpha + row_sums(b.p0 + b.p1 + b.p2 + b.p3 + b.p4 + b.p5 + b.p6 + b.p7);
    return b;
}

// out[o..o+2] = (alpha * out[o..o+2] unless fresh, + a, b) * inv, if store.
fn accumulate_out(o: u32, a: vec4<f32>, b: vec4<f32>, alpha: f32, inv: f32, fresh: bool, store: bool) {
    var x = a;
    var y = b;
    if !fresh {
        x += out[o] * alpha;
        y += out[o + 1u] * alpha;
    }
    if store {
        out[o] = x * inv;
        out[o + 1u] = y * inv;
    }
}

fn accumulate_scratch(o: u32, a: vec4<f32>, b: vec4<f32>, alpha: f32, fresh: bool, store: bool) {
    var x = a;
    var y = b;
    if !fresh {
        x += scratch[o] * alpha;
        y += scratch[o + 1u] * alpha;
    }
    if store {
        scratch[o] = x;
        scratch[o + 1u] = y;
    }
}

// The 4 rows of a block's P V over dims 8w..8w+7 (`o`, from block_pv) into
// `out` at the rows' words `at`.
fn accumulate_out4(at: vec4<u32>, o: Values4, alpha: vec4<f32>, inv: vec4<f32>, fresh: bool, ok: vec4<bool>) {
    accumulate_out(at.x, o.lo[0], o.hi[0], alpha.x, inv.x, fresh, ok.x);
    accumulate_out(at.y, o.lo[1], o.hi[1], alpha.y, inv.y, fresh, ok.y);
    accumulate_out(at.z, o.lo[2], o.hi[2], alpha.z, inv.z, fresh, ok.z);
    accumulate_out(at.w, o.lo[3], o.hi[3], alpha.w, inv.w, fresh, ok.w);
}

// The same into the rows' decode records in `scratch`.
fn accumulate_scratch4(at: vec4<u32>, o: Values4, alpha: vec4<f32>, fresh: bool, ok: vec4<bool>) {
    accumulate_scratch(at.x, o.lo[0], o.hi[0], alpha.x, fresh, ok.x);
    accumulate_scratch(at.y, o.lo[1], o.hi[1], alpha.y, fresh, ok.y);
    accumulate_scratch(at.z, o.lo[2], o.hi[2], alpha.z, fresh, ok.z);
    accumulate_scratch(at.w, o.lo[3], o.hi[3], alpha.w, fresh, ok.w);
}

// ---------------------------------------------------------------------------
// Split-KV decode (the including shader declares the override G, query
// heads per KV head, and the workgroup size WG): an invocation takes one key
// range [c0, c1) of KV head kvh for 4 query heads of its group. Heads past
// the group (G not a multiple of 4) re-read the last head and are never
// stored (ok false).

// One sequence's split and where its rows start: its keys, ranges, keys
// per range; its first query / output vec4, first cache row (before the KV
// head's), first scratch vec4. The including shader defines
// `decode_seq(z) -> DecodeSeq` for sequence z (the grid's z; a single
// sequence's offsets are 0). n_chunks = 0: the sequence sits this step out.
struct DecodeSeq {
    kv_len: u32,
    n_chunks: u32,
    chunk_len: u32,
    q0: u32,
    row0: u32,
    rec0: u32,
}

struct DecodeSlot {
    valid: bool,
    kvh: u32,
    head: vec4<u32>,
    ok: vec4<bool>,
    c0: u32,
    c1: u32,
    // Each head's record (m, l, 0, 0, acc[head_dim]) in scratch.
    rec: vec4<u32>,
}

// Workgroup `id` of sequence d's decode grid (sized for the step's most
// ranges: workgroups past d's own find no range).
fn decode_slot(id: u32, lid: u32, d: DecodeSeq) -> DecodeSlot {
    var s: DecodeSlot;
    let wg_per_head = (d.n_chunks + WG - 1u) / WG;
    let chunk = (id % max(wg_per_head, 1u)) * WG + lid;
    s.valid = id < wg_per_head * p.n_kv_heads * ((G + 3u) / 4u) && chunk < d.n_chunks;
    s.kvh = (id / max(wg_per_head, 1u)) % p.n_kv_heads;
    let pack = id / max(wg_per_head * p.n_kv_heads, 1u);
    let h4 = vec4(pack * 4u) + vec4(0u, 1u, 2u, 3u);
    s.ok = h4 < vec4(G);
    s.head = vec4(s.kvh * G) + min(h4, vec4(G - 1u));
    s.c0 = chunk * d.chunk_len;
    s.c1 = min(s.c0 + d.chunk_len, d.kv_len);
    s.rec = vec4(d.rec0) + (s.head * d.n_chunks + vec4(chunk)) * (1u + 2u * W8);
    return s;
}

// The running max and sum of each head into its record.
fn store_records(s: DecodeSlot, m: vec4<f32>, l: vec4<f32>) {
    if s.ok.x { scratch[s.rec.x] = vec4(m.x, l.x, 0.0, 0.0); }
    if s.ok.y { scratch[s.rec.y] = vec4(m.y, l.y, 0.0, 0.0); }
    if s.ok.z { scratch[s.rec.z] = vec4(m.z, l.z, 0.0, 0.0); }
    if s.ok.w { scratch[s.rec.w] = vec4(m.w, l.w, 0.0, 0.0); }
}

// ---------------------------------------------------------------------------
// Combine: one workgroup per query head (and sequence, the grid's z)
// merges its n_chunks decode records (m, l, 0, 0, acc[head_dim]) at the
// sequence's start of `scratch`:
// out = sum_c exp(m_c - M) acc_c / sum_c exp(m_c - M) l_c, M = max_c m_c.

const COMBINE_WG: u32 = 64u;

@compute @workgroup_size(COMBINE_WG)
fn attention_combine(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let h = wid.x + wid.y * nwg.x;
    let d = decode_seq(wid.z);
    if h >= p.n_heads || d.n_chunks == 0u { return; }
    let stride = 1u + 2u * W8;
    let first = d.rec0 + h * d.n_chunks * stride;
    // The (m, l) words are uniform loads; every invocation folds them itself.
    var mx = NEG;
    for (var c = 0u; c < d.n_chunks; c++) { mx = max(mx, scratch[first + c * stride].x); }
    var lt = 0.0;
    for (var c = 0u; c < d.n_chunks; c++) {
        let ml = scratch[first + c * stride];
        lt += ml.y * exp(ml.x - mx);
    }
    for (var i = lid; i < 2u * W8; i += COMBINE_WG) {
        var o = vec4(0.0);
        for (var c = 0u; c < d.n_chunks; c++) {
            let rec = first + c * stride;
            o += exp(scratch[rec].x - mx) * scratch[rec + 1u + i];
        }
        out[d.q0 + h * 2u * W8 + i] = o / lt;
    }
}
