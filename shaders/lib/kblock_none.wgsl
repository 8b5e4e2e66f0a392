// lib/kblock_none.wgsl: what lib/kblock.wgsl declares, for the matmul
// modules of the formats that do not need it (Q4_0, Q4_1, Q8_0, F16, F32:
// matmul_q*.wgsl). lib/qblock.wgsl and lib/qmatmul.wgsl branch on the
// format, a literal at every entry point, so these bodies are never run:
// they stand in for kblock's decoders so that the compiled module holds the
// code of its own formats only (on lavapipe every pipeline's build time
// grows with the module's code, see docs/benchmarks.md). Signatures must
// match lib/kblock.wgsl (the naga translation test builds both); the
// format ids are lib/kformat.wgsl's.

fn is_kq(fmt: u32) -> bool {
    return false;
}

fn kq_bits(fmt: u32) -> u32 {
    return 4u;
}

fn kq_halves(fmt: u32) -> bool {
    return false;
}

fn kq_table(fmt: u32) -> bool {
    return false;
}

fn kq_load(blk: u32, blocks: u32, fmt: u32) -> array<vec4<u32>, 2> {
    return array<vec4<u32>, 2>();
}

fn kq_codes4(lo: vec4<u32>, hi: vec4<u32>, kq: u32, fmt: u32) -> vec4<u32> {
    return vec4<u32>(0u);
}

fn kq_values4(q: vec4<u32>, fmt: u32) -> vec4<f32> {
    return vec4<f32>(0.0);
}

struct KSuper {
    w: vec4<u32>,
    m: u32,
}

fn kq_super(sb: u32, fmt: u32) -> KSuper {
    return KSuper();
}

fn kq_sub_scales(s: KSuper, j: u32, fmt: u32) -> vec4<f32> {
    return vec4<f32>(0.0);
}

fn kq_scales(blk: u32, fmt: u32) -> vec4<f32> {
    return vec4<f32>(0.0);
}
