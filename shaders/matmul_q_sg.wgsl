// matmul_q_sg.wgsl: matmul_q.wgsl's kernels (Q4_0 / Q4_1 / Q8_0, F16 / F32
// with cols % 32 == 0) sharing x loads through subgroup broadcasts. Uses
// lib/qblock.wgsl, lib/qmatmul.wgsl (the kernels; see there),
// lib/tiles.wgsl, lib/xload_sg.wgsl and lib/kblock_none.wgsl.

@compute @workgroup_size(WG)
fn matvec_q4_0(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32, @builtin(subgroup_invocation_id) lane: u32,
               @builtin(subgroup_size) sgs: u32) {
    matvec(wid.x + wid.y * nwg.x, lid, lane, sgs, Q4_0);
}

@compute @workgroup_size(WG)
fn matvec2_q4_0(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32, @builtin(subgroup_invocation_id) lane: u32,
               @builtin(subgroup_size) sgs: u32) {
    matvec2(wid.x + wid.y * nwg.x, lid, lane, sgs, Q4_0);
}

@compute @workgroup_size(WG)
fn matvec_q4_1(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32, @builtin(subgroup_invocation_id) lane: u32,
               @builtin(subgroup_size) sgs: u32) {
    matvec(wid.x + wid.y * nwg.x, lid, lane, sgs, Q4_1);
}

@compute @workgroup_size(WG)
fn matvec2_q4_1(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32, @builtin(subgroup_invocation_id) lane: u32,
               @builtin(subgroup_size) sgs: u32) {
    matvec2(wid.x + wid.y * nwg.x, lid, lane, sgs, Q4_1);
}

@compute @workgroup_size(WG)
fn matvec_q8_0(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32, @builtin(subgroup_invocation_id) lane: u32,
               @builtin(subgroup_size) sgs: u32) {
    matvec(wid.x + wid.y * nwg.x, lid, lane, sgs, Q8_0);
}

@compute @workgroup_size(WG)
fn matvec2_q8_0(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32, @builtin(subgroup_invocation_id) lane: u32,
               @builtin(subgroup_size) sgs: u32) {
    matvec2(wid.x + wid.y * nwg.x, lid, lane, sgs, Q8_0);
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

@compute @workgroup_size(WG)
fn matmul4_q4_0(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32, @builtin(subgroup_invocation_id) lane: u32,
                @builtin(subgroup_size) sgs: u32) {
    matmul4(wid.x + wid.y * nwg.x, lid, lane, sgs, Q4_0);
}

@compute @workgroup_size(WG)
fn matmul4_q4_1(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32, @builtin(subgroup_invocation_id) lane: u32,
                @builtin(subgroup_size) sgs: u32) {
    matmul4(wid.x + wid.y * nwg.x, lid, lane, sgs, Q4_1);
}

@compute @workgroup_size(WG)
fn matmul4_q8_0(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32, @builtin(subgroup_invocation_id) lane: u32,
                @builtin(subgroup_size) sgs: u32) {
    matmul4(wid.x + wid.y * nwg.x, lid, lane, sgs, Q8_0);
}

@compute @workgroup_size(WG)
fn matmul4_f16(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32, @builtin(subgroup_invocation_id) lane: u32,
                @builtin(subgroup_size) sgs: u32) {
    matmul4(wid.x + wid.y * nwg.x, lid, lane, sgs, F16);
}

@compute @workgroup_size(WG)
fn matmul4_f32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32, @builtin(subgroup_invocation_id) lane: u32,
                @builtin(subgroup_size) sgs: u32) {
    matmul4(wid.x + wid.y * nwg.x, lid, lane, sgs, F32);
}
