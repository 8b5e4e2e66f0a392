// lib/reduce.wgsl: workgroup tree reductions over a shared array of 256 f32.
// The caller declares nothing; these use the module-scope `red` array.

var<workgroup> red: array<f32, 256>;

// Sum of `v` over the first `n` (power of two, <= 256) invocations of the workgroup.
fn wg_sum(lid: u32, v: f32, n: u32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    var s = n / 2u;
    loop {
        if s == 0u { break; }
        if lid < s { red[lid] = red[lid] + red[lid + s]; }
        workgroupBarrier();
        s = s / 2u;
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

// Max of `v` over the first `n` (power of two, <= 256) invocations.
fn wg_max(lid: u32, v: f32, n: u32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    var s = n / 2u;
    loop {
        if s == 0u { break; }
        if lid < s { red[lid] = max(red[lid], red[lid + s]); }
        workgroupBarrier();
        s = s / 2u;
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}
