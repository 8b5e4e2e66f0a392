// kv_quant_attention.wgsl: fused causal GQA attention over the quantized KV
// cache (segments and formats: engine/src/kv/mod.rs; paths and math:
// ops/kv_quant_attention.rs).
// Built on the f16 kernel's blocks (lib/softmax4.wgsl): a block is 32 keys x
// 4 query rows in registers, keys read in their own format and decoded in
// place; no workgroup memory, no barriers.
//
//   kv_qjl_prep                QJL keys: projects the step's queries, qs = S^T q;
//   kv_quant_attention         prefill: 4 rows (token, head) per invocation;
//                              the workgroup walks the pivot, then the store,
//                              then the window, each row masked to what it saw
//                              when it was generated;
//   kv_quant_attention_decode  one token, split-KV over ranges of keys, 4 heads
//                              of a GQA group per invocation (combined by
//                              attention_combine from the lib).

// KvCacheParams, the format ids, the layout's overrides, win_row, bits_of
// and aux_at: lib/kvcache.wgsl.

// Mirrors KvQuantAttentionParams in ops/kv_quant_attention.rs; the fields up
// to `scale` are those of kv_f16_attention.wgsl (lib/softmax4.wgsl reads them).
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
    recent: u32,
    qs_off: u32,    // vec4 offset of the query sketches in scratch
    _p0: u32,
    cache: KvCacheParams,
}

@group(0) @binding(0) var<uniform> p: Params;

@group(0) @binding(1) var<storage, read> q: array<vec4<f32>>;             // [n_tokens, n_heads, 2 * W8]
@group(0) @binding(2) var<storage, read> k_win: array<vec4<u32>>;         // [n_kv_heads, pivot + ring, W8], then S
@group(0) @binding(3) var<storage, read> v_win: array<vec4<u32>>;
@group(0) @binding(4) var<storage, read> k_store: array<u32>;             // rows, aux
@group(0) @binding(5) var<storage, read> v_store: array<u32>;
@group(0) @binding(6) var<storage, read_write> out: array<vec4<f32>>;     // [n_tokens, n_heads, 2 * W8]
@group(0) @binding(7) var<storage, read_write> scratch: array<vec4<f32>>; // records, qs

override W8: u32 = 8u;      // head_dim / 8
override G: u32 = 1u;       // query heads per KV head

const WG: u32 = 64u;        // kv::ATTENTION_WG (tests/tests/contracts.rs)
const SEG_WIN: u32 = 0u;    // pivot rows and the ring, f16
const SEG_STORE: u32 = 1u;  // the quantized store
const SQRT_HALF_PI: f32 = 1.2533141;
override EXACT: u32 = 0u;  // 1: a prompt step reads its own tokens from the window, in f16

// ---------------------------------------------------------------------------
// Decoding 8 dims (8w..8w+7) of a stored row.

struct D8 {
    lo: vec4<f32>,
    hi: vec4<f32>,
}

// `c`: the code words the format needs for these dims (f16: 4 words, q8: 2,
// q4: 1, q2: 1 already shifted to its half), `sw`: the group's scale word.
fn decode8(f: u32, c: vec4<u32>, sw: u32) -> D8 {
    if f == KV_F16 {
        return D8(vec4(unpack2x16float(c.x), unpack2x16float(c.y)), vec4(unpack2x16float(c.z), unpack2x16float(c.w)));
    }
    var lo: vec4<u32>;
    var hi: vec4<u32>;
    if f == KV_Q8 {
        lo = (vec4(c.x) >> vec4(0u, 8u, 16u, 24u)) & vec4(0xffu);
        hi = (vec4(c.y) >> vec4(0u, 8u, 16u, 24u)) & vec4(0xffu);
    } else if f == KV_Q4 {
        lo = (vec4(c.x) >> vec4(0u, 4u, 8u, 12u)) & vec4(0xfu);
        hi = (vec4(c.x) >> vec4(16u, 20u, 24u, 28u)) & vec4(0xfu);
    } else {
        lo = (vec4(c.x) >> vec4(0u, 2u, 4u, 6u)) & vec4(3u);
        hi = (vec4(c.x) >> vec4(8u, 10u, 12u, 14u)) & vec4(3u);
    }
    let sm = unpack2x16float(sw);
    return D8(sm.y + sm.x * vec4<f32>(lo), sm.y + sm.x * vec4<f32>(hi));
}

