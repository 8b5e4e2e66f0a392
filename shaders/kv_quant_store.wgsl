// kv_quant_store.wgsl: the write side of the quantized KV cache (see
// engine/src/kv/mod.rs for segments, formats and layouts, and
// ops/kv_quant_store.rs).
//
//   kv_ring_write  the step's K and V rows into the f16 window ring, one u32
//                  word (two f16) per invocation;
//   kv_flush       one invocation per (position, KV head) of the groups that
//                  leave the window this step: quantizes the row from the
//                  ring into the store (QJL keys: picks the group's outlier
//                  channels, projects, packs signs, stores the norms;
//                  per-channel integer keys: the group's scales first).

// KvCacheParams, the format ids, the layout's overrides, win_row, bits_of
// and aux_at: lib/kvcache.wgsl.

// Mirrors KvQuantStoreParams in ops/kv_quant_store.rs.
struct Params {
    n_tokens: u32,
    pos: u32,
    n_kv_heads: u32,
    max_ctx: u32,
    lo: u32,        // first position to flush
    hi: u32,        // end of the flush
    _p0: u32,
    _p1: u32,
    cache: KvCacheParams,
}

@group(0) @binding(0) var<uniform> p: Params;

@group(0) @binding(1) var<storage, read> k: array<vec2<f32>>;         // [n_tokens, n_kv_heads, HD]
@group(0) @binding(2) var<storage, read> v: array<vec2<f32>>;
@group(0) @binding(3) var<storage, read_write> k_win: array<u32>;     // [n_kv_heads, pivot + ring, HD / 2], then S
@group(0) @binding(4) var<storage, read_write> v_win: array<u32>;
@group(0) @binding(5) var<storage, read_write> k_store: array<u32>;   // rows, aux
@group(0) @binding(6) var<storage, read_write> v_store: array<u32>;

const WG: u32 = 64u;
const T: u32 = 32u;         // tokens per flush group
@compute @workgroup_size(WG)
fn kv_ring_write(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * nwg.x) * WG + lid;
    let rw = HD / 2u;
    if i >= p.n_tokens * p.n_kv_heads * rw { return; }
    let w = i % rw;
    let row = i / rw;               // token * n_kv_heads + head
    let head = row % p.n_kv_heads;
    let tok = row / p.n_kv_heads;
    let dst = (head * (p.cache.pivot + p.cache.ring) + win_row(p.pos + tok)) * rw + w;
    k_win[dst] = to_f16x2(k[i]);
    v_win[dst] = to_f16x2(v[i]);
}

// ---------------------------------------------------------------------------
// Flush. A row is read from the window into `x` first.

var<private> x: array<f32, 256>;

fn load_row(is_k: bool, head: u32, j: u32) {
    let src = (head * (p.cache.pivot + p.cache.ring) + win_row(j)) * (HD / 2u);
    for (var w = 0u; w < HD / 2u; w++) {
        let pair = unpack2x16float(select(v_win[src + w], k_win[src + w], is_k));
        x[2u * w] = pair.x;
        x[2u * w + 1u] = pair.y;
    }
}

// (scale, min) of each group of QG channels of x, rounded to f16 as stored,
// so codes are computed against the stored values (HD / QG <= 32).
var<private> sms: array<vec2<f32>, 32>;

fn group_scales(levels: f32) {
    for (var g = 0u; g < HD / QG; g++) {
        var mn = x[g * QG];
        var mx = mn;
        for (var c = g * QG + 1u; c < (g + 1u) * QG; c++) {
            mn = min(mn, x[c]);
            mx = max(mx, x[c]);
        }
        sms[g] = unpack2x16float(to_f16x2(vec2((mx - mn) / levels, mn)));
    }
}

// Per-channel (scale, min) of a key group (KCH), f16-rounded as stored.
var<private> csm: array<vec2<f32>, 256>;

// csm over key rows g0..g0+T of `head` at `bits` per code.
fn channel_scales(head: u32, g0: u32, bits: u32) {
    for (var t = 0u; t < T; t++) {
        load_row(true, head, g0 + t);
        for (var c = 0u; c < HD; c++) {
            csm[c] = select(vec2(max(csm[c].x, x[c]), min(csm[c].y, x[c])), vec2(x[c]), t == 0u);
        }
    }
    let levels = f32((1u << bits) - 1u);
    for (var c = 0u; c < HD; c++) {
        csm[c] = unpack2x16float(to_f16x2(vec2((csm[c].x - csm[c].y) / levels, csm[c].y)));
    }
}

