// lib/rownorm.wgsl: 1 / RMS of one row of `x`, the one sum-of-squares order
// rmsnorm.wgsl and rmsnorm_quant.wgsl share (lane i sums columns i,
// i + NORM_WG, ..., then lib/reduce.wgsl's tree), so that RMSNorm then
// act_quant and rmsnorm_quant give the same codes bit for bit. Both run
// NORM_WG invocations a row: a wider group only adds barrier rounds (on
// llvmpipe every barrier switches all of the group's SIMD batches: with
// 256, RMSNorm took 9.2-9.7% of an 8-token prefill step of the default
// model, with 64 5.7-6.2%); a row is a few KiB, so 64 keep a GPU's memory
// busy too. The includer declares `x: array<f32>`. Uses lib/reduce.wgsl.

const NORM_WG: u32 = 64u;

fn row_inv_rms(base: u32, dim: u32, eps: f32, lid: u32) -> f32 {
    var ss = 0.0;
    for (var i = lid; i < dim; i += NORM_WG) {
        let v = x[base + i];
        ss += v * v;
    }
    let total = wg_sum(lid, ss, NORM_WG);
    return inverseSqrt(total / f32(dim) + eps);
}