// Word index of dims 8w.. within a row of format f, and of its scale word.
fn code_at(f: u32, w: u32) -> u32 {
    return select(w * bits_of(f) / 4u, 4u * w, f == KV_F16);
}
fn scale_at(f: u32, w: u32) -> u32 {
    return (HD * bits_of(f) + 31u) / 32u + 8u * w / QG;
}

fn key8(seg: u32, kvh: u32, j: u32, w: u32) -> D8 {
    if seg == SEG_WIN {
        let c = k_win[(kvh * (p.cache.pivot + p.cache.ring) + win_row(j)) * W8 + w];
        return D8(lo4(c), hi4(c));
    }
    let base = (kvh * p.max_ctx + j) * KW;
    let a = base + code_at(KF, w);
    var c = vec4(k_store[a], 0u, 0u, 0u);
    var sw = 0u;
    if KF == KV_F16 {
        c = vec4(c.x, k_store[a + 1u], k_store[a + 2u], k_store[a + 3u]);
    } else {
        if KF == KV_Q8 { c.y = k_store[a + 1u]; }
        if KF == KV_Q2 { c.x >>= 16u * (w & 1u); }
        if KCH == 1u {
            sw = 0x3c00u;   // per channel: the codes themselves (scale 1, min 0), see dim_scores
        } else if KST == 1u {
            // Static per head: the signed codes c - 2^(b-1) (scale 1), see dim_scores.
            sw = pack2x16float(vec2(1.0, -f32(1u << (bits_of(KF) - 1u))));
        } else {
            sw = k_store[base + scale_at(KF, w)];
        }
    }
    return decode8(KF, c, sw);
}

fn value8(seg: u32, kvh: u32, j: u32, w: u32) -> D8 {
    if seg == SEG_WIN {
        let c = v_win[(kvh * (p.cache.pivot + p.cache.ring) + win_row(j)) * W8 + w];
        return D8(lo4(c), hi4(c));
    }
    let base = (kvh * p.max_ctx + j) * VW;
    let a = base + code_at(VF, w);
    var c = vec4(v_store[a], 0u, 0u, 0u);
    var sw = 0u;
    if VF == KV_F16 {
        c = vec4(c.x, v_store[a + 1u], v_store[a + 2u], v_store[a + 3u]);
    } else {
        if VF == KV_Q8 { c.y = v_store[a + 1u]; }
        if VF == KV_Q2 { c.x >>= 16u * (w & 1u); }
        sw = select(v_store[base + scale_at(VF, w)], v_store[v_static_at(kvh)], KST == 1u);
    }
    return decode8(VF, c, sw);
}

// ---------------------------------------------------------------------------
// Scores of a block.

// Keys j..j+3 (clamped to `last`) over dims 8w..8w+7 against the rows whose
// same dims are the columns of qa (0-3) and qb (4-7).
fn scores4(seg: u32, kvh: u32, qa: mat4x4<f32>, qb: mat4x4<f32>, j: u32, last: u32, w: u32) -> mat4x4<f32> {
    let k0 = key8(seg, kvh, min(j, last), w);
    let k1 = key8(seg, kvh, min(j + 1u, last), w);
    let k2 = key8(seg, kvh, min(j + 2u, last), w);
    let k3 = key8(seg, kvh, min(j + 3u, last), w);
    return mat4x4(k0.lo * qa + k0.hi * qb, k1.lo * qa + k1.hi * qb,
                  k2.lo * qa + k2.hi * qb, k3.lo * qa + k3.hi * qb);
}

// Adds b[r] to every score of row r.
fn add_rows(s: Scores, b: vec4<f32>) -> Scores {
    let m = mat4x4(b, b, b, b);
    return Scores(s.s0 + m, s.s1 + m, s.s2 + m, s.s3 + m, s.s4 + m, s.s5 + m, s.s6 + m, s.s7 + m);
}