// The code of channel c of x against (scale, min) `sm`, at `levels`.
fn code_of(c: u32, sm: vec2<f32>, levels: f32) -> u32 {
    let inv = select(0.0, 1.0 / sm.x, sm.x > 0.0);
    return u32(clamp(round((x[c] - sm.y) * inv), 0.0, levels));
}

// Code word `i` of the row at `bits` per code, against the scales in `sms`
// (per channel: in `csm`).
fn code_word(i: u32, bits: u32, chan: bool) -> u32 {
    let levels = f32((1u << bits) - 1u);
    let per = 32u / bits;
    var word = 0u;
    for (var e = 0u; e < per; e++) {
        let c = i * per + e;
        if c >= HD { break; }
        word |= code_of(c, select(sms[c / QG], csm[c], chan), levels) << (e * bits);
    }
    return word;
}

// First position of j's token group.
fn group_start(j: u32) -> u32 {
    return p.cache.pivot + (j - p.cache.pivot) / T * T;
}

// Writes row x of KV head `head` in format f (f16 or integer) to the key or
// value store at word `dst`.
fn store_int(is_k: bool, f: u32, head: u32, dst: u32) {
    if f == KV_F16 {
        for (var w = 0u; w < HD / 2u; w++) {
            let word = to_f16x2(vec2(x[2u * w], x[2u * w + 1u]));
            if is_k { k_store[dst + w] = word; } else { v_store[dst + w] = word; }
        }
        return;
    }
    let b = bits_of(f);
    if KST == 1u {
        // Static: the head's one (scale, min) for every channel (whatever
        // QG is: the layout does not check it), not stored per row.
        let sm = unpack2x16float(select(v_store[v_static_at(head)], k_store[k_static_at(head)], is_k));
        for (var g = 0u; g < 32u; g++) { sms[g] = sm; }
    } else {
        group_scales(f32((1u << b) - 1u));
    }
    let n_codes = (HD * b + 31u) / 32u;
    for (var i = 0u; i < n_codes; i++) {
        let word = code_word(i, b, false);
        if is_k { k_store[dst + i] = word; } else { v_store[dst + i] = word; }
    }
    if KST == 1u { return; }
    for (var g = 0u; g < HD / QG; g++) {
        let word = pack2x16float(sms[g]);
        if is_k { k_store[dst + n_codes + g] = word; } else { v_store[dst + n_codes + g] = word; }
    }
}

// S[c, 4i..4i+3] (S is [HD, M] f32 bits after the key window's rows).
fn s4(c: u32, i: u32) -> vec4<f32> {
    let o = p.cache.sketch_base + c * M + 4u * i;
    return vec4(bitcast<f32>(k_win[o]), bitcast<f32>(k_win[o + 1u]),
                bitcast<f32>(k_win[o + 2u]), bitcast<f32>(k_win[o + 3u]));
}

fn sign_bits(a: vec4<f32>, shift: u32) -> u32 {
    let b = select(vec4(0u), vec4(1u), a > vec4(0.0));
    return (b.x | (b.y << 1u) | (b.z << 2u) | (b.w << 3u)) << shift;
}

// Sign word `sw` (sketch rows 32sw..32sw+31) of S x over the channels `inl`
// selects: not the outliers (inl) or only them (!inl).
fn sketch_word(sw: u32, out_idx: vec4<u32>, inl: bool) -> u32 {
    var a0 = vec4(0.0); var a1 = vec4(0.0); var a2 = vec4(0.0); var a3 = vec4(0.0);
    var a4 = vec4(0.0); var a5 = vec4(0.0); var a6 = vec4(0.0); var a7 = vec4(0.0);
    for (var c = 0u; c < HD; c++) {
        let is_out = any(vec4(c) == out_idx);
        if is_out == inl || x[c] == 0.0 { continue; }
        let xc = x[c];
        let b = 8u * sw;
        a0 += xc * s4(c, b); a1 += xc * s4(c, b + 1u); a2 += xc * s4(c, b + 2u); a3 += xc * s4(c, b + 3u);
        a4 += xc * s4(c, b + 4u); a5 += xc * s4(c, b + 5u); a6 += xc * s4(c, b + 6u); a7 += xc * s4(c, b + 7u);
    }
    return sign_bits(a0, 0u) | sign_bits(a1, 4u) | sign_bits(a2, 8u) | sign_bits(a3, 12u)
         | sign_bits(a4, 16u) | sign_bits(a5, 20u) | sign_bits(a6, 24u) | sign_bits(a7, 28u);
}

