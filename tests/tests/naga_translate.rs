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
