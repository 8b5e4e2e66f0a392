// matmul_q.wgsl: out[t, r] = sum_c x[t, c] * W[r, c] with W in Q4_0 / Q4_1 /
// Q8_0 planes (or F16 / F32 with cols % 32 == 0, read in the same 32-column
// blocks), for devices without subgroup operations: every invocation loads
// the x blocks itself. Uses lib/qblock.wgsl, lib/qmatmul.wgsl (the kernels;
// see there), lib/tiles.wgsl and lib/xload.wgsl, and lib/kblock_none.wgsl in
// place of lib/kblock.wgsl (the GGUF types' decoders, which these formats
// never reach; their entry points are in matmul_k.wgsl). Where subgroups
// exist, matmul_q_sg.wgsl runs instead.

@compute @workgroup_size(WG)
fn matvec_q4_0(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    matvec(wid.x + wid.y * nwg.x, lid, 0u, 0u, Q4_0);
}

@compute @workgroup_size(WG)
fn matvec2_q4_0(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    matvec2(wid.x + wid.y * nwg.x, lid, 0u, 0u, Q4_0);
}

@compute @workgroup_size(WG)
fn matvec_q4_1(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    matvec(wid.x + wid.y * nwg.x, lid, 0u, 0u, Q4_1);
}

@compute @workgroup_size(WG)
fn matvec2_q4_1(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    matvec2(wid.x + wid.y * nwg.x, lid, 0u, 0u, Q4_1);
}

@compute @workgroup_size(WG)
fn matvec_q8_0(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    matvec(wid.x + wid.y * nwg.x, lid, 0u, 0u, Q8_0);
}

@compute @workgroup_size(WG)
fn matvec2_q8_0(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    matvec2(wid.x + wid.y * nwg.x, lid, 0u, 0u, Q8_0);
}

@compute @workgroup_size(WG)
fn matmul_q4_0(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    matmul(wid.x + wid.y * nwg.x, lid, 0u, 0u, Q4_0);
}

@compute @workgroup_size(WG)
fn matmul_q4_1(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    matmul(wid.x + wid.y * nwg.x, lid, 0u, 0u, Q4_1);
}

@compute @workgroup_size(WG)
fn matmul_q8_0(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    matmul(wid.x + wid.y * nwg.x, lid, 0u, 0u, Q8_0);
}

@compute @workgroup_size(WG)
fn matvec_f16(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    matvec(wid.x + wid.y * nwg.x, lid, 0u, 0u, F16);
}

@compute @workgroup_size(WG)
fn matvec_f32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    matvec(wid.x + wid.y * nwg.x, lid, 0u, 0u, F32);
}

@compute @workgroup_size(WG)
fn matmul_f16(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    matmul(wid.x + wid.y * nwg.x, lid, 0u, 0u, F16);
}

@compute @workgroup_size(WG)
fn matmul_f32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    matmul(wid.x + wid.y * nwg.x, lid, 0u, 0u, F32);
}

@compute @workgroup_size(WG)
fn matmul4_q4_0(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    matmul4(wid.x + wid.y * nwg.x, lid, 0u, 0u, Q4_0);
}

@compute @workgroup_size(WG)
fn matmul4_q4_1(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    matmul4(wid.x + wid.y * nwg.x, lid, 0u, 0u, Q4_1);
}

@compute @workgroup_size(WG)
fn matmul4_q8_0(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    matmul4(wid.x + wid.y * nwg.x, lid, 0u, 0u, Q8_0);
}

@compute @workgroup_size(WG)
fn matmul4_f16(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    matmul4(wid.x + wid.y * nwg.x, lid, 0u, 0u, F16);
}

@compute @workgroup_size(WG)
fn matmul4_f32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    matmul4(wid.x + wid.y * nwg.x, lid, 0u, 0u, F32);
}