const NONE: u32 = 0xffffffffu;   // an unused outlier slot (stored as byte 0xff)

// The NOUT channels with the largest norm over group `g0..g0+T` of KV head
// `head` (largest first, ties to the lower channel), unused slots NONE.
fn outlier_channels(head: u32, g0: u32) -> vec4<u32> {
    var norms: array<f32, 256>;
    for (var t = 0u; t < T; t++) {
        load_row(true, head, g0 + t);
        for (var c = 0u; c < HD; c++) { norms[c] += x[c] * x[c]; }
    }
    var idx = vec4(NONE);
    for (var o = 0u; o < NOUT; o++) {
        var best = -1.0;
        var bi = 0u;
        for (var c = 0u; c < HD; c++) {
            if !any(vec4(c) == idx) && norms[c] > best {
                best = norms[c];
                bi = c;
            }
        }
        idx[o] = bi;
    }
    return idx;
}

fn store_qjl(head: u32, j: u32) {
    let g0 = group_start(j);
    let aux = aux_at(head, j);
    var idx = vec4(NONE);
    if NOUT > 0u {
        idx = outlier_channels(head, g0);
        if j == g0 {
            k_store[aux] = dot(idx & vec4(0xffu), vec4(1u, 1u << 8u, 1u << 16u, 1u << 24u));
        }
    }
    // 8-bit outliers: the group's per-channel 8-bit scales (csm); the
    // outlier channels' are stored.
    if OQ8 == 1u {
        channel_scales(head, g0, 8u);
        for (var o = 0u; o < NOUT; o++) {
            if j == g0 { k_store[aux + 1u + o] = pack2x16float(csm[idx[o]]); }
        }
    }
    load_row(true, head, j);
    let dst = (head * p.max_ctx + j) * KW;
    for (var sw = 0u; sw < M / 32u; sw++) {
        k_store[dst + sw] = sketch_word(sw, idx, true);
    }
    for (var sw = 0u; sw < MO / 32u; sw++) {
        k_store[dst + M / 32u + sw] = sketch_word(sw, idx, false);
    }
    if OQ8 == 1u {
        var word = 0u;
        for (var o = 0u; o < NOUT; o++) {
            word |= code_of(idx[o], csm[idx[o]], 255.0) << (8u * o);
        }
        k_store[dst + M / 32u] = word;
    }
    var n_in = 0.0;
    var n_out = 0.0;
    for (var c = 0u; c < HD; c++) {
        if any(vec4(c) == idx) { n_out += x[c] * x[c]; } else { n_in += x[c] * x[c]; }
    }
    k_store[dst + KW - 1u] = to_f16x2(vec2(sqrt(n_in), sqrt(n_out)));
}

@compute @workgroup_size(WG)
fn kv_flush(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * nwg.x) * WG + lid;
    if i >= (p.hi - p.lo) * p.n_kv_heads { return; }
    let head = i % p.n_kv_heads;
    let j = p.lo + i / p.n_kv_heads;
    if KF == KV_QJL {
        store_qjl(head, j);
    } else if KCH == 1u {
        // Integer keys per channel: codes only, the group's scales in aux
        // (static: the head's fixed ones).
        let g0 = group_start(j);
        let b = bits_of(KF);
        if KST == 1u {
            for (var c = 0u; c < HD; c++) { csm[c] = unpack2x16float(k_store[k_static_at(head) + c]); }
        } else {
            channel_scales(head, g0, b);
            if j == g0 {
                for (var c = 0u; c < HD; c++) { k_store[aux_at(head, j) + c] = pack2x16float(csm[c]); }
            }
        }
        load_row(true, head, j);
        let dst = (head * p.max_ctx + j) * KW;
        for (var i = 0u; i < (HD * b + 31u) / 32u; i++) { k_store[dst + i] = code_word(i, b, true); }
    } else {
        load_row(true, head, j);
        store_int(true, KF, head, (head * p.max_ctx + j) * KW);
    }
    load_row(false, head, j);
    store_int(false, VF, head, (head * p.max_ctx + j) * VW);
}
