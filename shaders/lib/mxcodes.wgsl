// lib/mxcodes.wgsl: reading Mixed weight planes (SliM-LLM groups, a bit
// width from 1 to 8 per column group; layout in engine/src/weight/mod.rs and
// lib/mxmatmul.wgsl): a chunk's code words, f16 scales and mins, and the
// group table walked by class. Shared by the float kernels
// (lib/mxmatmul.wgsl) and the integer ones (matmul_int_mx.wgsl). The
// including shader declares `codes: array<u32>`, `codes4:
// array<vec4<u32>>` (the same plane), `scales`, `mins` and `table`
// (`array<u32>`), and the per-class steps that `mv_classes` and
// `mm_classes` call (`mv_class`, `mm_class` and their state types).

// One chunk's code words: a = the 4-bit segment (or words 0..3 of 8-bit
// codes), b = words 4..7 of 8-bit codes, c = the 2-bit segment, d = the
// 1-bit segment.
struct Chunk {
    a: vec4<u32>,
    b: vec4<u32>,
    c: vec2<u32>,
    d: u32,
}

// Chunk c of a superchunk of k chunks whose words start at `base`, loaded
// word by word (any alignment).
fn load_chunk(base: u32, k: u32, c: u32, bits: u32) -> Chunk {
    var ch: Chunk;
    if bits == 8u {
        let o = base + 8u * c;
        ch.a = vec4<u32>(codes[o], codes[o + 1u], codes[o + 2u], codes[o + 3u]);
        ch.b = vec4<u32>(codes[o + 4u], codes[o + 5u], codes[o + 6u], codes[o + 7u]);
        return ch;
    }
    var o = base;
    if (bits & 4u) != 0u {
        let q = o + 4u * c;
        ch.a = vec4<u32>(codes[q], codes[q + 1u], codes[q + 2u], codes[q + 3u]);
        o += 4u * k;
    }
    if (bits & 2u) != 0u {
        let q = o + 2u * c;
        ch.c = vec2<u32>(codes[q], codes[q + 1u]);
        o += 2u * k;
    }
    if (bits & 1u) != 0u {
        ch.d = codes[o + c];
    }
    return ch;
}

// Chunk c (any value below 4) of the full superchunk at vec4 index b4,
// loading only what holds it: one vec4 per 4-bit segment, the vec4 holding
// two chunks' 2-bit words, and one word of the 1-bit segment.
fn vload_chunk(b4: u32, c: u32, bits: u32) -> Chunk {
    var ch: Chunk;
    if bits == 8u {
        ch.a = codes4[b4 + 2u * c];
        ch.b = codes4[b4 + 2u * c + 1u];
        return ch;
    }
    var o = b4;
    if (bits & 4u) != 0u {
        ch.a = codes4[o + c];
        o += 4u;
    }
    if (bits & 2u) != 0u {
        let w2 = codes4[o + c / 2u];
        ch.c = select(w2.xy, w2.zw, (c & 1u) != 0u);
        o += 2u;
    }
    if (bits & 1u) != 0u {
        ch.d = codes[4u * o + c];
    }
    return ch;
}

// f16 scale and min of (row, group) index i.
fn scale_at(i: u32) -> f32 {
    return unpack2x16float(scales[i >> 1u])[i & 1u];
}
fn min_at(i: u32) -> f32 {
    return unpack2x16float(mins[i >> 1u])[i & 1u];
}

// Table: class starts (17 words), then per group [region offset, g | chunks << 20],
// sorted by class = 2 * (bits - 1) + (1 if the scalar path).
const CLASS_WORDS: u32 = 17u;

// Bit c set when the weight (shard) has groups of class c (set by
// matmul.rs and matmul_int.rs): code is generated only for those classes, as the checks below
// fold when the pipeline is created.
override CLASSES: u32 = 0xffffu;

fn has_class(bits: u32, vec: bool) -> bool {
    return (CLASSES & (1u << (2u * (bits - 1u) + select(1u, 0u, vec)))) != 0u;
}

// Every class the weight has, in the table's order, through the including
// kernel's `mv_class` (mat-vec: state `MvRows`, 4 rows' sums) and `mm_class`
// (tile: state `MmTile`, accumulators `Acc`). Each call has constant
// arguments, so the checks fold with CLASSES and each kept call is built for
// its one width (llvmpipe needs the widths constant to keep code indexes
// static).
fn mv_classes(acc: ptr<function, vec4<f32>>, st: MvRows) {
    if has_class(1u, true) {
        mv_class(acc, st, 1u, true);
    }
    if has_class(1u, false) {
        mv_class(acc, st, 1u, false);
    }
    if has_class(2u, true) {
        mv_class(acc, st, 2u, true);
    }
    if has_class(2u, false) {
        mv_class(acc, st, 2u, false);
    }
    if has_class(3u, true) {
        mv_class(acc, st, 3u, true);
    }
    if has_class(3u, false) {
        mv_class(acc, st, 3u, false);
    }
    if has_class(4u, true) {
        mv_class(acc, st, 4u, true);
    }
    if has_class(4u, false) {
        mv_class(acc, st, 4u, false);
    }
    if has_class(5u, true) {
        mv_class(acc, st, 5u, true);
    }
    if has_class(5u, false) {
        mv_class(acc, st, 5u, false);
    }
    if has_class(6u, true) {
        mv_class(acc, st, 6u, true);
    }
    if has_class(6u, false) {
        mv_class(acc, st, 6u, false);
    }
    if has_class(7u, true) {
        mv_class(acc, st, 7u, true);
    }
    if has_class(7u, false) {
        mv_class(acc, st, 7u, false);
    }
    if has_class(8u, true) {
        mv_class(acc, st, 8u, true);
    }
    if has_class(8u, false) {
        mv_class(acc, st, 8u, false);
    }
}

fn mm_classes(acc: ptr<function, Acc>, st: ptr<function, MmTile>) {
    if has_class(1u, true) {
        mm_class(acc, st, 1u, true);
    }
    if has_class(1u, false) {
        mm_class(acc, st, 1u, false);
    }
    if has_class(2u, true) {
        mm_class(acc, st, 2u, true);
    }
    if has_class(2u, false) {
        mm_class(acc, st, 2u, false);
    }
    if has_class(3u, true) {
        mm_class(acc, st, 3u, true);
    }
    if has_class(3u, false) {
        mm_class(acc, st, 3u, false);
    }
    if has_class(4u, true) {
        mm_class(acc, st, 4u, true);
    }
    if has_class(4u, false) {
        mm_class(acc, st, 4u, false);
    }
    if has_class(5u, true) {
        mm_class(acc, st, 5u, true);
    }
    if has_class(5u, false) {
        mm_class(acc, st, 5u, false);
    }
    if has_class(6u, true) {
        mm_class(acc, st, 6u, true);
    }
    if has_class(6u, false) {
        mm_class(acc, st, 6u, false);
    }
    if has_class(7u, true) {
        mm_class(acc, st, 7u, true);
    }
    if has_class(7u, false) {
        mm_class(acc, st, 7u, false);
    }
    if has_class(8u, true) {
        mm_class(acc, st, 8u, true);
    }
    if has_class(8u, false) {
        mm_class(acc, st, 8u, false);
    }
}

