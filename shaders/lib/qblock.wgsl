// lib/qblock.wgsl: the matmul kernels' parameter block, bindings and the
// decoding of the block formats' planes (engine/src/weight.rs). A block is 32
// consecutive elements of a weight row with an f16 scale d:
// - Q4_0 / Q4_1: 4 code words, one vec4<u32> (element 8j + k in nibble k of
//   word j); Q4_0: w = d * (q - 8), Q4_1: w = d * q + m (f16 min m).
// - Q8_0: 8 code words, two vec4<u32> (element 4j + k in byte k of word j,
//   as i8); w = d * q.
// Every format is handled as w = d * q + m (Q4_0: m = -8d, Q8_0: m = 0), so a
// block's dot with x is d * sum(q x) + m * sum(x). The `fmt` arguments are
// literals at every entry point, so the format branches fold away when the
// pipeline is compiled (llvmpipe would otherwise run both sides, masked).
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
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> codes: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> scales: array<u32>;
@group(0) @binding(4) var<storage, read> mins: array<u32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

const Q4_0: u32 = 0u;
const Q4_1: u32 = 1u;
const Q8_0: u32 = 2u;

// One block's codes and (d, m); `blk` = row * nb + block.
struct WBlock {
    lo: vec4<u32>,
    hi: vec4<u32>,
    d: f32,
    m: f32,
}

fn load_wblock(blk: u32, fmt: u32) -> WBlock {
    var b: WBlock;
    b.d = unpack2x16float(scales[blk >> 1u])[blk & 1u];
    if fmt == Q8_0 {
        b.lo = codes[2u * blk];
        b.hi = codes[2u * blk + 1u];
        b.m = 0.0;
    } else {
        b.lo = codes[blk];
        b.m = -8.0 * b.d;
        if fmt == Q4_1 {
            b.m = unpack2x16float(mins[blk >> 1u])[blk & 1u];
        }
    }
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

// Codes 4kq .. 4kq + 3 of a block (kq < 8), as floats.
fn codes4(b: WBlock, kq: u32, fmt: u32) -> vec4<f32> {
    if fmt == Q8_0 {
        return byte4(select(b.hi[kq & 3u], b.lo[kq & 3u], kq < 4u));
    }
    return nib4(b.lo[kq >> 1u], (kq & 1u) * 16u);
}

// Weights 4kq .. 4kq + 3 of a block.
fn deq4(b: WBlock, kq: u32, fmt: u32) -> vec4<f32> {
    return codes4(b, kq, fmt) * b.d + b.m;
}