// Scores of a block of keys decoded dim by dim. Per-channel integer keys
// (store, KCH): q . (min + scale * code) = (q * scale) . code + q . min,
// with the group's scales folded into q once per block (static: the head's
// fixed per-channel ones). Static keys with one scale per head (KST alone):
// their min is -2^(b-1) scale exactly, so q . key = (q * scale) . (code -
// 2^(b-1)), the head's scale folded into q and no bias (signed codes keep
// the sums small, where code and min terms would cancel).
fn dim_scores(seg: u32, kvh: u32, qrow: vec4<u32>, j0: u32, last: u32) -> Scores {
    var s = Scores();
    let chan = seg == SEG_STORE && (KCH == 1u || KST == 1u);
    var bias = vec4(0.0);
    for (var w = 0u; w < W8; w++) {
        let i = qrow + vec4(2u * w);
        var qa = mat4x4(q[i.x], q[i.y], q[i.z], q[i.w]);
        var qb = mat4x4(q[i.x + 1u], q[i.y + 1u], q[i.z + 1u], q[i.w + 1u]);
        if chan {
            var sa: vec4<f32>;
            var sb: vec4<f32>;
            if KST == 1u && KCH == 0u {
                sa = vec4(unpack2x16float(k_store[k_static_at(kvh)]).x);
                sb = sa;
            } else {
                let a = select(aux_at(kvh, j0), k_static_at(kvh), KST == 1u) + 8u * w;
                let c0 = unpack2x16float(k_store[a]);
                let c1 = unpack2x16float(k_store[a + 1u]);
                let c2 = unpack2x16float(k_store[a + 2u]);
                let c3 = unpack2x16float(k_store[a + 3u]);
                let c4 = unpack2x16float(k_store[a + 4u]);
                let c5 = unpack2x16float(k_store[a + 5u]);
                let c6 = unpack2x16float(k_store[a + 6u]);
                let c7 = unpack2x16float(k_store[a + 7u]);
                sa = vec4(c0.x, c1.x, c2.x, c3.x);
                sb = vec4(c4.x, c5.x, c6.x, c7.x);
                bias += vec4(c0.y, c1.y, c2.y, c3.y) * qa + vec4(c4.y, c5.y, c6.y, c7.y) * qb;
            }
            qa = mat4x4(qa[0] * sa, qa[1] * sa, qa[2] * sa, qa[3] * sa);
            qb = mat4x4(qb[0] * sb, qb[1] * sb, qb[2] * sb, qb[3] * sb);
        }
        s.s0 += scores4(seg, kvh, qa, qb, j0, last, w);
        s.s1 += scores4(seg, kvh, qa, qb, j0 + 4u, last, w);
        s.s2 += scores4(seg, kvh, qa, qb, j0 + 8u, last, w);
        s.s3 += scores4(seg, kvh, qa, qb, j0 + 12u, last, w);
        s.s4 += scores4(seg, kvh, qa, qb, j0 + 16u, last, w);
        s.s5 += scores4(seg, kvh, qa, qb, j0 + 20u, last, w);
        s.s6 += scores4(seg, kvh, qa, qb, j0 + 24u, last, w);
        s.s7 += scores4(seg, kvh, qa, qb, j0 + 28u, last, w);
    }
    if chan {
        s = add_rows(s, bias);
    }
    return s;
}

// QJL. Sign bits 8w..8w+7 of a sketch word as +-1, per 4.
fn signs8(word: u32, w: u32) -> D8 {
    let b = word >> (8u * (w & 3u));
    let lo = ((vec4(b) >> vec4(0u, 1u, 2u, 3u)) & vec4(1u)) == vec4(1u);
    let hi = ((vec4(b) >> vec4(4u, 5u, 6u, 7u)) & vec4(1u)) == vec4(1u);
    return D8(select(vec4(-1.0), vec4(1.0), lo), select(vec4(-1.0), vec4(1.0), hi));
}

// S[c, 4i..4i+3]: S is [HD, M] f32 after the key window's rows.
fn s_vec(c: u32, i: u32) -> vec4<f32> {
    return bitcast<vec4<f32>>(k_win[p.cache.sketch_base / 4u + c * (M / 4u) + i]);
}

