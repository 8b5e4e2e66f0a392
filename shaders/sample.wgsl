// sample.wgsl: token sampling on the GPU, two entry points (engine/src/ops/sample.rs
// has the math, the order of the chain and the buffer layouts).
//
// sample_scan (one invocation per PER logits, no barriers): cleaned logits
//   to scratch[0, vocab), and per-invocation partials: max, lowest id at the
//   max, sum exp(l - max), sum exp((l - max) / T).
// sample_pick (one workgroup): the repetition penalty, the merge of the
//   partials, then greedy, or top-k / top-p / draw over tokens in "rank
//   order" (logit descending, id ascending) with exact selections: a radix
//   select over the 64-bit composite (key(logit), vocab - 1 - id) finds the
//   token at which a running count or probability mass reaches a goal, so
//   no cut is ever capped. The common case (top_k <= CAP, or the nucleus
//   and the draw inside the top CAP tokens) works on the CAP best tokens
//   sorted in workgroup memory instead.

struct Params {
    vocab: u32,
    n_wg: u32,
    hist_cap: u32,
    top_k: u32,
    temperature: f32,
    inv_temperature: f32,
    top_p: f32,
    uniform: f32,
    penalty: f32,
    inv_penalty: f32,
    id_digits: u32,
    id_bytes: u32,
    n_valid_part: u32,
    _p0: u32,
    _p1: u32,
    _p2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read> history: array<u32>;
@group(0) @binding(3) var<storage, read_write> scratch: array<u32>;
@group(0) @binding(4) var<storage, read_write> out: array<u32>;

const WG: u32 = 256u;
const PER: u32 = 16u;
const CHUNK: u32 = 4096u; // WG * PER, mirrors sample.rs
const CAP: u32 = 1024u;   // mirrors sample.rs
// The largest finite f32 (3.40282347e38 is just above it, which WGSL's
// compilers in browsers reject as unrepresentable; this rounds to it).
const F32_MAX: f32 = 3.4028234e38;

// sample_pick's workgroup memory (~13.5 KiB of WebGPU's 16 KiB): reductions,
// then the sorted candidates (keys and ids).
var<workgroup> red4: array<vec4<f32>, WG>;
var<workgroup> ck: array<u32, CAP>;
var<workgroup> ci: array<u32, CAP>;

// Reductions in two levels of 16 (16 lanes combine 16 values each, then
// every lane the 16 results): three barriers instead of a tree's nine, for
// sample_pick, which reduces in loops.

// Sum of `v` over the workgroup.
fn sum4(lid: u32, v: vec4<f32>) -> vec4<f32> {
    red4[lid] = v;
    workgroupBarrier();
    if lid < 16u {
        var s = red4[16u * lid];
        for (var j = 1u; j < 16u; j++) { s += red4[16u * lid + j]; }
        red4[16u * lid] = s;
    }
    workgroupBarrier();
    var r = red4[0];
    for (var j = 1u; j < 16u; j++) { r += red4[16u * j]; }
    workgroupBarrier();
    return r;
}

// Largest `v` over the workgroup with the lowest `id` among equals. Uses
// the candidate arrays ck/ci (free until the candidates are gathered) to
// stay within WebGPU's 16 KiB of workgroup memory.
fn argmax(lid: u32, v: f32, id: u32) -> vec2<u32> {
    ck[lid] = bitcast<u32>(v);
    ci[lid] = id;
    workgroupBarrier();
    if lid < 16u {
        var bv = bitcast<f32>(ck[16u * lid]);
        var bi = ci[16u * lid];
        for (var j = 1u; j < 16u; j++) {
            let ov = bitcast<f32>(ck[16u * lid + j]);
            let oi = ci[16u * lid + j];
            if ov > bv || (ov == bv && oi < bi) {
                bv = ov;
                bi = oi;
            }
        }
        ck[16u * lid] = bitcast<u32>(bv);
        ci[16u * lid] = bi;
    }
    workgroupBarrier();
    var bv = bitcast<f32>(ck[0]);
    var bi = ci[0];
    for (var j = 1u; j < 16u; j++) {
        let ov = bitcast<f32>(ck[16u * j]);
        let oi = ci[16u * j];
        if ov > bv || (ov == bv && oi < bi) {
            bv = ov;
            bi = oi;
        }
    }
    workgroupBarrier();
    return vec2<u32>(bitcast<u32>(bv), bi);
}

// ---------------------------------------------------------------- pass 1

// Logit i after the clean-up every token gets: NaN ranks last, infinities
// become the largest finite values.
fn clean(x: f32) -> f32 {
    return clamp(select(x, -F32_MAX, x != x), -F32_MAX, F32_MAX);
}

// Invocation j (of the scan grid) owns logits g * CHUNK + k * WG + l,
// k < PER, with g = j / WG, l = j % WG: its partial is their max, the
// lowest id at the max, sum exp(l - max) and sum exp((l - max) / T), read
// from scratch and stored at scratch[vocab + 4j ..].
fn store_partial(j: u32) {
    let base = (j / WG) * CHUNK + j % WG;
    var best = -F32_MAX;
    var best_id = 0xffffffffu;
    for (var k = 0u; k < PER; k++) {
        let i = base + k * WG;
        if i < p.vocab {
            let x = bitcast<f32>(scratch[i]);
            // i grows with k, so strict > keeps the lowest id among equals.
            if x > best || best_id == 0xffffffffu {
                best = x;
                best_id = i;
            }
        }
    }
    var s1 = 0.0;
    var st = 0.0;
    for (var k = 0u; k < PER; k++) {
        let i = base + k * WG;
        if i < p.vocab {
            let d = bitcast<f32>(scratch[i]) - best;
            s1 += exp(d);
            // Unconditional (inv_temperature is 0 for greedy): a branch here
            // made llvmpipe's scan 4x slower.
            st += exp(d * p.inv_temperature);
        }
    }
    let o = p.vocab + 4u * j;
    scratch[o] = bitcast<u32>(best);
    scratch[o + 1u] = best_id;
    scratch[o + 2u] = bitcast<u32>(s1);
    scratch[o + 3u] = bitcast<u32>(st);
}

// No workgroup memory and no barriers: per-invocation partials, merged by
// sample_pick. (llvmpipe runs a shader with barriers as coroutines, several
// times slower; on GPUs the merge of vocab / PER partials is cheap.) The
// repetition penalty is applied by sample_pick, which also redoes the
// partials it touches.
@compute @workgroup_size(WG)
fn sample_scan(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let g = wid.x + wid.y * nwg.x;
    if g >= p.n_wg { return; }
    for (var k = 0u; k < PER; k++) {
        let i = g * CHUNK + k * WG + lid;
        if i < p.vocab { scratch[i] = bitcast<u32>(clean(logits[i])); }
    }
    store_partial(g * WG + lid);
}

// ---------------------------------------------------------------- pass 2

// Rank order key: larger logit first, then smaller id. Composite
// c = (key(logit), vocab - 1 - id); c1 precedes c2 iff c1 > c2 (lexicographic).
fn key_bits(b: u32) -> u32 {
    return select(b | 0x80000000u, ~b, (b & 0x80000000u) != 0u);
}
fn comp(i: u32) -> vec2<u32> {
    return vec2<u32>(key_bits(scratch[i]), p.vocab - 1u - i);
}
fn ge(a: vec2<u32>, b: vec2<u32>) -> bool {
    return a.x > b.x || (a.x == b.x && a.y >= b.y);
}

struct Merged {
    m: f32,
    best: u32,
    z1: f32,
    zt: f32,
}

// State of a radix select, decided by invocation 0 and read back uniformly.
struct Select {
    pre: vec2<u32>,
    mask: vec2<u32>,
    above: f32,
    single: u32,
}

// A decision of invocation 0 for the whole workgroup.
struct Decide {
    n: u32,
    found: u32,
    token: u32,
    z: f32,
}

var<workgroup> merged: Merged;
var<workgroup> sel: Select;
var<workgroup> hist_m: array<f32, 16>;
var<workgroup> hist_c: array<f32, 16>;
var<workgroup> hit: vec2<u32>;
var<workgroup> decide: Decide;
var<workgroup> n_cand: atomic<u32>;

const W_MASS1: u32 = 1u; // exp(l - m): probabilities at temperature 1 (top-p)
const W_MASST: u32 = 2u; // exp((l - m) / T): the draw

fn weight(mode: u32, bits: u32, m: f32) -> f32 {
    let d = bitcast<f32>(bits) - m;
    return exp(select(d * p.inv_temperature, d, mode == W_MASS1));
}

// Sum of weights over tokens with comp >= lim.
fn sum_weight(lid: u32, mode: u32, m: f32, lim: vec2<u32>) -> f32 {
    var s = 0.0;
    for (var i = lid; i < p.vocab; i += WG) {
        if ge(comp(i), lim) { s += weight(mode, scratch[i], m); }
    }
    return sum4(lid, vec4<f32>(s, 0.0, 0.0, 0.0)).x;
}

// Among tokens with comp >= lim, in rank order, the composite of the first
// token at which the running weight reaches `goal` (> when `strict`, else
// >=); the last such token if it never does (rounding). Four bits a round,
// from the key's top; stops early once one token is left in the range.
fn radix_select(lid: u32, mode: u32, m: f32, goal: f32, strict: bool, lim: vec2<u32>) -> vec2<u32> {
    if lid == 0u { sel = Select(vec2<u32>(0u), vec2<u32>(0u), 0.0, 0u); }
    var s = workgroupUniformLoad(&sel);
    let rounds = 8u + p.id_digits;
    for (var r = 0u; r < rounds; r++) {
        let word = select(1u, 0u, r < 8u);
        let shift = select(4u * (p.id_digits - 1u - (r - 8u)), 28u - 4u * r, r < 8u);
        var bm: array<f32, 16>;
        var bc: array<f32, 16>;
        for (var i = lid; i < p.vocab; i += WG) {
            let c = comp(i);
            if ge(c, lim) && all((c & s.mask) == s.pre) {
                let d = (c[word] >> shift) & 15u;
                bm[d] += weight(mode, scratch[i], m);
                bc[d] += 1.0;
            }
        }
        for (var q = 0u; q < 4u; q++) {
            let a = sum4(lid, vec4<f32>(bm[4u * q], bm[4u * q + 1u], bm[4u * q + 2u], bm[4u * q + 3u]));
            let b = sum4(lid, vec4<f32>(bc[4u * q], bc[4u * q + 1u], bc[4u * q + 2u], bc[4u * q + 3u]));
            if lid == 0u {
                for (var e = 0u; e < 4u; e++) {
                    hist_m[4u * q + e] = a[e];
                    hist_c[4u * q + e] = b[e];
                }
            }
        }
        if lid == 0u {
            // Digits from 15 down are rank order within the current range.
            var acc = s.above;
            var chosen = 16u;
            var last = 16u;
            for (var d = 15; d >= 0; d--) {
                let du = u32(d);
                if hist_c[du] == 0.0 { continue; }
                last = du;
                let next = acc + hist_m[du];
                if (strict && next > goal) || (!strict && next >= goal) {
                    chosen = du;
                    break;
                }
                acc = next;
            }
            if chosen == 16u {
                chosen = select(last, 0u, last == 16u);
                if last != 16u { acc -= hist_m[last]; }
            }
            var ns = s;
            ns.pre[word] |= chosen << shift;
            ns.mask[word] |= 15u << shift;
            ns.above = acc;
            ns.single = u32(hist_c[chosen] == 1.0);
            sel = ns;
        }
        s = workgroupUniformLoad(&sel);
        if s.single != 0u { break; }
    }
    if s.single == 0u { return s.pre; }
    // One token left in the range: find it.
    for (var i = lid; i < p.vocab; i += WG) {
        let c = comp(i);
        if ge(c, lim) && all((c & s.mask) == s.pre) { hit = c; }
    }
    return workgroupUniformLoad(&hit);
}

var<workgroup> hist256: array<atomic<u32>, 256>;

// Item i of a count select: token i, or (over partials) the token at the
// max of scan partial i. .z is 0 for a partial that owns no token.
fn item(partials: bool, i: u32) -> vec3<u32> {
    if !partials { return vec3<u32>(comp(i), 1u); }
    let o = p.vocab + 4u * i;
    let id = scratch[o + 1u];
    return vec3<u32>(key_bits(scratch[o]), p.vocab - 1u - id, u32(id < p.vocab));
}

// The composite of the k-th item in rank order (1-based; k <= the number of
// items). radix_select's scheme with 8-bit digits: a count histogram needs
// only integer atomics, so 256 bins cost no more than 16.
fn count_select(lid: u32, k: u32, partials: bool) -> vec2<u32> {
    let n = select(p.vocab, p.n_wg * WG, partials);
    if lid == 0u { sel = Select(vec2<u32>(0u), vec2<u32>(0u), 0.0, 0u); }
    var s = workgroupUniformLoad(&sel);
    let rounds = 4u + p.id_bytes;
    for (var r = 0u; r < rounds; r++) {
        let word = select(1u, 0u, r < 4u);
        let shift = select(8u * (p.id_bytes - 1u - (r - 4u)), 24u - 8u * r, r < 4u);
        atomicStore(&hist256[lid], 0u); // WG == 256 bins
        workgroupBarrier();
        for (var i = lid; i < n; i += WG) {
            let c = item(partials, i);
            if c.z != 0u && all((c.xy & s.mask) == s.pre) {
                atomicAdd(&hist256[(c[word] >> shift) & 255u], 1u);
            }
        }
        workgroupBarrier();
        if lid == 0u {
            // Bins from 255 down are rank order; `above` counts items before the range.
            var acc = u32(s.above);
            var chosen = 0u;
            for (var d = 255; d >= 0; d--) {
                let h = atomicLoad(&hist256[u32(d)]);
                if acc + h >= k {
                    chosen = u32(d);
                    break;
                }
                acc += h;
            }
            var ns = s;
            ns.pre[word] |= chosen << shift;
            ns.mask[word] |= 255u << shift;
            ns.above = f32(acc);
            ns.single = u32(atomicLoad(&hist256[chosen]) == 1u);
            sel = ns;
        }
        s = workgroupUniformLoad(&sel);
        if s.single != 0u { break; }
    }
    if s.single == 0u { return s.pre; }
    for (var i = lid; i < n; i += WG) {
        let c = item(partials, i);
        if c.z != 0u && all((c.xy & s.mask) == s.pre) { hit = c.xy; }
    }
    return workgroupUniformLoad(&hit);
}

// Precedes in rank order: key descending, then id ascending.
fn before(ka: u32, ia: u32, kb: u32, ib: u32) -> bool {
    return ka > kb || (ka == kb && ia < ib);
}

// Copies the tokens with comp >= thr to ck/ci (the first CAP of them) and
// returns how many there are.
fn gather(lid: u32, thr: vec2<u32>) -> u32 {
    if lid == 0u { atomicStore(&n_cand, 0u); }
    workgroupBarrier();
    for (var i = lid; i < p.vocab; i += WG) {
        let c = comp(i);
        if ge(c, thr) {
            let slot = atomicAdd(&n_cand, 1u);
            if slot < CAP {
                ck[slot] = c.x;
                ci[slot] = i;
            }
        }
    }
    workgroupBarrier();
    if lid == 0u { decide.n = atomicLoad(&n_cand); }
    return workgroupUniformLoad(&decide).n;
}

// Sorts the `count` (<= CAP) gathered tokens into rank order.
fn sort(lid: u32, count: u32) {
    // Sentinels (key 0 is below every finite logit's key) pad to a power of two.
    let n = next_pow2(count);
    for (var t = count + lid; t < n; t += WG) {
        ck[t] = 0u;
        ci[t] = 0xffffffffu;
    }
    workgroupBarrier();
    // Bitonic sort (Batcher 1968), n / 2 compare-exchanges per stage.
    for (var k = 2u; k <= n; k <<= 1u) {
        for (var j = k >> 1u; j > 0u; j >>= 1u) {
            for (var t = lid; t < n / 2u; t += WG) {
                let a = (t / j) * 2u * j + t % j;
                let b = a + j;
                let forward = (a & k) == 0u;
                let b_first = before(ck[b], ci[b], ck[a], ci[a]);
                if b_first == forward {
                    let tk = ck[a];
                    let ti = ci[a];
                    ck[a] = ck[b];
                    ci[a] = ci[b];
                    ck[b] = tk;
                    ci[b] = ti;
                }
            }
            workgroupBarrier();
        }
    }
}

// The best c tokens (c <= CAP), sorted into ck/ci[0, c); returns the
// composite of the c-th. The k-th best partial max is some token's logit
// with at least k tokens at or above it, all in the k partials at or above
// it: at most k * PER tokens. So for c <= CAP / PER, gathering those finds
// the best c with one pass over the logits and a count select over the
// (PER times fewer) partials; beyond that, or if too few partials own
// tokens, an exact count select over the logits.
fn top_tokens(lid: u32, c: u32) -> vec2<u32> {
    if c >= p.vocab {
        sort(lid, gather(lid, vec2<u32>(0u)));
    } else {
        var n = CAP + 1u;
        if c <= CAP / PER && c <= p.n_valid_part {
            n = gather(lid, count_select(lid, c, true));
        }
        if n > CAP {
            n = gather(lid, count_select(lid, c, false));
        }
        sort(lid, n);
    }
    if lid == 0u { hit = vec2<u32>(ck[c - 1u], p.vocab - 1u - ci[c - 1u]); }
    return workgroupUniformLoad(&hit);
}

fn cand_weight(mode: u32, t: u32, m: f32) -> f32 {
    return weight(mode, scratch[ci[t]], m);
}

fn next_pow2(x: u32) -> u32 {
    return select(1u << (32u - countLeadingZeros(x - 1u)), 1u, x <= 1u);
}

@compute @workgroup_size(WG)
fn sample_pick(@builtin(local_invocation_index) lid: u32) {
    let v = p.vocab;
    // Repetition penalty on each id of the history, then the partials of the
    // scan invocations that own them are redone. A repeated id is penalized
    // once: every copy writes the same value computed from the logits.
    if p.penalty != 1.0 {
        let n = min(history[0], p.hist_cap);
        for (var k = lid; k < n; k += WG) {
            let id = history[1u + k];
            if id < v {
                let x = clean(logits[id]);
                let y = select(x * p.penalty, x * p.inv_penalty, x > 0.0);
                scratch[id] = bitcast<u32>(clamp(y, -F32_MAX, F32_MAX));
            }
        }
        storageBarrier();
        workgroupBarrier();
        for (var k = lid; k < n; k += WG) {
            let id = history[1u + k];
            // Copies that share an owner write identical partials.
            if id < v { store_partial((id / CHUNK) * WG + id % WG); }
        }
        storageBarrier();
        workgroupBarrier();
    }
    // Merge the partials: global max (lowest id among equals) and both sums.
    let n_part = p.n_wg * WG;
    var bm = -F32_MAX;
    var bi = 0xffffffffu;
    for (var g = lid; g < n_part; g += WG) {
        let mv = bitcast<f32>(scratch[v + 4u * g]);
        let mi = scratch[v + 4u * g + 1u];
        if mv > bm || (mv == bm && mi < bi) {
            bm = mv;
            bi = mi;
        }
    }
    let am = argmax(lid, bm, bi);
    let m = bitcast<f32>(am.x);
    var z = vec4<f32>(0.0);
    for (var g = lid; g < n_part; g += WG) {
        let d = bitcast<f32>(scratch[v + 4u * g]) - m;
        z.x += bitcast<f32>(scratch[v + 4u * g + 2u]) * exp(d);
        // Meaningless for greedy (inv_temperature 0) and then unused.
        z.y += bitcast<f32>(scratch[v + 4u * g + 3u]) * exp(d * p.inv_temperature);
    }
    let zs = sum4(lid, z);
    if lid == 0u { merged = Merged(m, am.y, zs.x, zs.y); }
    let st = workgroupUniformLoad(&merged);

    // Greedy: temperature 0, a single token, or top-k 1.
    let k_eff = select(v, p.top_k, p.top_k > 0u && p.top_k < v);
    if p.temperature <= 0.0 || k_eff == 1u {
        if lid == 0u { out[0] = st.best; }
        return;
    }
    let all_tokens = vec2<u32>(0u, 0u);

    // The top C = min(k, CAP) tokens, sorted.
    let c = min(k_eff, CAP);
    let thr_c = top_tokens(lid, c);

    // Mass of the top-k set at temperature 1 (top-p's normalizer).
    var thr_k = all_tokens;
    var zk = st.z1;
    if k_eff == c {
        if lid == 0u {
            var s = 0.0;
            for (var t = 0u; t < c; t++) { s += cand_weight(W_MASS1, t, st.m); }
            decide.z = s;
        }
        zk = workgroupUniformLoad(&decide).z;
        thr_k = thr_c;
    } else if k_eff < v {
        thr_k = count_select(lid, k_eff, false);
        zk = sum_weight(lid, W_MASS1, st.m, thr_k);
    }

    // Top-p: keep the first n tokens whose mass reaches top_p * zk.
    // n_kept == 0 means "more than the C candidates", bounded by thr_m.
    var n_kept = c;
    if k_eff > c { n_kept = 0u; }
    var thr_m = thr_k;
    if p.top_p < 1.0 {
        if lid == 0u {
            let goal = p.top_p * zk;
            var cum = 0.0;
            var n = 0u;
            for (var t = 0u; t < c; t++) {
                cum += cand_weight(W_MASS1, t, st.m);
                if cum >= goal {
                    n = t + 1u;
                    break;
                }
            }
            // Short of the goal within all k tokens: rounding, keep them all.
            if n == 0u && k_eff == c { n = c; }
            decide.n = n;
        }
        n_kept = workgroupUniformLoad(&decide).n;
        if n_kept == 0u {
            thr_m = radix_select(lid, W_MASS1, st.m, p.top_p * zk, false, thr_k);
        }
    }

    // Mass of the kept set at the sampling temperature.
    var zm = 0.0;
    if n_kept > 0u {
        if lid == 0u {
            var s = 0.0;
            for (var t = 0u; t < n_kept; t++) { s += cand_weight(W_MASST, t, st.m); }
            decide.z = s;
        }
        zm = workgroupUniformLoad(&decide).z;
    } else if all(thr_m == all_tokens) {
        zm = st.zt;
    } else {
        zm = sum_weight(lid, W_MASST, st.m, thr_m);
    }

    // Draw: the first kept token whose cumulative mass exceeds u * zm.
    let goal = p.uniform * zm;
    if lid == 0u {
        let n = select(c, n_kept, n_kept > 0u);
        var cum = 0.0;
        var found = 0u;
        var token = ci[0];
        for (var t = 0u; t < n; t++) {
            let w = cand_weight(W_MASST, t, st.m);
            cum += w;
            if w > 0.0 { token = ci[t]; }
            if cum > goal {
                found = 1u;
                break;
            }
        }
        // Past the end of all kept tokens only by rounding: the last one
        // with nonzero mass stands.
        if n_kept > 0u { found = 1u; }
        decide.found = found;
        decide.token = token;
    }
    let d = workgroupUniformLoad(&decide);
    var token = d.token;
    if d.found == 0u {
        let hc = radix_select(lid, W_MASST, st.m, goal, true, thr_m);
        token = v - 1u - hc.y;
    }
    if lid == 0u { out[0] = min(token, v - 1u); }
}
