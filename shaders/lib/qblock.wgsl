// lib/qblock.wgsl: the matmul kernels' parameter block, bindings and the
// decoding of weight planes (engine/src/weight/) in blocks of 32
// consecutive elements of a row:
// - Q4_0 / Q4_1: 4 code words, one vec4<u32> (element 8j + k in nibble k of
//   word j), f16 scale d; Q4_0: w = d * (q - 8), Q4_1: w = d * q + m (f16 min).
// - Q8_0: 8 code words, two vec4<u32> (element 4j + k in byte k of word j,
//   as i8), f16 scale d; w = d * q.
// - F16: 16 words, four vec4<u32>, two halves per word; F32: 32 words, eight
//   vec4<u32>. Only for cols % 32 == 0, so that blocks are whole vec4s.
// - Q5_0, Q5_1, IQ4_NL, Q2_K .. Q6_K, IQ4_XS: lib/kblock.wgsl decodes them
//   (engine/src/weight/kquant.rs); Q2_K, Q3_K and Q6_K scale each half of
//   16 on its own (d2, m2).
// Every format is handled as w = d * q + m (Q4_0: m = -8d, Q8_0: m = 0,
// floats: d = 1, m = 0; the IQ4 types' q from their table), so a block's dot
// with x is d * sum(q x) + m * sum(x).
// The `fmt` arguments are literals at every entry point, so the format
// branches fold away when the pipeline is compiled (llvmpipe would otherwise
// run both sides, masked).
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
@group(0) @binding(2) var<storage, read> codes: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> scales: array<u32>;
@group(0) @binding(4) var<storage, read> mins: array<u32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;
// NORM: RMSNorm's weight (lib/xnorm.wgsl); another read binding otherwise.
@group(0) @binding(6) var<storage, read> norm_w: array<vec4<f32>>;

const Q4_0: u32 = 0u;
const Q4_1: u32 = 1u;
const Q8_0: u32 = 2u;
const F16: u32 = 3u;
const F32: u32 = 4u;

fn is_float(fmt: u32) -> bool {
    return fmt == F16 || fmt == F32;
}

// One block's code words (as many vec4s as the format has) and (d, m);
// `blk` = row * nb + block.
struct WBlock {
    c: array<vec4<u32>, 8>,
    d: f32,
    m: f32,
    // The second half's, where kq_halves(fmt); else equal to d, m.
    d2: f32,
    m2: f32,
}

// The plane reads lib/kblock.wgsl asks for.
fn kb_vec4(i: u32) -> vec4<u32> {
    return codes[i];
}
fn kb_scale_word(i: u32) -> u32 {
    return scales[i];
}
fn kb_min_word(i: u32) -> u32 {
    return mins[i];
}

// Vec4s of code words per block.
fn code_vec4s(fmt: u32) -> u32 {
    if fmt == F32 {
        return 8u;
    } else if fmt == F16 {
        return 4u;
    } else if fmt == Q8_0 {
        return 2u;
    }
    return 1u;
}

// The code words of block `blk` (indexes are literals after inlining).
fn load_codes(b: ptr<function, WBlock>, blk: u32, fmt: u32) {
    if is_kq(fmt) {
        let w = kq_load(blk, p.rows * p.nb, fmt);
        (*b).c[0] = w[0];
        (*b).c[1] = w[1];
        return;
    }
    let n = code_vec4s(fmt);
    let base = blk * n;
    (*b).c[0] = codes[base];
    if n > 1u {
        (*b).c[1] = codes[base + 1u];
    }
    if n > 2u {
        (*b).c[2] = codes[base + 2u];
        (*b).c[3] = codes[base + 3u];
    }
    if n > 4u {
        (*b).c[4] = codes[base + 4u];
        (*b).c[5] = codes[base + 5u];
        (*b).c[6] = codes[base + 6u];
        (*b).c[7] = codes[base + 7u];
    }
}

// Block `blk` of a lib/kblock.wgsl type with its scales (a0, m0, a1, m1)
// already decoded.
fn kq_wblock(blk: u32, s: vec4<f32>, fmt: u32) -> WBlock {
    var b: WBlock;
    load_codes(&b, blk, fmt);
    b.d = s.x;
    b.m = s.y;
    b.d2 = s.z;
    b.m2 = s.w;
    return b;
}

fn load_wblock(blk: u32, fmt: u32) -> WBlock {
    if is_kq(fmt) {
        return kq_wblock(blk, kq_scales(blk, fmt), fmt);
    }
    var b: WBlock;
    load_codes(&b, blk, fmt);
    if is_float(fmt) {
        b.d = 1.0;
        b.m = 0.0;
    } else {
        b.d = unpack2x16float(scales[blk >> 1u])[blk & 1u];
        b.m = 0.0;
        if fmt == Q4_0 {
            b.m = -8.0 * b.d;
        } else if fmt == Q4_1 {
            b.m = unpack2x16float(mins[blk >> 1u])[blk & 1u];
        }
    }
    b.d2 = b.d;
    b.m2 = b.m;
    return b;
}

// Nibbles 0..3 (shift 0) or 4..7 (shift 16) of a code word, as floats.
fn nib4(w: u32, shift: u32) -> vec4<f32> {
    return vec4<f32>((vec4<u32>(w) >> (vec4<u32>(0u, 4u, 8u, 12u) + shift)) & vec4<u32>(15u));
}

// The four signed bytes of a code word, as floats.
fn byte4(w: u32) -> vec4<f32> {
    return vec4<f32>((vec4<i32>(bitcast<i32>(w)) << vec4<u32>(24u, 16u, 8u, 0u)) >> vec4<u32>(24u));
}

// Codes 4kq .. 4kq + 3 of a block (kq < 8, a literal at every call), as floats.
fn codes4(b: WBlock, kq: u32, fmt: u32) -> vec4<f32> {
    if is_kq(fmt) {
        return kq_values4(kq_codes4(b.c[0], b.c[1], kq, fmt), fmt);
    }
    if fmt == F32 {
        return bitcast<vec4<f32>>(b.c[kq]);
    } else if fmt == F16 {
        let w = b.c[kq >> 1u];
        if (kq & 1u) == 0u {
            return vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y));
        }
        return vec4<f32>(unpack2x16float(w.z), unpack2x16float(w.w));
    } else if fmt == Q8_0 {
        return byte4(b.c[kq >> 2u][kq & 3u]);
    }
    return nib4(b.c[0][kq >> 1u], (kq & 1u) * 16u);
}

// Weights 4kq .. 4kq + 3 of a block.
fn deq4(b: WBlock, kq: u32, fmt: u32) -> vec4<f32> {
    if is_float(fmt) {
        return codes4(b, kq, fmt);
    }
    if kq >= 4u {
        return codes4(b, kq, fmt) * b.d2 + b.m2;
    }
    return codes4(b, kq, fmt) * b.d + b.m;
}
