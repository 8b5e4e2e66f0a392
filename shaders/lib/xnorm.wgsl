// lib/xnorm.wgsl: RMSNorm folded into the mat-vec that reads it (the NORM
// override; engine/src/ops/matmul.rs, `MatVecIn::Norm`). The kernel's input
// is RMSNorm(x) * w = x * rstd * w, rstd = 1 / sqrt(mean(x^2) + eps), and
// since rstd is one number for the token it factors out of every dot:
//   out[r] = rstd * sum_c W[r, c] * (w[c] * x[c]).
// norm_prologue computes rstd once per workgroup (a workgroup sum, in
// uniform control flow at the kernel's start), the kernel multiplies each x
// block by w's (x_block_normed; norm_block in lib/xload*.wgsl) and its
// results by rstd (norm_vec). Decode only: the tiled kernels read x normed
// by an rmsnorm pass, which does each token once instead of once per tile
// of rows. The including kernel declares `norm_w: array<vec4<f32>>` (w), WG
// and the `p` fields cols, nb, eps.

override NORM: bool = false;

var<workgroup> norm_part: array<f32, WG>;
var<workgroup> norm_rstd: f32;

// rstd of x row `row` into norm_rstd. Every invocation of the workgroup
// calls it.
fn norm_prologue(row: u32, lid: u32) {
    if !NORM {
        return;
    }
    let row4 = p.nb * 8u;
    let base = row * row4;
    var acc = 0.0;
    for (var i = lid; i < row4; i += WG) {
        let v = x_load(base + i);
        acc = fma(v.x, v.x, fma(v.y, v.y, fma(v.z, v.z, fma(v.w, v.w, acc))));
    }
    norm_part[lid] = acc;
    workgroupBarrier();
    if lid == 0u {
        var ss = 0.0;
        for (var i = 0u; i < WG; i++) {
            ss += norm_part[i];
        }
        norm_rstd = inverseSqrt(ss / f32(p.cols) + p.eps);
    }
    workgroupBarrier();
}

// An x block times w's block (from norm_block).
fn norm_mul(b: XBlock, w: XBlock) -> XBlock {
    var r: XBlock;
    r.v[0] = b.v[0] * w.v[0];
    r.v[1] = b.v[1] * w.v[1];
    r.v[2] = b.v[2] * w.v[2];
    r.v[3] = b.v[3] * w.v[3];
    r.v[4] = b.v[4] * w.v[4];
    r.v[5] = b.v[5] * w.v[5];
    r.v[6] = b.v[6] * w.v[6];
    r.v[7] = b.v[7] * w.v[7];
    return r;
}

// The x block at vec4 `row + c4`, times w's block at c4 with NORM.
fn x_block_normed(row: u32, c4: u32, lane: u32, sgs: u32) -> XBlock {
    let b = x_block(row + c4, lane, sgs);
    if NORM {
        return norm_mul(b, norm_block(c4, lane, sgs));
    }
    return b;
}

// The mat-vec's R rows.
fn norm_vec(acc: vec4<f32>) -> vec4<f32> {
    if NORM {
        return acc * norm_rstd;
    }
    return acc;
}
