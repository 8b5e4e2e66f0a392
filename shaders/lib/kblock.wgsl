// lib/kblock.wgsl: decoding the GGUF types of engine/src/weight/kquant.rs
// (Q5_0, Q5_1, IQ4_NL and the super-block types Q2_K .. Q6_K, IQ4_XS) one
// 32-element block at a time; see that file for the planes. A block's value
// is w = a * t(q) + m per half of 16 elements, t(q) = q (the offset folded
// into m) or, for the IQ4 types, the table value of q (iq4_values4).
//
// The including shader provides the plane reads:
//   kb_vec4(i): code words 4i .. 4i + 3 of the codes plane;
//   kb_scale_word(i), kb_min_word(i): word i of the scales / mins plane.
// `fmt` is a literal at every entry point, so the format branches fold away.

// The format ids (Q5_0 .. IQ4_XS) are lib/kformat.wgsl's.

// The IQ4 types' 16 values (-127, -104, -83, -65, -49, -35, -22, -10, 1,
// 13, 25, 38, 53, 69, 89, 113; weight::kquant's IQ4_VALUES) as signed
// bytes, value q in byte q % 4 of word q / 4. Looked up with selects and
// shifts: a dynamically indexed array becomes a per-invocation copy in
// local memory on most compilers (llvmpipe's included), which costs more
// than the decode it serves.
const IQ4_W0: u32 = 0xbfad9881u;
const IQ4_W1: u32 = 0xf6eaddcfu;
const IQ4_W2: u32 = 0x26190d01u;
const IQ4_W3: u32 = 0x71594535u;

fn iq4_values4(q: vec4<u32>) -> vec4<f32> {
    let odd = (q & vec4<u32>(4u)) != vec4<u32>(0u);
    let w = select(select(vec4<u32>(IQ4_W0), vec4<u32>(IQ4_W1), odd),
                   select(vec4<u32>(IQ4_W2), vec4<u32>(IQ4_W3), odd), q >= vec4<u32>(8u));
    // Byte q % 4 to the top, then an arithmetic shift brings it back signed.
    let top = w << ((vec4<u32>(3u) - (q & vec4<u32>(3u))) * vec4<u32>(8u));
    return vec4<f32>(bitcast<vec4<i32>>(top) >> vec4<u32>(24u));
}

fn is_kq(fmt: u32) -> bool {
    return fmt >= Q5_0 && fmt <= IQ4_XS;
}

// Code bits (= code words per block).
fn kq_bits(fmt: u32) -> u32 {
    switch fmt {
        case Q2_K: { return 2u; }
        case Q3_K: { return 3u; }
        case Q5_0, Q5_1, Q5_K: { return 5u; }
        case Q6_K: { return 6u; }
        default: { return 4u; }
    }
}

// Whether the two halves of a block have their own scales.
fn kq_halves(fmt: u32) -> bool {
    return fmt == Q2_K || fmt == Q3_K || fmt == Q6_K;
}

fn kq_table(fmt: u32) -> bool {
    return fmt == IQ4_NL || fmt == IQ4_XS;
}

// The code words of block `blk` of a codes plane of `blocks` blocks, as
// (words 0..3, words 4..7) of its Mixed chunk: the low part (4 words, or 2
// for the 2- and 3-bit types) from the first region, the high part
// (bits - low words) from the second (weight/kquant.rs). Words past the
// block's `bits` are other blocks' (never used).
fn kq_load(blk: u32, blocks: u32, fmt: u32) -> array<vec4<u32>, 2> {
    let bits = kq_bits(fmt);
    var r: array<vec4<u32>, 2>;
    if bits == 2u || bits == 3u {
        // Two low words per block: the vec4's first or second pair.
        let a = kb_vec4(blk >> 1u);
        r[0] = select(a, a.zwxy, (blk & 1u) != 0u);
        if bits == 3u {
            // One high word per block, after the 2 * blocks low words.
            r[0].z = kb_vec4((2u * blocks + blk) >> 2u)[blk & 3u];
        }
        return r;
    }
    r[0] = kb_vec4(blk);
    if bits == 5u {
        r[1].x = kb_vec4((4u * blocks + blk) >> 2u)[blk & 3u];
    } else if bits == 6u {
        let h = kb_vec4((4u * blocks + 2u * blk) >> 2u);
        r[1] = select(h, h.zwxy, (blk & 1u) != 0u);
    }
    return r;
}

