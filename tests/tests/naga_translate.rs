//! Every shader parses, validates and translates to SPIR-V (Vulkan), MSL
//! (Metal) and HLSL (DX12) with naga: this is how the Metal and DX12 paths
//! stay working without those machines. The shaders are those in shaders/:
//! a `.wgsl` file that no op registers (or a registered shader with no
//! file, or a lib no shader includes) fails here.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use lamina_engine::ops::all_shaders;

/// The `.wgsl` files directly in `dir`.
fn wgsl_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "wgsl"))
        .collect();
    v.sort();
    v
}

fn shaders_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shaders")
}

#[test]
fn shader_files_and_registered_shaders_agree() {
    let files: BTreeSet<String> = wgsl_files(&shaders_dir())
        .iter()
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    let shaders = all_shaders();
    let registered: BTreeSet<String> = shaders.iter().map(|s| s.name.to_string()).collect();
    assert_eq!(
        registered.len(),
        shaders.len(),
        "a shader is registered twice"
    );
    let unregistered: Vec<_> = files.difference(&registered).collect();
    let missing: Vec<_> = registered.difference(&files).collect();
    assert!(
        unregistered.is_empty() && missing.is_empty(),
        "shaders/*.wgsl not in ops::all_shaders(): {unregistered:?}; \
         registered without a file: {missing:?}"
    );
    for s in &shaders {
        let file = shaders_dir().join(format!("{}.wgsl", s.name));
        let text = std::fs::read_to_string(&file).unwrap();
        assert_eq!(text, s.source, "{}: source is not the file's", s.name);
    }
    // Every lib is composed into some registered shader (so the loop below
    // translates it).
    for lib in wgsl_files(&shaders_dir().join("lib")) {
        let text = std::fs::read_to_string(&lib).unwrap();
        assert!(
            shaders.iter().any(|s| s.libs.contains(&text.as_str())),
            "{} is included by no registered shader",
            lib.display()
        );
    }
}

#[test]
fn every_shader_translates_to_spirv_msl_hlsl() {
    let shaders = all_shaders();
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

/// Every shader keeps to what WebGPU guarantees every device (the browser
/// build's floor): no capability beyond core WGSL but subgroups (for the
/// kernels only chosen where the device has them), at most 8 storage and
/// 12 uniform buffers a shader, 16 KiB of workgroup memory, and workgroups
/// of at most 256 invocations (256 x 256 x 64), with the overrides at their
/// defaults. The page's `checkShaders` compiles the same modules in a
/// real browser (tests/tests/browser.rs).
#[test]
fn every_shader_keeps_to_webgpu_guarantees() {
    use naga::valid::{Capabilities, ValidationFlags, Validator};
    let mut failures = Vec::new();
    for s in all_shaders() {
        // pack2x16float / unpack2x16float are core WGSL; naga counts them
        // as a capability for the sake of old GLSL targets.
        let core = Capabilities::SHADER_FLOAT16_IN_FLOAT32;
        let caps = match s.uses_subgroups() {
            true => core | Capabilities::SUBGROUP | Capabilities::SUBGROUP_BARRIER,
            false => core,
        };
        let text = s.compose();
        let module = naga::front::wgsl::parse_str(&text).expect("parses (checked above)");
        let info = match Validator::new(ValidationFlags::all(), caps).validate(&module) {
            Ok(info) => info,
            Err(e) => {
                failures.push(format!("{}: needs more than WebGPU's core: {e:?}", s.name));
                continue;
            }
        };
        let (module, _) = naga::back::pipeline_constants::process_overrides(
            &module,
            &info,
            None,
            &naga::back::PipelineConstants::default(),
        )
        .expect("overrides resolve (checked above)");
        let mut layouter = naga::proc::Layouter::default();
        layouter.update(module.to_ctx()).expect("layouts");
        let (mut storage, mut uniform, mut workgroup_bytes) = (0, 0, 0u32);
        for (_, g) in module.global_variables.iter() {
            match g.space {
                naga::AddressSpace::Storage { .. } => storage += 1,
                naga::AddressSpace::Uniform => uniform += 1,
                naga::AddressSpace::WorkGroup => workgroup_bytes += layouter[g.ty].size,
                _ => {}
            }
        }
        if storage > 8 || uniform > 12 {
            failures.push(format!(
                "{}: {storage} storage and {uniform} uniform buffers (WebGPU: 8 and 12)",
                s.name
            ));
        }
        if workgroup_bytes > 16384 {
            failures.push(format!(
                "{}: {workgroup_bytes} bytes of workgroup memory (WebGPU: 16384)",
                s.name
            ));
        }
        for ep in &module.entry_points {
            let [x, y, z] = ep.workgroup_size;
            if x > 256 || y > 256 || z > 64 || x * y * z > 256 {
                failures.push(format!(
                    "{} {}: workgroup {x} x {y} x {z} (WebGPU: 256 invocations)",
                    s.name, ep.name
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "beyond WebGPU's guarantees:\n{}",
        failures.join("\n")
    );
}
