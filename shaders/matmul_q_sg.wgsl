// matmul_q_sg.wgsl: out[t, r] = sum_c x[t, c] * W[r, c] with W in Q4_0 / Q4_1 /
// Q8_0 planes (or F16 / F32 with cols % 32 == 0, read in the same 32-column
// blocks), sharing x loads through subgroup broadcasts. Uses
// lib/qblock.wgsl and lib/qmatmul.wgsl (the kernels; see there).

// x vec4s base .. base + 8 (one 32-column block of one token) in every lane:
// lanes 0..7 load one vec4 each and broadcast it (one load per lane instead
// of eight). Subgroups of 4 lanes (WebGPU's minimum) load the second half
// too. `sgs` is uniform, so the branch is too; where the driver does not
// fold it, llvmpipe's masked else-side costs little (its load skips every lane).
// All lanes of the subgroup must pass the same `base`.
fn x_block(base: u32, lane: u32, sgs: u32) -> XBlock {
    var b: XBlock;
    let v0 = x[base + (lane & 7u)];
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
        let v1 = x[base + 4u + (lane & 3u)];
        b.v[4] = subgroupBroadcast(v1, 0u);
        b.v[5] = subgroupBroadcast(v1, 1u);
        b.v[6] = subgroupBroadcast(v1, 2u);
        b.v[7] = subgroupBroadcast(v1, 3u);
    }
    return b;
}

fn any_lane(v: bool) -> bool {
    return subgroupAny(v);
}

@compute @workgroup_size(WG)
fn matvec_q4_0(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32, @builtin(subgroup_invocation_id) lane: u32,
               @builtin(subgroup_size) sgs: u32) {
    matvec(wid.x + wid.y * nwg.x, lid, lane, sgs, Q4_0);
}

@compute @workgroup_size(WG)
fn matvec_q4_1(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32, @builtin(subgroup_invocation_id) lane: u32,
               @builtin(subgroup_size) sgs: u32) {
    matvec(wid.x + wid.y * nwg.x, lid, lane, sgs, Q4_1);
}

@compute @workgroup_size(WG)
fn matvec_q8_0(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32, @builtin(subgroup_invocation_id) lane: u32,
               @builtin(subgroup_size) sgs: u32) {
    matvec(wid.x + wid.y * nwg.x, lid, lane, sgs, Q8_0);
}

@compute @workgroup_size(WG)
fn matmul_q4_0(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32, @builtin(subgroup_invocation_id) lane: u32,
               @builtin(subgroup_size) sgs: u32) {
    matmul(wid.x + wid.y * nwg.x, lid, lane, sgs, Q4_0);
}

@compute @workgroup_size(WG)
fn matmul_q4_1(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32, @builtin(subgroup_invocation_id) lane: u32,
               @builtin(subgroup_size) sgs: u32) {
    matmul(wid.x + wid.y * nwg.x, lid, lane, sgs, Q4_1);
}

@compute @workgroup_size(WG)
fn matmul_q8_0(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32, @builtin(subgroup_invocation_id) lane: u32,
               @builtin(subgroup_size) sgs: u32) {
    matmul(wid.x + wid.y * nwg.x, lid, lane, sgs, Q8_0);
}

@compute @workgroup_size(WG)
fn matvec_f16(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32, @builtin(subgroup_invocation_id) lane: u32,
               @builtin(subgroup_size) sgs: u32) {
    matvec(wid.x + wid.y * nwg.x, lid, lane, sgs, F16);
}

@compute @workgroup_size(WG)
fn matvec_f32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32, @builtin(subgroup_invocation_id) lane: u32,
               @builtin(subgroup_size) sgs: u32) {
    matvec(wid.x + wid.y * nwg.x, lid, lane, sgs, F32);
}

@compute @workgroup_size(WG)
fn matmul_f16(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32, @builtin(subgroup_invocation_id) lane: u32,
               @builtin(subgroup_size) sgs: u32) {
    matmul(wid.x + wid.y * nwg.x, lid, lane, sgs, F16);
}

@compute @workgroup_size(WG)
fn matmul_f32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32, @builtin(subgroup_invocation_id) lane: u32,
               @builtin(subgroup_size) sgs: u32) {
    matmul(wid.x + wid.y * nwg.x, lid, lane, sgs, F32);
}
