// lib/xload.wgsl: x blocks for the matmul kernels on devices without
// subgroup operations: every invocation loads them itself. The including
// shader declares `x: array<vec4<f32>>`. lib/xload_sg.wgsl has the same
// functions through subgroup broadcasts.
//   x_block(base, lane, sgs): x vec4s base .. base + 8 (one 32-column block
//     of one token); every invocation of a workgroup asks for the same blocks;
//   any_lane(v): whether v holds in any invocation that must run the same
//     loops as this one.
// With the GLU override, x holds SwiGLU's gate and up (the two parts of a
// fused gate/up matmul's output, up from vec4 p.x_up / 4 on) and the
// kernel's input is silu(gate) * up (lib/glu.wgsl), made as it is loaded.
//   norm_block(c4, lane, sgs): with NORM (lib/xnorm.wgsl), RMSNorm's weight
//     for the block at x vec4 c4 of a row.

override GLU: bool = false;

// The input's vec4 i.
fn x_load(i: u32) -> vec4<f32> {
    if GLU {
        return silu4(x[i]) * x[i + p.x_up / 4u];
    }
    return x[i];
}

struct XBlock {
    v: array<vec4<f32>, 8>,
}

fn x_block(base: u32, lane: u32, sgs: u32) -> XBlock {
    var b: XBlock;
    b.v[0] = x_load(base);
    b.v[1] = x_load(base + 1u);
    b.v[2] = x_load(base + 2u);
    b.v[3] = x_load(base + 3u);
    b.v[4] = x_load(base + 4u);
    b.v[5] = x_load(base + 5u);
    b.v[6] = x_load(base + 6u);
    b.v[7] = x_load(base + 7u);
    return b;
}

// NORM (lib/xnorm.wgsl): RMSNorm's weight for the block at x vec4 c4 of a
// row, loaded as x_block loads x.
fn norm_block(c4: u32, lane: u32, sgs: u32) -> XBlock {
    var b: XBlock;
    b.v[0] = norm_w[c4];
    b.v[1] = norm_w[c4 + 1u];
    b.v[2] = norm_w[c4 + 2u];
    b.v[3] = norm_w[c4 + 3u];
    b.v[4] = norm_w[c4 + 4u];
    b.v[5] = norm_w[c4 + 5u];
    b.v[6] = norm_w[c4 + 6u];
    b.v[7] = norm_w[c4 + 7u];
    return b;
}

fn any_lane(v: bool) -> bool {
    return v;
}
