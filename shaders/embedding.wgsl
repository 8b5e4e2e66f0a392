// embedding.wgsl: out[t, :] = dequant(table[ids[t], :]) for the tokens whose
// id falls in this shard's rows. One workgroup per token; each invocation
// decodes whole code words. Plane layout: engine/src/weight/.

struct Params {
    n_tokens: u32,
    dim: u32,
    row_start: u32,
    rows: u32,
    vocab: u32,
    zero_oob: u32,
    codes: u32,
    scales: u32,
    mins: u32,
    row_words: u32,
    _p0: u32,
    _p1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> ids: array<u32>;
@group(0) @binding(2) var<storage, read> table: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

// 0 f32, 1 f16, 2 q4_0, 3 q4_1, 4 q8_0, then lib/kblock.wgsl's ids
// (engine/src/ops/embedding.rs, format_code).
override FORMAT: u32 = 0u;

// The plane reads lib/kblock.wgsl asks for.
fn kb_vec4(i: u32) -> vec4<u32> {
    let w = p.codes + 4u * i;
    return vec4<u32>(table[w], table[w + 1u], table[w + 2u], table[w + 3u]);
}
fn kb_scale_word(i: u32) -> u32 {
    return table[p.scales + i];
}
fn kb_min_word(i: u32) -> u32 {
    return table[p.mins + i];
}

const WG: u32 = 256u;

// f16 number `i` of a plane of f16 pairs starting at word `base`.
fn plane_half(base: u32, i: u32) -> f32 {
    return unpack2x16float(table[base + (i >> 1u)])[i & 1u];
}

@compute @workgroup_size(WG)
fn embedding(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let t = wid.x + wid.y * nwg.x;
    if t >= p.n_tokens { return; }
    let id = ids[t];
    let base = t * p.dim;
    if id >= p.vocab {
        // Only one shard's call zeroes the row, so calls never race on it.
        if p.zero_oob != 0u {
            for (var i = lid; i < p.dim; i += WG) { out[base + i] = 0.0; }
        }
        return;
    }
    // Unsigned wrap makes ids below row_start fail this test too.
    let r = id - p.row_start;
    if r >= p.rows { return; }
    let row = p.codes + r * p.row_words;
    let groups = p.dim / 32u;
    if is_kq(FORMAT) {
        // One 32-element block per invocation and iteration.
        for (var k = lid; k < groups; k += WG) {
            let blk = r * groups + k;
            let w = kq_load(blk, p.rows * groups, FORMAT);
            let s = kq_scales(blk, FORMAT);
            for (var kq = 0u; kq < 8u; kq++) {
                let h = kq >= 4u;
                let v = kq_values4(kq_codes4(w[0], w[1], kq, FORMAT), FORMAT);
                let o = base + 32u * k + 4u * kq;
                let y = v * select(s.x, s.z, h) + select(s.y, s.w, h);
                out[o] = y.x;
                out[o + 1u] = y.y;
                out[o + 2u] = y.z;
                out[o + 3u] = y.w;
            }
        }
        return;
    }
    for (var w = lid; w < p.row_words; w += WG) {
        let word = table[row + w];
        switch FORMAT {
            case 0u: {
                out[base + w] = bitcast<f32>(word);
            }
            case 1u: {
                let v = unpack2x16float(word);
                out[base + 2u * w] = v.x;
                // An odd dim leaves the last word's high half as padding.
                if 2u * w + 1u < p.dim { out[base + 2u * w + 1u] = v.y; }
            }
            case 2u, 3u: {
                // Word w holds elements 8w..8w+7; all in group w / 4.
                let g = r * groups + w / 4u;
                let d = plane_half(p.scales, g);
                var m = -8.0 * d;
                if FORMAT == 3u { m = plane_half(p.mins, g); }
                for (var k = 0u; k < 8u; k++) {
                    let q = f32((word >> (4u * k)) & 15u);
                    out[base + 8u * w + k] = d * q + m;
                }
            }
            default: {
                // Q8_0: word w holds elements 4w..4w+3 as i8; group w / 8.
                let d = plane_half(p.scales, r * groups + w / 8u);
                for (var k = 0u; k < 4u; k++) {
                    let q = f32(extractBits(bitcast<i32>(word), 8u * k, 8u));
                    out[base + 4u * w + k] = d * q;
                }
            }
        }
    }
}