// <t, sign> over sketch dims 8w..8w+7 for keys j..j+3 (clamped), reading
// sign word `word0 + w / 4` of each row, each key's column times its `f`.
fn qjl4(kvh: u32, ta: mat4x4<f32>, tb: mat4x4<f32>, j: u32, last: u32, w: u32, word0: u32,
        f: vec4<f32>) -> mat4x4<f32> {
    let at = word0 + w / 4u;
    let s0 = signs8(k_store[(kvh * p.max_ctx + min(j, last)) * KW + at], w);
    let s1 = signs8(k_store[(kvh * p.max_ctx + min(j + 1u, last)) * KW + at], w);
    let s2 = signs8(k_store[(kvh * p.max_ctx + min(j + 2u, last)) * KW + at], w);
    let s3 = signs8(k_store[(kvh * p.max_ctx + min(j + 3u, last)) * KW + at], w);
    return mat4x4((s0.lo * ta + s0.hi * tb) * f.x, (s1.lo * ta + s1.hi * tb) * f.y,
                  (s2.lo * ta + s2.hi * tb) * f.z, (s3.lo * ta + s3.hi * tb) * f.w);
}

// The estimator's factors of keys j..j+3: sqrt(pi/2)/M |k_in| (.inl) and
// sqrt(pi/2)/MO |k_out| (.out).
struct Factors {
    inl: vec4<f32>,
    out: vec4<f32>,
}

fn factors4(kvh: u32, j: u32, last: u32) -> Factors {
    let n0 = unpack2x16float(k_store[(kvh * p.max_ctx + min(j, last)) * KW + KW - 1u]);
    let n1 = unpack2x16float(k_store[(kvh * p.max_ctx + min(j + 1u, last)) * KW + KW - 1u]);
    let n2 = unpack2x16float(k_store[(kvh * p.max_ctx + min(j + 2u, last)) * KW + KW - 1u]);
    let n3 = unpack2x16float(k_store[(kvh * p.max_ctx + min(j + 3u, last)) * KW + KW - 1u]);
    return Factors(SQRT_HALF_PI / f32(M) * vec4(n0.x, n1.x, n2.x, n3.x),
                   SQRT_HALF_PI / f32(max(MO, 1u)) * vec4(n0.y, n1.y, n2.y, n3.y));
}

// Column i of a score matrix times f[i].
fn scale_cols(s: mat4x4<f32>, f: vec4<f32>) -> mat4x4<f32> {
    return mat4x4(s[0] * f.x, s[1] * f.y, s[2] * f.z, s[3] * f.w);
}

// The 8-bit outlier codes of keys j..j+3 (clamped) against qs (columns =
// outliers, scaled; components = rows): column i is key i's outlier term.
fn out_codes4(kvh: u32, qs: mat4x4<f32>, j: u32, last: u32) -> mat4x4<f32> {
    let at = M / 32u;
    let w0 = k_store[(kvh * p.max_ctx + min(j, last)) * KW + at];
    let w1 = k_store[(kvh * p.max_ctx + min(j + 1u, last)) * KW + at];
    let w2 = k_store[(kvh * p.max_ctx + min(j + 2u, last)) * KW + at];
    let w3 = k_store[(kvh * p.max_ctx + min(j + 3u, last)) * KW + at];
    let sh = vec4(0u, 8u, 16u, 24u);
    return mat4x4(qs * vec4<f32>((vec4(w0) >> sh) & vec4(0xffu)), qs * vec4<f32>((vec4(w1) >> sh) & vec4(0xffu)),
                  qs * vec4<f32>((vec4(w2) >> sh) & vec4(0xffu)), qs * vec4<f32>((vec4(w3) >> sh) & vec4(0xffu)));
}

// One row's q at channel c (c < HD).
fn q_at(qrow: u32, c: u32) -> f32 {
    return q[qrow + c / 4u][c % 4u];
}

// The outlier factors of a block's 8 groups of 4 keys.
struct OutFactors {
    f0: vec4<f32>, f1: vec4<f32>, f2: vec4<f32>, f3: vec4<f32>,
    f4: vec4<f32>, f5: vec4<f32>, f6: vec4<f32>, f7: vec4<f32>,
}

