// lib/xload.wgsl: x blocks for the matmul kernels on devices without
// subgroup operations: every invocation loads them itself. The including
// shader declares `x: array<vec4<f32>>`. lib/xload_sg.wgsl has the same
// functions through subgroup broadcasts.
//   x_block(base, lane, sgs): x vec4s base .. base + 8 (one 32-column block
//     of one token); every invocation of a workgroup asks for the same blocks;
//   any_lane(v): whether v holds in any invocation that must run the same
//     loops as this one.

struct XBlock {
    v: array<vec4<f32>, 8>,
}

fn x_block(base: u32, lane: u32, sgs: u32) -> XBlock {
    var b: XBlock;
    b.v[0] = x[base];
    b.v[1] = x[base + 1u];
    b.v[2] = x[base + 2u];
    b.v[3] = x[base + 3u];
    b.v[4] = x[base + 4u];
    b.v[5] = x[base + 5u];
    b.v[6] = x[base + 6u];
    b.v[7] = x[base + 7u];
    return b;
}

fn any_lane(v: bool) -> bool {
    return v;
}
