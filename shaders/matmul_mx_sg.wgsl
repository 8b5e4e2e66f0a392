// matmul_mx_sg.wgsl: out[t, r] = sum_c x[t, c] * W[r, c] with W in Mixed
// planes (a bit width per column group), sharing x loads through subgroup
// broadcasts. Uses lib/mxmatmul.wgsl (the kernels; see there),
// lib/tiles.wgsl and lib/xload_sg.wgsl.

@compute @workgroup_size(WG)
fn matvec_mixed(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32, @builtin(subgroup_invocation_id) lane: u32,
                @builtin(subgroup_size) sgs: u32) {
    matvec(wid.x + wid.y * nwg.x, lid, lane, sgs);
}

@compute @workgroup_size(WG)
fn matmul_mixed(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32, @builtin(subgroup_invocation_id) lane: u32,
                @builtin(subgroup_size) sgs: u32) {
    matmul(wid.x + wid.y * nwg.x, lid, lane, sgs);
}