// QJL scores of a store block (j0 starts a token group): for each row,
// sqrt(pi/2)/M |k_in| <S q_in, sign(S k_in)> + sqrt(pi/2)/MO |k_out|
// <S_o q_out, sign(S_o k_out)>, with S q_in = S q - S q_out and S q_out over
// the group's outlier channels (as QJL's score kernel does); 8-bit outliers
// (OQ8) replace the outlier sketch by q_out . k_out decoded. Sign words are read per 8
// sketch dims, norms once per block.
fn qjl_scores(kvh: u32, qrow: vec4<u32>, srow: vec4<u32>, j0: u32, last: u32) -> Scores {
    let aux = k_store[aux_at(kvh, j0)];
    // qo: columns = outliers, components = rows; so: S rows of the outliers.
    var qo = mat4x4<f32>();
    var so = vec4(0u);   // unused slots read S row 0, times q 0
    for (var o = 0u; o < NOUT; o++) {
        let c = (aux >> (8u * o)) & 0xffu;
        so[o] = c;
        qo[o] = vec4(q_at(qrow.x, c), q_at(qrow.y, c), q_at(qrow.z, c), q_at(qrow.w, c));
    }
    let qot = transpose(qo);
    var s = Scores();
    for (var w = 0u; w < M / 8u; w++) {
        // The outliers' S over these 8 sketch dims (columns = outliers).
        let sa = mat4x4(s_vec(so.x, 2u * w), s_vec(so.y, 2u * w), s_vec(so.z, 2u * w), s_vec(so.w, 2u * w));
        let sb = mat4x4(s_vec(so.x, 2u * w + 1u), s_vec(so.y, 2u * w + 1u), s_vec(so.z, 2u * w + 1u),
                        s_vec(so.w, 2u * w + 1u));
        let i = srow + vec4(2u * w);
        let ta = mat4x4(scratch[i.x], scratch[i.y], scratch[i.z], scratch[i.w]) - sa * qot;
        let tb = mat4x4(scratch[i.x + 1u], scratch[i.y + 1u], scratch[i.z + 1u], scratch[i.w + 1u]) - sb * qot;
        s.s0 += qjl4(kvh, ta, tb, j0, last, w, 0u, vec4(1.0));
        s.s1 += qjl4(kvh, ta, tb, j0 + 4u, last, w, 0u, vec4(1.0));
        s.s2 += qjl4(kvh, ta, tb, j0 + 8u, last, w, 0u, vec4(1.0));
        s.s3 += qjl4(kvh, ta, tb, j0 + 12u, last, w, 0u, vec4(1.0));
        s.s4 += qjl4(kvh, ta, tb, j0 + 16u, last, w, 0u, vec4(1.0));
        s.s5 += qjl4(kvh, ta, tb, j0 + 20u, last, w, 0u, vec4(1.0));
        s.s6 += qjl4(kvh, ta, tb, j0 + 24u, last, w, 0u, vec4(1.0));
        s.s7 += qjl4(kvh, ta, tb, j0 + 28u, last, w, 0u, vec4(1.0));
    }
    var fo: OutFactors;
    var f = factors4(kvh, j0, last); s.s0 = scale_cols(s.s0, f.inl); fo.f0 = f.out;
    f = factors4(kvh, j0 + 4u, last); s.s1 = scale_cols(s.s1, f.inl); fo.f1 = f.out;
    f = factors4(kvh, j0 + 8u, last); s.s2 = scale_cols(s.s2, f.inl); fo.f2 = f.out;
    f = factors4(kvh, j0 + 12u, last); s.s3 = scale_cols(s.s3, f.inl); fo.f3 = f.out;
    f = factors4(kvh, j0 + 16u, last); s.s4 = scale_cols(s.s4, f.inl); fo.f4 = f.out;
    f = factors4(kvh, j0 + 20u, last); s.s5 = scale_cols(s.s5, f.inl); fo.f5 = f.out;
    f = factors4(kvh, j0 + 24u, last); s.s6 = scale_cols(s.s6, f.inl); fo.f6 = f.out;
    f = factors4(kvh, j0 + 28u, last); s.s7 = scale_cols(s.s7, f.inl); fo.f7 = f.out;
    for (var w = 0u; w < MO / 8u; w++) {
        let ta = mat4x4(s_vec(so.x, 2u * w), s_vec(so.y, 2u * w), s_vec(so.z, 2u * w), s_vec(so.w, 2u * w)) * qot;
        let tb = mat4x4(s_vec(so.x, 2u * w + 1u), s_vec(so.y, 2u * w + 1u), s_vec(so.z, 2u * w + 1u),
                        s_vec(so.w, 2u * w + 1u)) * qot;
        s.s0 += qjl4(kvh, ta, tb, j0, last, w, M / 32u, fo.f0);
        s.s1 += qjl4(kvh, ta, tb, j0 + 4u, last, w, M / 32u, fo.f1);
        s.s2 += qjl4(kvh, ta, tb, j0 + 8u, last, w, M / 32u, fo.f2);
        s.s3 += qjl4(kvh, ta, tb, j0 + 12u, last, w, M / 32u, fo.f3);
        s.s4 += qjl4(kvh, ta, tb, j0 + 16u, last, w, M / 32u, fo.f4);
        s.s5 += qjl4(kvh, ta, tb, j0 + 20u, last, w, M / 32u, fo.f5);
        s.s6 += qjl4(kvh, ta, tb, j0 + 24u, last, w, M / 32u, fo.f6);
        s.s7 += qjl4(kvh, ta, tb, j0 + 28u, last, w, M / 32u, fo.f7);
    }
    if OQ8 == 1u {
        // 8-bit outliers: q_out . (min + scale * code) per key, the group's
        // scales folded into q_out (qo) once per block.
        var sc = vec4(0.0);
        var mn = vec4(0.0);
        for (var o = 0u; o < NOUT; o++) {
            let sm = unpack2x16float(k_store[aux_at(kvh, j0) + 1u + o]);
            sc[o] = sm.x;
            mn[o] = sm.y;
        }
        let qs = mat4x4(qo[0] * sc.x, qo[1] * sc.y, qo[2] * sc.z, qo[3] * sc.w);
        s.s0 += out_codes4(kvh, qs, j0, last);
        s.s1 += out_codes4(kvh, qs, j0 + 4u, last);
        s.s2 += out_codes4(kvh, qs, j0 + 8u, last);
        s.s3 += out_codes4(kvh, qs, j0 + 12u, last);
        s.s4 += out_codes4(kvh, qs, j0 + 16u, last);
        s.s5 += out_codes4(kvh, qs, j0 + 20u, last);
        s.s6 += out_codes4(kvh, qs, j0 + 24u, last);
        s.s7 += out_codes4(kvh, qs, j0 + 28u, last);
        s = add_rows(s, qo * mn);
    }
    return s;
}

