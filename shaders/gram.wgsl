// gram.wgsl: out += x^T x over the step's tokens (the Gram matrix of the
// rows of x, for GPTQ's Hessians). x: [n_tokens, dim] f32, out: [dim, dim]
// f32, accumulated across steps. An invocation owns an 8 x 8 tile of out and
// a workgroup 64 x 64; only workgroups on or above the diagonal run (out is
// symmetric: the host mirrors the upper triangle). Per token an invocation
// loads 4 vec4s of x and does 16 vec4 FMAs. Needs dim % 8 == 0.

struct Params {
    n_tokens: u32,
    dim: u32,
    // Workgroups along a side of out: ceil(dim / 64).
    side: u32,
    _p0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> out: array<vec4<f32>>;

const WG: u32 = 64u;

@compute @workgroup_size(WG)
fn gram(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let w = wid.x + wid.y * nwg.x;
    let wi = w / p.side;
    let wj = w % p.side;
    if wi > wj || wi >= p.side {
        return;
    }
    let i0 = (wi * 8u + lid / 8u) * 8u;
    let j0 = (wj * 8u + lid % 8u) * 8u;
    if i0 >= p.dim || j0 >= p.dim {
        return;
    }
    let stride = p.dim / 4u;
    var acc: array<vec4<f32>, 16>;
    for (var t = 0u; t < p.n_tokens; t++) {
        let b = t * stride;
        let a0 = x[b + i0 / 4u];
        let a1 = x[b + i0 / 4u + 1u];
        let c0 = x[b + j0 / 4u];
        let c1 = x[b + j0 / 4u + 1u];
        acc[0] = fma(vec4<f32>(a0.x), c0, acc[0]);
        acc[1] = fma(vec4<f32>(a0.x), c1, acc[1]);
        acc[2] = fma(vec4<f32>(a0.y), c0, acc[2]);
        acc[3] = fma(vec4<f32>(a0.y), c1, acc[3]);
        acc[4] = fma(vec4<f32>(a0.z), c0, acc[4]);
        acc[5] = fma(vec4<f32>(a0.z), c1, acc[5]);
        acc[6] = fma(vec4<f32>(a0.w), c0, acc[6]);
        acc[7] = fma(vec4<f32>(a0.w), c1, acc[7]);
        acc[8] = fma(vec4<f32>(a1.x), c0, acc[8]);
        acc[9] = fma(vec4<f32>(a1.x), c1, acc[9]);
        acc[10] = fma(vec4<f32>(a1.y), c0, acc[10]);
        acc[11] = fma(vec4<f32>(a1.y), c1, acc[11]);
        acc[12] = fma(vec4<f32>(a1.z), c0, acc[12]);
        acc[13] = fma(vec4<f32>(a1.z), c1, acc[13]);
        acc[14] = fma(vec4<f32>(a1.w), c0, acc[14]);
        acc[15] = fma(vec4<f32>(a1.w), c1, acc[15]);
    }
    for (var a = 0u; a < 8u; a++) {
        let o = ((i0 + a) * p.dim + j0) / 4u;
        out[o] += acc[2u * a];
        out[o + 1u] += acc[2u * a + 1u];
    }
}
