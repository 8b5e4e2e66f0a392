// lib/xload_sg.wgsl: x blocks for the matmul kernels through subgroup
// broadcasts (see lib/xload.wgsl for the contract, GLU included; same
// functions).

override GLU: bool = false;

fn x_load(i: u32) -> vec4<f32> {
    if GLU {
        return silu4(x[i]) * x[i + p.x_up / 4u];
    }
    return x[i];
}

struct XBlock {
    v: array<vec4<f32>, 8>,
}

// Each lane's vec4 v0 spread to every lane: lane k's becomes v[k]. Subgroups
// of 4 lanes (WebGPU's minimum) give v[4 + k] from lane k's v1 (only read
// then). `sgs` is uniform, so the branch is too; where the driver does not
// fold it, llvmpipe's masked else-side costs little.
fn spread_block(v0: vec4<f32>, v1: vec4<f32>, sgs: u32) -> XBlock {
    var b: XBlock;
    b.v[0] = subgroupBroadcast(v0, 0u);
    b.v[1] = subgroupBroadcast(v0, 1u);
    b.v[2] = subgroupBroadcast(v0, 2u);
    b.v[3] = subgroupBroadcast(v0, 3u);
    if sgs >= 8u {
        b.v[4] = subgroupBroadcast(v0, 4u);
        b.v[5] = subgroupBroadcast(v0, 5u);
        b.v[6] = subgroupBroadcast(v0, 6u);
        b.v[7] = subgroupBroadcast(v0, 7u);
    } else {
        b.v[4] = subgroupBroadcast(v1, 0u);
        b.v[5] = subgroupBroadcast(v1, 1u);
        b.v[6] = subgroupBroadcast(v1, 2u);
        b.v[7] = subgroupBroadcast(v1, 3u);
    }
    return b;
}

// x vec4s base .. base + 8 (one 32-column block of one token) in every lane:
// lanes 0..7 load one vec4 each and broadcast it (one load per lane instead
// of eight). All lanes of the subgroup must pass the same `base`.
fn x_block(base: u32, lane: u32, sgs: u32) -> XBlock {
    let v0 = x_load(base + (lane & 7u));
    var v1 = vec4<f32>(0.0);
    if sgs < 8u {
        v1 = x_load(base + 4u + (lane & 3u));
    }
    return spread_block(v0, v1, sgs);
}

// NORM: RMSNorm's weight for the block at x vec4 c4 of a row, broadcast
// as x is.
fn norm_block(c4: u32, lane: u32, sgs: u32) -> XBlock {
    let v0 = norm_w[c4 + (lane & 7u)];
    var v1 = vec4<f32>(0.0);
    if sgs < 8u {
        v1 = norm_w[c4 + 4u + (lane & 3u)];
    }
    return spread_block(v0, v1, sgs);
}

fn any_lane(v: bool) -> bool {
    return subgroupAny(v);
}