// Scores, running max m and sum l for keys j0..j0+31 of segment `seg`
// (reads clamped to `last`; a row sees the keys in [lo, hi)).
fn block(seg: u32, kvh: u32, qrow: vec4<u32>, srow: vec4<u32>, j0: u32, last: u32, lo: vec4<u32>, hi: vec4<u32>,
         m: ptr<function, vec4<f32>>, l: ptr<function, vec4<f32>>) -> Block {
    var s: Scores;
    if seg == SEG_STORE && KF == KV_QJL {
        s = qjl_scores(kvh, qrow, srow, j0, last);
    } else {
        s = dim_scores(seg, kvh, qrow, j0, last);
    }
    return softmax_block(s, j0, lo, hi, p.scale, m, l);
}

fn values4(seg: u32, kvh: u32, j: u32, last: u32, w: u32) -> Values4 {
    let v0 = value8(seg, kvh, min(j, last), w);
    let v1 = value8(seg, kvh, min(j + 1u, last), w);
    let v2 = value8(seg, kvh, min(j + 2u, last), w);
    let v3 = value8(seg, kvh, min(j + 3u, last), w);
    return Values4(mat4x4(v0.lo, v1.lo, v2.lo, v3.lo), mat4x4(v0.hi, v1.hi, v2.hi, v3.hi));
}