// Codes 4kq .. 4kq + 3 (kq < 8) of a block's words (the Mixed chunk layout:
// a 4-bit or 2-bit segment first, then the higher bits).
fn kq_codes4(lo: vec4<u32>, hi: vec4<u32>, kq: u32, fmt: u32) -> vec4<u32> {
    let bits = kq_bits(fmt);
    let sh4 = vec4<u32>(0u, 4u, 8u, 12u) + (kq & 1u) * 16u;
    let sh2 = vec4<u32>(0u, 2u, 4u, 6u) + (kq & 3u) * 8u;
    let sh1 = vec4<u32>(0u, 1u, 2u, 3u) + kq * 4u;
    if bits == 2u || bits == 3u {
        let two = (vec4<u32>(lo[kq >> 2u]) >> sh2) & vec4<u32>(3u);
        if bits == 2u {
            return two;
        }
        return two | (((vec4<u32>(lo.z) >> sh1) & vec4<u32>(1u)) << vec4<u32>(2u));
    }
    let nib = (vec4<u32>(lo[kq >> 1u]) >> sh4) & vec4<u32>(15u);
    if bits == 5u {
        return nib | (((vec4<u32>(hi.x) >> sh1) & vec4<u32>(1u)) << vec4<u32>(4u));
    }
    if bits == 6u {
        return nib | (((vec4<u32>(hi[kq >> 2u]) >> sh2) & vec4<u32>(3u)) << vec4<u32>(4u));
    }
    return nib;
}

// t(q) of four codes as floats.
fn kq_values4(q: vec4<u32>, fmt: u32) -> vec4<f32> {
    if kq_table(fmt) {
        return iq4_values4(q);
    }
    return vec4<f32>(q);
}

fn kb_half(word: u32, i: u32) -> f32 {
    return unpack2x16float(word)[i & 1u];
}

// Words of sub-block scales per super-block (weight/kquant.rs, sub_scale_words).
fn kq_scale_words(fmt: u32) -> u32 {
    switch fmt {
        case Q2_K, Q6_K: { return 4u; }
        case IQ4_XS: { return 1u; }
        default: { return 3u; }
    }
}

// One super-block's scale data, loaded once for its 8 blocks: its
// sub-block scale words, and its f16 word (d | dmin << 16, IQ4_XS:
// d | scales_h << 16; Q3_K and Q6_K: d in the low half).
struct KSuper {
    w: vec4<u32>,
    m: u32,
}

fn kq_super(sb: u32, fmt: u32) -> KSuper {
    var s: KSuper;
    let n = kq_scale_words(fmt);
    let b = sb * n;
    s.w = vec4<u32>(kb_scale_word(b), 0u, 0u, 0u);
    if n > 1u {
        s.w.y = kb_scale_word(b + 1u);
        s.w.z = kb_scale_word(b + 2u);
    }
    if n > 3u {
        s.w.w = kb_scale_word(b + 3u);
    }
    if fmt == Q3_K || fmt == Q6_K {
        s.m = (kb_min_word(sb >> 1u) >> (16u * (sb & 1u))) & 0xffffu;
    } else {
        s.m = kb_min_word(sb);
    }
    return s;
}

// Byte i of a super-block's scale words.
fn kq_byte(s: KSuper, i: u32) -> u32 {
    return (s.w[i >> 2u] >> (8u * (i & 3u))) & 255u;
}

