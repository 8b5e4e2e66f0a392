// matmul_k_sg.wgsl: matmul_k.wgsl's kernels (the GGUF types of
// lib/kblock.wgsl) sharing x loads through subgroup broadcasts
// (lib/xload_sg.wgsl).

@compute @workgroup_size(WG)
fn matvec_q5_0(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32, @builtin(subgroup_invocation_id) lane: u32,
               @builtin(subgroup_size) sgs: u32) {
    matvec(wid.x + wid.y * nwg.x, lid, lane, sgs, Q5_0);
}

@compute @workgroup_size(WG)
fn matvec_q5_1(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32, @builtin(subgroup_invocation_id) lane: u32,
               @builtin(subgroup_size) sgs: u32) {
    matvec(wid.x + wid.y * nwg.x, lid, lane, sgs, Q5_1);
}

@compute @workgroup_size(WG)
fn matvec_iq4_nl(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32, @builtin(subgroup_invocation_id) lane: u32,
               @builtin(subgroup_size) sgs: u32) {
    matvec(wid.x + wid.y * nwg.x, lid, lane, sgs, IQ4_NL);
}

@compute @workgroup_size(WG)
fn matvec_q2_k(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32, @builtin(subgroup_invocation_id) lane: u32,
               @builtin(subgroup_size) sgs: u32) {
    matvec_super(wid.x + wid.y * nwg.x, lid, lane, sgs, Q2_K);
}

@compute @workgroup_size(WG)
fn matvec_q3_k(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32, @builtin(subgroup_invocation_id) lane: u32,
               @builtin(subgroup_size) sgs: u32) {
    matvec_super(wid.x + wid.y * nwg.x, lid, lane, sgs, Q3_K);
}

@compute @workgroup_size(WG)
fn matvec_q4_k(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32, @builtin(subgroup_invocation_id) lane: u32,
               @builtin(subgroup_size) sgs: u32) {
    matvec_super(wid.x + wid.y * nwg.x, lid, lane, sgs, Q4_K);
}

@compute @workgroup_size(WG)
fn matvec_q5_k(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32, @builtin(subgroup_invocation_id) lane: u32,
               @builtin(subgroup_size) sgs: u32) {
    matvec_super(wid.x + wid.y * nwg.x, lid, lane, sgs, Q5_K);
}

@compute @workgroup_size(WG)
fn matvec_q6_k(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32, @builtin(subgroup_invocation_id) lane: u32,
               @builtin(subgroup_size) sgs: u32) {
    matvec_super(wid.x + wid.y * nwg.x, lid, lane, sgs, Q6_K);
}

@compute @workgroup_size(WG)
fn matvec_iq4_xs(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32, @builtin(subgroup_invocation_id) lane: u32,
               @builtin(subgroup_size) sgs: u32) {
    matvec_super(wid.x + wid.y * nwg.x, lid, lane, sgs, IQ4_XS);
}

@compute @workgroup_size(WG)
fn matmul_q5_0(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32, @builtin(subgroup_invocation_id) lane: u32,
               @builtin(subgroup_size) sgs: u32) {
    matmul(wid.x + wid.y * nwg.x, lid, lane, sgs, Q5_0);
}

@compute @workgroup_size(WG)
fn matmul_q5_1(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32, @builtin(subgroup_invocation_id) lane: u32,
               @builtin(subgroup_size) sgs: u32) {
    matmul(wid.x + wid.y * nwg.x, lid, lane, sgs, Q5_1);
}

@compute @workgroup_size(WG)
fn matmul_iq4_nl(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32, @builtin(subgroup_invocation_id) lane: u32,
               @builtin(subgroup_size) sgs: u32) {
    matmul(wid.x + wid.y * nwg.x, lid, lane, sgs, IQ4_NL);
}

@compute @workgroup_size(WG)
fn matmul_q2_k(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32, @builtin(subgroup_invocation_id) lane: u32,
               @builtin(subgroup_size) sgs: u32) {
    matmul(wid.x + wid.y * nwg.x, lid, lane, sgs, Q2_K);
}