// P V of the block over dims 8w..8w+7: column i of .lo / .hi holds dims
// 8w..8w+3 / 8w+4..8w+7 of row i.
fn block_pv(b: Block, seg: u32, kvh: u32, j0: u32, last: u32, w: u32) -> Values4 {
    var v = values4(seg, kvh, j0, last, w);
    var o = Values4(v.lo * b.p0, v.hi * b.p0);
    v = values4(seg, kvh, j0 + 4u, last, w); o.lo += v.lo * b.p1; o.hi += v.hi * b.p1;
    v = values4(seg, kvh, j0 + 8u, last, w); o.lo += v.lo * b.p2; o.hi += v.hi * b.p2;
    v = values4(seg, kvh, j0 + 12u, last, w); o.lo += v.lo * b.p3; o.hi += v.hi * b.p3;
    v = values4(seg, kvh, j0 + 16u, last, w); o.lo += v.lo * b.p4; o.hi += v.hi * b.p4;
    v = values4(seg, kvh, j0 + 20u, last, w); o.lo += v.lo * b.p5; o.hi += v.hi * b.p5;
    v = values4(seg, kvh, j0 + 24u, last, w); o.lo += v.lo * b.p6; o.hi += v.hi * b.p6;
    v = values4(seg, kvh, j0 + 28u, last, w); o.lo += v.lo * b.p7; o.hi += v.hi * b.p7;
    return o;
}

// End of the store when `len` tokens are in the cache (KvLayout::boundary).
fn store_end(len: vec4<u32>) -> vec4<u32> {
    let old = select(vec4(0u), len - vec4(p.cache.pivot + p.recent), len > vec4(p.cache.pivot + p.recent));
    return vec4(p.cache.pivot) + old / granule() * granule();
}

// ---------------------------------------------------------------------------
// QJL query sketches: one invocation per (row, 4 sketch dims).

@compute @workgroup_size(WG)
fn kv_qjl_prep(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * nwg.x) * WG + lid;
    let m4 = M / 4u;
    if i >= p.n_tokens * p.n_heads * m4 { return; }
    let row = i / m4;
    let d = i % m4;
    var acc = vec4(0.0);
    for (var c = 0u; c < HD; c++) {
        acc += q_at(row * 2u * W8, c) * s_vec(c, d);
    }
    scratch[p.qs_off + i] = acc;
}

// ---------------------------------------------------------------------------
// Prefill: 4 rows (token, head-in-group) per invocation, keys uniform over
// the workgroup: the pivot [0, P) for every row; the store [P, B_max) where
// a row sees keys below its own B; the window [B_min, kend) where a row sees
// keys from its B up to itself.

// The running softmax state of an invocation lives in its entry's locals
// m, l and fresh (whether nothing has been accumulated yet), passed by
// pointer (naga's SPIR-V writer cannot take pointers into a struct here).

// Blocks from k0 to k1 of segment `seg`, each row seeing the keys in
// [lo, hi), folded into the running softmax (m, l, fresh) and accumulated at
// the rows' words `at0` + 2w: in `out` (prefill, normalised at the end) or
// in the decode records in `scratch`.
fn kv_pass(seg: u32, kvh: u32, qrow: vec4<u32>, srow: vec4<u32>, ok: vec4<bool>, at0: vec4<u32>, to_scratch: bool,
           k0: u32, k1: u32, lo: vec4<u32>, hi: vec4<u32>, m: ptr<function, vec4<f32>>,
           l: ptr<function, vec4<f32>>, fresh: ptr<function, bool>) {
    for (var j0 = k0; j0 < k1; j0 += KB) {
        let b = block(seg, kvh, qrow, srow, j0, k1 - 1u, lo, hi, m, l);
        for (var w = 0u; w < W8; w++) {
            let o = block_pv(b, seg, kvh, j0, k1 - 1u, w);
            let at = at0 + vec4(2u * w);
            if to_scratch {
                accumulate_scratch4(at, o, b.alpha, *fresh, ok);
            } else {
                accumulate_out4(at, o, b.alpha, vec4(1.0), *fresh, ok);
            }
        }
        *fresh = false;
    }
}

