// lib/trig.wgsl: sincos and exp2 accurate to about an ulp, for RoPE.
// WGSL only promises builtin sin/cos to 2^-11 absolute inside [-pi, pi]
// and nothing outside, and RoPE feeds angles up to pos * 1 rad (8192 rad
// and more); builtin exp2 may be off by several ulp, which the position
// multiplies.
//
// Reduction: a = q * pi/2 + r with q = round(a * 2/pi), pi/2 split into
// three parts of at most 8 significant bits plus an f32 tail (Cody & Waite),
// so q * part is exact for |q| < 2^16 (|a| < ~1e5) without fma, and
// a - q * P1 is exact by Sterbenz' lemma. Then the minimax polynomials of
// Cephes' sinf/cosf (S. Moshier) on [-pi/4, pi/4].

const TRIG_P1: f32 = 1.5703125;
const TRIG_P2: f32 = 0.0004825592041015625;
const TRIG_P3: f32 = 1.2665987014770508e-06;
const TRIG_P4: f32 = 9.92093629470503e-10;
const TRIG_2_OVER_PI: f32 = 0.6366197466850281;

// (sin(a), cos(a)).
fn sincos(a: f32) -> vec2<f32> {
    let q = round(a * TRIG_2_OVER_PI);
    var r = a - q * TRIG_P1;
    r = r - q * TRIG_P2;
    r = r - q * TRIG_P3;
    r = r - q * TRIG_P4;
    let z = r * r;
    let s = ((-1.9515295891e-4 * z + 8.3321608736e-3) * z - 1.6666654611e-1) * z * r + r;
    let c = ((2.443315711809948e-5 * z - 1.388731625493765e-3) * z + 4.166664568298827e-2) * z * z
        - 0.5 * z + 1.0;
    // Quadrant q mod 4 (two's complement keeps it right for negative q).
    switch bitcast<u32>(i32(q)) & 3u {
        case 0u: { return vec2<f32>(s, c); }
        case 1u: { return vec2<f32>(c, -s); }
        case 2u: { return vec2<f32>(-s, -c); }
        default: { return vec2<f32>(-c, s); }
    }
}

// 2^x to about 1 ulp for |x| < 126. The builtin exp2 may be off by several
// ulp (3 + 2|x| allowed by Vulkan), which RoPE multiplies by the position.
// x = n + f with |f| <= 1/2, 2^f = e^g (g = f ln 2, |g| < 0.35) by its Taylor
// series to g^7 (truncation < 1e-8 relative), then scaled by 2^n exactly.
fn exp2_accurate(x: f32) -> f32 {
    let n = round(x);
    let g = (x - n) * 0.6931471805599453;
    let e = 1.0 + g * (1.0 + g * (0.5 + g * (1.0 / 6.0 + g * (1.0 / 24.0 + g * (1.0 / 120.0
        + g * (1.0 / 720.0 + g * (1.0 / 5040.0)))))));
    return ldexp(e, i32(n));
}
