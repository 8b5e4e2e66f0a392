//! Every shader parses, validates and translates to SPIR-V (Vulkan), MSL
//! (Metal) and HLSL (DX12) with naga: this is how the Metal and DX12 paths
//! stay working without those machines.

use lamina_engine::ops::all_shaders;

#[test]
fn every_shader_translates_to_spirv_msl_hlsl() {
    let shaders = all_shaders();
    assert!(
        shaders.len() >= 9,
        "expected every op's shader, found {}",
        shaders.len()
    );
    let mut failures = Vec::new();
    for s in shaders {
        let (module, info) = match s.validate() {
            Ok(v) => v,
            Err(e) => {
                failures.push(format!("{}: validation: {e}", s.name));
                continue;
            }
        };
        // Overrides must be resolved before the backends can write code; use
        // each constant's default value, as a pipeline without overrides would.
        let (module, info) = match naga::back::pipeline_constants::process_overrides(
            &module,
            &info,
            None,
            &naga::back::PipelineConstants::default(),
        ) {
            Ok((m, i)) => (m.into_owned(), i.into_owned()),
            Err(e) => {
                failures.push(format!("{}: overrides: {e}", s.name));
                continue;
            }
        };
        if let Err(e) =
            naga::back::spv::write_vec(&module, &info, &naga::back::spv::Options::default(), None)
        {
            failures.push(format!("{}: SPIR-V: {e}", s.name));
        }
        let mut msl = String::new();
        let msl_opts = naga::back::msl::Options {
            lang_version: (2, 4),
            ..Default::default()
        };
        let pipeline = naga::back::msl::PipelineOptions::default();
        match naga::back::msl::Writer::new(&mut msl).write(&module, &info, &msl_opts, &pipeline) {
            Ok(_) => {}
            Err(e) => failures.push(format!("{}: MSL: {e}", s.name)),
        }
        let mut hlsl = String::new();
        let hlsl_opts = naga::back::hlsl::Options {
            shader_model: naga::back::hlsl::ShaderModel::V6_0,
            ..Default::default()
        };
        let hlsl_pipeline = naga::back::hlsl::PipelineOptions::default();
        let mut w = naga::back::hlsl::Writer::new(&mut hlsl, &hlsl_opts, &hlsl_pipeline);
        if let Err(e) = w.write(&module, &info, None) {
            failures.push(format!("{}: HLSL: {e}", s.name));
        }
    }
    assert!(
        failures.is_empty(),
        "shader translation failures:\n{}",
        failures.join("\n")
    );
}