@compute @workgroup_size(WG)
fn kv_quant_attention(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let rows = p.n_tokens * G;
    let n_rt = (rows + 4u * WG - 1u) / (4u * WG);
    let id = wid.x + wid.y * nwg.x;
    if id >= n_rt * p.n_kv_heads { return; }
    let rt = id % n_rt;
    let kvh = id / n_rt;
    // The workgroup's first and last tokens.
    let t_first = rt * 4u * WG / G;
    let t_last = (min((rt + 1u) * 4u * WG, rows) - 1u) / G;
    let kend = p.pos + t_last + 1u;
    var b_min = store_end(vec4(p.pos + t_first + 1u)).x;
    var b_max = store_end(vec4(kend)).x;
    // Exact prompt: the store ends where it ended before this step; the
    // ring still holds every row from there (at most R + 31 + n_tokens).
    let b_step = store_end(vec4(p.pos)).x;
    if EXACT == 1u {
        b_min = min(b_min, b_step);
        b_max = min(b_max, b_step);
    }

    let r4 = vec4((rt * WG + lid) * 4u) + vec4(0u, 1u, 2u, 3u);
    if r4.x >= rows { return; }
    let ok = r4 < vec4(rows);
    let r = min(r4, vec4(rows - 1u));
    let tok = r / G;
    let head = vec4(kvh * G) + r % G;
    let limit = vec4(p.pos + 1u) + tok;              // causal: keys < limit
    var b = store_end(limit);
    if EXACT == 1u {
        b = min(b, vec4(b_step));
    }
    let qrow = (tok * p.n_heads + head) * 2u * W8;
    let srow = vec4(p.qs_off) + (tok * p.n_heads + head) * (M / 4u);

    var m = vec4(NEG);
    var l = vec4(0.0);
    var fresh = true;
    // The front rows (pivot and sink tokens), causal where the prompt itself fills them.
    kv_pass(SEG_WIN, kvh, qrow, srow, ok, qrow, false, 0u, p.cache.pivot, vec4(0u), min(vec4(p.cache.pivot), limit), &m, &l,
            &fresh);
    kv_pass(SEG_STORE, kvh, qrow, srow, ok, qrow, false, p.cache.pivot, b_max, vec4(p.cache.pivot), b, &m, &l, &fresh);
    kv_pass(SEG_WIN, kvh, qrow, srow, ok, qrow, false, b_min, kend, b, limit, &m, &l, &fresh);
    // Normalise: out = out / l.
    let zero = Values4(mat4x4<f32>(), mat4x4<f32>());
    for (var w = 0u; w < W8; w++) {
        accumulate_out4(qrow + vec4(2u * w), zero, vec4(1.0), 1.0 / l, false, ok);
    }
}

// The one sequence's split (lib/softmax4.wgsl; this cache serves one
// sequence a call).
fn decode_seq(z: u32) -> DecodeSeq {
    return DecodeSeq(p.kv_len, p.n_chunks, p.chunk_len, 0u, 0u, 0u);
}

// ---------------------------------------------------------------------------
// Split-KV decode: one key range [c0, c1) and 4 query heads of a group per
// invocation; the range meets the pivot, the store (blocks aligned to token
// groups from P) and the window.

@compute @workgroup_size(WG)
fn kv_quant_attention_decode(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                       @builtin(local_invocation_index) lid: u32) {
    let sl = decode_slot(wid.x + wid.y * nwg.x, lid, decode_seq(0u));
    if !sl.valid { return; }
    let kvh = sl.kvh;
    let ok = sl.ok;
    let c0 = sl.c0;
    let c1 = sl.c1;
    let qrow = sl.head * 2u * W8;
    let srow = vec4(p.qs_off) + sl.head * (M / 4u);
    let at0 = sl.rec + vec4(1u);
    let b = store_end(vec4(p.kv_len)).x;

    var m = vec4(NEG);
    var l = vec4(0.0);
    var fresh = true;
    // Pivot keys in the range.
    let pv = min(c1, p.cache.pivot);
    kv_pass(SEG_WIN, kvh, qrow, srow, ok, at0, true, c0, pv, vec4(c0), vec4(pv), &m, &l, &fresh);
    // Store keys in the range, from the start of c0's token group.
    let s0 = max(c0, p.cache.pivot);
    let s1 = min(c1, b);
    if s0 < s1 {
        let g0 = p.cache.pivot + (s0 - p.cache.pivot) / KB * KB;
        kv_pass(SEG_STORE, kvh, qrow, srow, ok, at0, true, g0, s1, vec4(s0), vec4(s1), &m, &l, &fresh);
    }
    // Window keys in the range.
    kv_pass(SEG_WIN, kvh, qrow, srow, ok, at0, true, max(c0, b), c1, vec4(c0), vec4(c1), &m, &l, &fresh);
    store_records(sl, m, l);
}
