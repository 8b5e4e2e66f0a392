// matmul_q.wgsl: out[t, r] = sum_c x[t, c] * W[r, c] with W in Q4_0 / Q4_1 /
// Q8_0 planes, the types of lib/kblock.wgsl (or F16 / F32 with cols % 32 == 0, read in the same 32-column
// blocks), for devices without subgroup operations: every invocation
// loads the x blocks itself. Uses lib/qblock.wgsl, lib/qmatmul.wgsl (the
// kernels; see there), lib/tiles.wgsl and lib/xload.wgsl. Where subgroups
// exist, matmul_q_sg.wgsl runs instead.

@compute @workgroup_size(WG)
fn matvec_q4_0(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    matvec(wid.x + wid.y * nwg.x, lid, 0u, 0u, Q4_0);
}

@compute @workgroup_size(WG)
fn matvec_q4_1(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    matvec(wid.x + wid.y * nwg.x, lid, 0u, 0u, Q4_1);
}

@compute @workgroup_size(WG)
fn matvec_q8_0(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    matvec(wid.x + wid.y * nwg.x, lid, 0u, 0u, Q8_0);
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
fn matvec_q5_0(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    matvec(wid.x + wid.y * nwg.x, lid, 0u, 0u, Q5_0);
}

@compute @workgroup_size(WG)
fn matvec_q5_1(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    matvec(wid.x + wid.y * nwg.x, lid, 0u, 0u, Q5_1);
}

@compute @workgroup_size(WG)
fn matvec_iq4_nl(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    matvec(wid.x + wid.y * nwg.x, lid, 0u, 0u, IQ4_NL);
}

@compute @workgroup_size(WG)
fn matvec_q2_k(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    matvec(wid.x + wid.y * nwg.x, lid, 0u, 0u, Q2_K);
}

@compute @workgroup_size(WG)
fn matvec_q3_k(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    matvec(wid.x + wid.y * nwg.x, lid, 0u, 0u, Q3_K);
}

@compute @workgroup_size(WG)
fn matvec_q4_k(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    matvec(wid.x + wid.y * nwg.x, lid, 0u, 0u, Q4_K);
}

@compute @workgroup_size(WG)
fn matvec_q5_k(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    matvec(wid.x + wid.y * nwg.x, lid, 0u, 0u, Q5_K);
}

@compute @workgroup_size(WG)
fn matvec_q6_k(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    matvec(wid.x + wid.y * nwg.x, lid, 0u, 0u, Q6_K);
}

@compute @workgroup_size(WG)
fn matvec_iq4_xs(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    matvec(wid.x + wid.y * nwg.x, lid, 0u, 0u, IQ4_XS);
}

@compute @workgroup_size(WG)
fn matmul_q5_0(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    matmul(wid.x + wid.y * nwg.x, lid, 0u, 0u, Q5_0);
}

@compute @workgroup_size(WG)
fn matmul_q5_1(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    matmul(wid.x + wid.y * nwg.x, lid, 0u, 0u, Q5_1);
}

@compute @workgroup_size(WG)
fn matmul_iq4_nl(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    matmul(wid.x + wid.y * nwg.x, lid, 0u, 0u, IQ4_NL);
}

@compute @workgroup_size(WG)
fn matmul_q2_k(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    matmul(wid.x + wid.y * nwg.x, lid, 0u, 0u, Q2_K);
}

@compute @workgroup_size(WG)
fn matmul_q3_k(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    matmul(wid.x + wid.y * nwg.x, lid, 0u, 0u, Q3_K);
}

@compute @workgroup_size(WG)
fn matmul_q4_k(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    matmul(wid.x + wid.y * nwg.x, lid, 0u, 0u, Q4_K);
}

@compute @workgroup_size(WG)
fn matmul_q5_k(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    matmul(wid.x + wid.y * nwg.x, lid, 0u, 0u, Q5_K);
}

@compute @workgroup_size(WG)
fn matmul_q6_k(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    matmul(wid.x + wid.y * nwg.x, lid, 0u, 0u, Q6_K);
}

@compute @workgroup_size(WG)
fn matmul_iq4_xs(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    matmul(wid.x + wid.y * nwg.x, lid, 0u, 0u, IQ4_XS);
}
