// lib/imatmul.wgsl: what the integer matmul kernels share (matmul_int.wgsl,
// matmul_int_mx.wgsl): the parameter block, the bindings every format has,
// x blocks of int8 codes, weight codes widened to int8 lanes, and the dot
// products.
//
// x is int8 codes from act_quant (four to a word, column 4k + i in byte i)
// with one f32 scale per token. A weight group is w = d * q + m with
// unsigned codes q < 2^b; as int8 lanes the dot over a group is exact in
// i32 with dot4I8Packed, and the f32 epilogue centres it:
//   sum_c w_c x_c = d * (sum q qx - z * sum qx) + (m + z d) * sum qx
// with z = 2^(b-1) (8 for Q4_0 / Q4_1, 0 for Q8_0's signed codes). The
// integer part is exact; centring keeps d * (...) and the min term small
// where m ~ -z d (SliM-LLM's and Q4_1's asymmetric groups), so the two f32
// terms do not cancel. 8-bit unsigned codes do not fit int8 lanes: they are
// flipped to q - 128 (the top bit XORed) and their dot is already centred.
// The token's scale multiplies the row's sum once, at the end.
// Mirrors engine/src/ops/matmul_int.rs (MatMulIntParams, binding order).

struct Params {
    rows: u32,
    cols: u32,
    // 32-column blocks per row.
    nb: u32,
    n_tokens: u32,
    // The token the mat-vec reads (tiled: 0).
    x_row: u32,
    out_stride: u32,
    out_col: u32,
    row_tiles: u32,
    // Mixed only: column groups, columns per group.
    n_groups: u32,
    group: u32,
    _pad0: u32,
    _pad1: u32,
    // Where the results go (lib/mmout.wgsl).
    o: MmOut,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> qx: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> xscale: array<f32>;
@group(0) @binding(4) var<storage, read> scales: array<u32>;
@group(0) @binding(5) var<storage, read> mins: array<u32>;
@group(0) @binding(6) var<storage, read_write> out: array<f32>;

const WG: u32 = 64u;

// 32 int8 lanes in natural order: word k of (a, b) holds columns 4k .. 4k + 3.
struct Lanes {
    a: vec4<u32>,
    b: vec4<u32>,
}

// Block `blk` (columns 32 blk ..) of token t's codes.
fn x_lanes(t: u32, blk: u32) -> Lanes {
    let i = (t * p.nb + blk) * 2u;
    return Lanes(qx[i], qx[i + 1u]);
}

const ONES: u32 = 0x01010101u;

// The sum of a block's 32 codes.
fn lane_sum(x: Lanes) -> i32 {
    let s0 = dot4I8Packed(x.a.x, ONES) + dot4I8Packed(x.a.y, ONES) + dot4I8Packed(x.a.z, ONES) + dot4I8Packed(x.a.w, ONES);
    let s1 = dot4I8Packed(x.b.x, ONES) + dot4I8Packed(x.b.y, ONES) + dot4I8Packed(x.b.z, ONES) + dot4I8Packed(x.b.w, ONES);
    return s0 + s1;
}

// sum(w x) over 32 lanes, two accumulation chains.
fn idot(w: Lanes, x: Lanes) -> i32 {
    let s0 = dot4I8Packed(w.a.x, x.a.x) + dot4I8Packed(w.a.y, x.a.y) + dot4I8Packed(w.a.z, x.a.z) + dot4I8Packed(w.a.w, x.a.w);
    let s1 = dot4I8Packed(w.b.x, x.b.x) + dot4I8Packed(w.b.y, x.b.y) + dot4I8Packed(w.b.z, x.b.z) + dot4I8Packed(w.b.w, x.b.w);
    return s0 + s1;
}

// Bit fields spread into the bytes of a word, lowest field in byte 0:
// four 4-bit fields (the low 16 bits of h), four 2-bit fields (the low byte
// of c), four 1-bit fields (the low nibble of n).
fn spread4(h: vec4<u32>) -> vec4<u32> {
    let v = (h | (h << vec4<u32>(8u))) & vec4<u32>(0x00ff00ffu);
    return (v | (v << vec4<u32>(4u))) & vec4<u32>(0x0f0f0f0fu);
}
fn spread2(c: vec4<u32>) -> vec4<u32> {
    let v = (c | (c << vec4<u32>(12u))) & vec4<u32>(0x000f000fu);
    return (v | (v << vec4<u32>(6u))) & vec4<u32>(0x03030303u);
}
fn spread1(n: vec4<u32>) -> vec4<u32> {
    let v = (n | (n << vec4<u32>(14u))) & vec4<u32>(0x00030003u);
    return (v | (v << vec4<u32>(7u))) & vec4<u32>(0x01010101u);
}

// 32 4-bit codes (element 8j + k in nibble k of word j: Q4_0 / Q4_1 blocks,
// Mixed 4-bit segments) as lanes.
fn nib_lanes(w: vec4<u32>) -> Lanes {
    let m = vec4<u32>(0xffffu);
    return Lanes(spread4(vec4<u32>(w.x, w.x >> 16u, w.y, w.y >> 16u) & m),
                 spread4(vec4<u32>(w.z, w.z >> 16u, w.w, w.w >> 16u) & m));
}

// 32 2-bit codes (element k at bit 2k of the pair) as lanes.
fn crumb_lanes(c: vec2<u32>) -> Lanes {
    let sh = vec4<u32>(0u, 8u, 16u, 24u);
    let m = vec4<u32>(0xffu);
    return Lanes(spread2((vec4<u32>(c.x) >> sh) & m), spread2((vec4<u32>(c.y) >> sh) & m));
}

// 32 1-bit codes (element k at bit k) as lanes.
fn bit_lanes(d: u32) -> Lanes {
    let m = vec4<u32>(0xfu);
    return Lanes(spread1((vec4<u32>(d) >> vec4<u32>(0u, 4u, 8u, 12u)) & m),
                 spread1((vec4<u32>(d) >> vec4<u32>(16u, 20u, 24u, 28u)) & m));
}

// One group's f32 contribution: d * (dq - z xs) + mc * xs (see the top).
fn group_out(dq: i32, xs: i32, z: i32, d: f32, mc: f32) -> f32 {
    return fma(d, f32(dq - z * xs), mc * f32(xs));
}
fn group_out4(dq: vec4<i32>, xs: vec4<i32>, z: i32, d: f32, mc: f32) -> vec4<f32> {
    return fma(vec4<f32>(d), vec4<f32>(dq - z * xs), mc * vec4<f32>(xs));
}


// A tile of 8 tokens x 4 rows (acc[2r]: tokens t0 .. t0 + 3 of row r,
// acc[2r + 1]: t0 + 4 .. t0 + 7) times each token's scale.
fn scale_tile(acc: array<vec4<f32>, 8>, t0: u32) -> array<vec4<f32>, 8> {
    let last = p.n_tokens - 1u;
    let s0 = vec4<f32>(xscale[min(t0, last)], xscale[min(t0 + 1u, last)],
                       xscale[min(t0 + 2u, last)], xscale[min(t0 + 3u, last)]);
    let s1 = vec4<f32>(xscale[min(t0 + 4u, last)], xscale[min(t0 + 5u, last)],
                       xscale[min(t0 + 6u, last)], xscale[min(t0 + 7u, last)]);
    var r = acc;
    r[0] *= s0;
    r[1] *= s1;
    r[2] *= s0;
    r[3] *= s1;
    r[4] *= s0;
    r[5] *= s1;
    r[6] *= s0;
    r[7] *= s1;
    return r;
}