@compute @workgroup_size(WG)
fn matmul_q3_k(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32, @builtin(subgroup_invocation_id) lane: u32,
               @builtin(subgroup_size) sgs: u32) {
    matmul(wid.x + wid.y * nwg.x, lid, lane, sgs, Q3_K);
}

@compute @workgroup_size(WG)
fn matmul_q4_k(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32, @builtin(subgroup_invocation_id) lane: u32,
               @builtin(subgroup_size) sgs: u32) {
    matmul(wid.x + wid.y * nwg.x, lid, lane, sgs, Q4_K);
}

@compute @workgroup_size(WG)
fn matmul_q5_k(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32, @builtin(subgroup_invocation_id) lane: u32,
               @builtin(subgroup_size) sgs: u32) {
    matmul(wid.x + wid.y * nwg.x, lid, lane, sgs, Q5_K);
}

@compute @workgroup_size(WG)
fn matmul_q6_k(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32, @builtin(subgroup_invocation_id) lane: u32,
               @builtin(subgroup_size) sgs: u32) {
    matmul(wid.x + wid.y * nwg.x, lid, lane, sgs, Q6_K);
}

@compute @workgroup_size(WG)
fn matmul_iq4_xs(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32, @builtin(subgroup_invocation_id) lane: u32,
               @builtin(subgroup_size) sgs: u32) {
    matmul(wid.x + wid.y * nwg.x, lid, lane, sgs, IQ4_XS);
}

@compute @workgroup_size(WG)
fn matmul4_q5_0(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32, @builtin(subgroup_invocation_id) lane: u32,
                @builtin(subgroup_size) sgs: u32) {
    matmul4(wid.x + wid.y * nwg.x, lid, lane, sgs, Q5_0);
}

@compute @workgroup_size(WG)
fn matmul4_q5_1(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32, @builtin(subgroup_invocation_id) lane: u32,
                @builtin(subgroup_size) sgs: u32) {
    matmul4(wid.x + wid.y * nwg.x, lid, lane, sgs, Q5_1);
}

@compute @workgroup_size(WG)
fn matmul4_iq4_nl(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32, @builtin(subgroup_invocation_id) lane: u32,
                @builtin(subgroup_size) sgs: u32) {
    matmul4(wid.x + wid.y * nwg.x, lid, lane, sgs, IQ4_NL);
}

@compute @workgroup_size(WG)
fn matmul4_q2_k(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32, @builtin(subgroup_invocation_id) lane: u32,
                @builtin(subgroup_size) sgs: u32) {
    matmul4(wid.x + wid.y * nwg.x, lid, lane, sgs, Q2_K);
}

@compute @workgroup_size(WG)
fn matmul4_q3_k(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32, @builtin(subgroup_invocation_id) lane: u32,
                @builtin(subgroup_size) sgs: u32) {
    matmul4(wid.x + wid.y * nwg.x, lid, lane, sgs, Q3_K);
}

@compute @workgroup_size(WG)
fn matmul4_q4_k(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32, @builtin(subgroup_invocation_id) lane: u32,
                @builtin(subgroup_size) sgs: u32) {
    matmul4(wid.x + wid.y * nwg.x, lid, lane, sgs, Q4_K);
}

@compute @workgroup_size(WG)
fn matmul4_q5_k(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32, @builtin(subgroup_invocation_id) lane: u32,
                @builtin(subgroup_size) sgs: u32) {
    matmul4(wid.x + wid.y * nwg.x, lid, lane, sgs, Q5_K);
}

@compute @workgroup_size(WG)
fn matmul4_q6_k(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32, @builtin(subgroup_invocation_id) lane: u32,
                @builtin(subgroup_size) sgs: u32) {
    matmul4(wid.x + wid.y * nwg.x, lid, lane, sgs, Q6_K);
}

@compute @workgroup_size(WG)
fn matmul4_iq4_xs(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32, @builtin(subgroup_invocation_id) lane: u32,
                @builtin(subgroup_size) sgs: u32) {
    matmul4(wid.x + wid.y * nwg.x, lid, lane, sgs, IQ4_XS);
}
