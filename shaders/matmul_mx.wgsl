// matmul_mx.wgsl: out[t, r] = sum_c x[t, c] * W[r, c] with W in Mixed planes
// (a bit width per column group), for devices without subgroup operations.
// Uses lib/mxmatmul.wgsl (the kernels; see there), lib/tiles.wgsl and
// lib/xload.wgsl. Where subgroups exist, matmul_mx_sg.wgsl runs instead.

@compute @workgroup_size(WG)
fn matvec_mixed(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    matvec(wid.x + wid.y * nwg.x, lid, 0u, 0u);
}

@compute @workgroup_size(WG)
fn matmul_mixed(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    matmul(wid.x + wid.y * nwg.x, lid, 0u, 0u);
}