// Block j (0..8) of a super-block: (a0, m0, a1, m1), w = a * t(q) + m.
fn kq_sub_scales(s: KSuper, j: u32, fmt: u32) -> vec4<f32> {
    let dd = unpack2x16float(s.m);
    switch fmt {
        case Q2_K: {
            let s0 = kq_byte(s, 2u * j);
            let s1 = kq_byte(s, 2u * j + 1u);
            return vec4<f32>(dd.x * f32(s0 & 15u), -(dd.y * f32(s0 >> 4u)),
                             dd.x * f32(s1 & 15u), -(dd.y * f32(s1 >> 4u)));
        }
        case Q3_K: {
            // 6-bit scale i: low 4 bits from byte i (i < 8) or byte i - 8's
            // high nibble, high 2 bits from byte 8 + i % 4 at bit 2 (i / 4).
            let i0 = 2u * j;
            let i1 = i0 + 1u;
            let lo0 = select(kq_byte(s, i0 - 8u) >> 4u, kq_byte(s, i0) & 15u, i0 < 8u);
            let lo1 = select(kq_byte(s, i1 - 8u) >> 4u, kq_byte(s, i1) & 15u, i1 < 8u);
            let hi0 = (kq_byte(s, 8u + (i0 & 3u)) >> (2u * (i0 >> 2u))) & 3u;
            let hi1 = (kq_byte(s, 8u + (i1 & 3u)) >> (2u * (i1 >> 2u))) & 3u;
            let a0 = dd.x * f32(i32(lo0 | (hi0 << 4u)) - 32);
            let a1 = dd.x * f32(i32(lo1 | (hi1 << 4u)) - 32);
            return vec4<f32>(a0, -4.0 * a0, a1, -4.0 * a1);
        }
        case Q4_K, Q5_K: {
            // ggml's get_scale_min_k4 over the 12 bytes.
            var sc: u32;
            var m: u32;
            if j < 4u {
                sc = kq_byte(s, j) & 63u;
                m = kq_byte(s, j + 4u) & 63u;
            } else {
                sc = (kq_byte(s, j + 4u) & 15u) | ((kq_byte(s, j - 4u) >> 6u) << 4u);
                m = (kq_byte(s, j + 4u) >> 4u) | ((kq_byte(s, j) >> 6u) << 4u);
            }
            let a = dd.x * f32(sc);
            let mm = -(dd.y * f32(m));
            return vec4<f32>(a, mm, a, mm);
        }
        case Q6_K: {
            // Signed bytes 2j and 2j + 1 (shifts, not extractBits: portable to MSL 1.x).
            let w = s.w[j >> 1u] >> (16u * (j & 1u));
            let a0 = dd.x * f32(bitcast<i32>(w << 24u) >> 24u);
            let a1 = dd.x * f32(bitcast<i32>(w << 16u) >> 24u);
            return vec4<f32>(a0, -32.0 * a0, a1, -32.0 * a1);
        }
        default: {
            // IQ4_XS: 4 low bits from the scales word, 2 high from scales_h.
            let lo = (s.w.x >> (4u * j)) & 15u;
            let hi = (s.m >> (16u + 2u * j)) & 3u;
            let a = dd.x * f32(i32(lo | (hi << 4u)) - 32);
            return vec4<f32>(a, 0.0, a, 0.0);
        }
    }
}

// Block `blk`'s (a0, m0, a1, m1): w = a * t(q) + m, half 0 then half 1
// (blk = row * cols / 32 + k; super-block blk / 8, sub-block blk % 8).
fn kq_scales(blk: u32, fmt: u32) -> vec4<f32> {
    switch fmt {
        case Q5_0, IQ4_NL: {
            let d = kb_half(kb_scale_word(blk >> 1u), blk);
            let m = select(0.0, -16.0 * d, fmt == Q5_0);
            return vec4<f32>(d, m, d, m);
        }
        case Q5_1: {
            let d = kb_half(kb_scale_word(blk >> 1u), blk);
            let m = kb_half(kb_min_word(blk >> 1u), blk);
            return vec4<f32>(d, m, d, m);
        }
        default: {
            return kq_sub_scales(kq_super(blk >> 3u, fmt), blk & 7u, fmt);
        }
    }
}
