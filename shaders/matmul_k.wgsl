// matmul_k.wgsl: out[t, r] = sum_c x[t, c] * W[r, c] with W in the GGUF types
// of lib/kblock.wgsl (Q5_0, Q5_1, IQ4_NL, Q2_K .. Q6_K, IQ4_XS), for devices
// without subgroup operations. The same kernels as matmul_q.wgsl
// (lib/qblock.wgsl, lib/qmatmul.wgsl, lib/tiles.wgsl, lib/xload.wgsl), in a
// module of their own so that the Q4 / Q8 / float modules leave these
// decoders out. Where subgroups exist, matmul_k_sg.wgsl runs instead.

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
    matvec_super(wid.x + wid.y * nwg.x, lid, 0u, 0u, Q2_K);
}

@compute @workgroup_size(WG)
fn matvec_q3_k(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    matvec_super(wid.x + wid.y * nwg.x, lid, 0u, 0u, Q3_K);
}

@compute @workgroup_size(WG)
fn matvec_q4_k(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    matvec_super(wid.x + wid.y * nwg.x, lid, 0u, 0u, Q4_K);
}

@compute @workgroup_size(WG)
fn matvec_q5_k(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    matvec_super(wid.x + wid.y * nwg.x, lid, 0u, 0u, Q5_K);
}

@compute @workgroup_size(WG)
fn matvec_q6_k(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    matvec_super(wid.x + wid.y * nwg.x, lid, 0u, 0u, Q6_K);
}

@compute @workgroup_size(WG)
fn matvec_iq4_xs(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    matvec_super(wid.x + wid.y * nwg.x, lid, 0u, 0u, IQ4_XS);
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

@compute @workgroup_size(WG)
fn matmul4_q5_0(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    matmul4(wid.x + wid.y * nwg.x, lid, 0u, 0u, Q5_0);
}

@compute @workgroup_size(WG)
fn matmul4_q5_1(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    matmul4(wid.x + wid.y * nwg.x, lid, 0u, 0u, Q5_1);
}

@compute @workgroup_size(WG)
fn matmul4_iq4_nl(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    matmul4(wid.x + wid.y * nwg.x, lid, 0u, 0u, IQ4_NL);
}

@compute @workgroup_size(WG)
fn matmul4_q2_k(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    matmul4(wid.x + wid.y * nwg.x, lid, 0u, 0u, Q2_K);
}

@compute @workgroup_size(WG)
fn matmul4_q3_k(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    matmul4(wid.x + wid.y * nwg.x, lid, 0u, 0u, Q3_K);
}

@compute @workgroup_size(WG)
fn matmul4_q4_k(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    matmul4(wid.x + wid.y * nwg.x, lid, 0u, 0u, Q4_K);
}

@compute @workgroup_size(WG)
fn matmul4_q5_k(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    matmul4(wid.x + wid.y * nwg.x, lid, 0u, 0u, Q5_K);
}

@compute @workgroup_size(WG)
fn matmul4_q6_k(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    matmul4(wid.x + wid.y * nwg.x, lid, 0u, 0u, Q6_K);
}

@compute @workgroup_size(WG)
fn matmul4_iq4_xs(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    matmul4(wid.x + wid.y * nwg.x, lid, 0u, 0u, IQ4_XS);
}
