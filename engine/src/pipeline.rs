//! Pipelines and bind group layouts, cached by typed keys.
//!
//! Binding convention for every kernel: group 0, binding 0 is the op's
//! uniform parameter block (a `#[repr(C)]` struct mirrored in WGSL); bindings
//! 1.. are storage buffers in the order the op lists them, each read-only or
//! read-write. A layout is therefore fully described by that access list, and
//! kernels with the same list share one layout.
//!
//! Warm starts: where the adapter has a driver-level pipeline cache (wgpu's
//! `PIPELINE_CACHE`, Vulkan) and the caller names a directory
//! ([`DeviceOptions::pipeline_cache`](crate::DeviceOptions)), the driver's
//! compiled pipelines are kept on disk, one file per shader module named by
//! a hash of the module's text and the driver, so that a changed shader or
//! driver starts a fresh file and stale ones are removed. Drivers that keep
//! their own cache (Mesa's, including lavapipe's) gain little from it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::shader::ShaderSource;
use crate::{EngineError, Gpu, Result};

/// Storage binding access.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    Read,
    ReadWrite,
}

/// A kernel: a shader's entry point with its `override` constants.
#[derive(Debug, Clone)]
pub struct Kernel {
    pub shader: &'static ShaderSource,
    pub entry: &'static str,
    /// WGSL `override` constants, by name.
    pub constants: Vec<(&'static str, f64)>,
}

impl Kernel {
    pub fn new(shader: &'static ShaderSource, entry: &'static str) -> Self {
        Kernel {
            shader,
            entry,
            constants: Vec::new(),
        }
    }
    pub fn with(mut self, name: &'static str, value: impl Into<f64>) -> Self {
        self.constants.push((name, value.into()));
        self
    }
    /// "shader:entry{k=v,...}", for profiles and errors.
    pub fn label(&self) -> String {
        let mut s = format!("{}:{}", self.shader.name, self.entry);
        if !self.constants.is_empty() {
            let c: Vec<String> = self
                .constants
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            s.push_str(&format!("{{{}}}", c.join(",")));
        }
        s
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PipelineKey {
    shader: &'static str,
    entry: &'static str,
    constants: Vec<(&'static str, u64)>,
    access: Vec<Access>,
}

impl PipelineKey {
    fn of(kernel: &Kernel, access: &[Access]) -> Self {
        PipelineKey {
            shader: kernel.shader.name,
            entry: kernel.entry,
            constants: kernel
                .constants
                .iter()
                .map(|(k, v)| (*k, v.to_bits()))
                .collect(),
            access: access.to_vec(),
        }
    }
}

pub struct Pipeline {
    pub pipeline: wgpu::ComputePipeline,
    pub layout: Arc<wgpu::BindGroupLayout>,
    pub label: String,
}

#[derive(Default)]
pub(crate) struct PipelineCache {
    pipelines: Mutex<HashMap<PipelineKey, Arc<Pipeline>>>,
    layouts: Mutex<HashMap<Vec<Access>, Arc<wgpu::BindGroupLayout>>>,
    modules: Mutex<HashMap<&'static str, Arc<wgpu::ShaderModule>>>,
    disk: Option<DiskCache>,
}

impl PipelineCache {
    /// With `disk`, compiled pipelines are also kept in that directory.
    pub(crate) fn new(disk: Option<DiskCache>) -> Self {
        PipelineCache {
            disk,
            ..Default::default()
        }
    }
}

/// The driver's pipeline caches on disk: one per shader module, in
/// `dir/<module>-<hash>.bin`, the hash over the module's text and `driver`.
pub(crate) struct DiskCache {
    dir: PathBuf,
    driver: String,
    modules: Mutex<HashMap<&'static str, Arc<ModuleCache>>>,
}

struct ModuleCache {
    cache: wgpu::PipelineCache,
    path: PathBuf,
    /// Bytes of data in its file when loaded or last saved.
    loaded: AtomicUsize,
    /// A pipeline was created through it since then.
    dirty: AtomicBool,
}

/// 64-bit FNV-1a: stable across builds and Rust versions, for file names
/// and the files' checksums.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in *p {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

impl DiskCache {
    /// A cache under `dir` for this adapter, where its backend has one
    /// (wgpu names the adapter's key; `None` elsewhere).
    pub(crate) fn new(dir: &Path, info: &wgpu::AdapterInfo) -> Option<Self> {
        let key = wgpu::util::pipeline_cache_key(info)?;
        Some(DiskCache {
            dir: dir.join(key),
            driver: format!("{} {} {:?}", info.driver, info.driver_info, info.backend),
            modules: Mutex::default(),
        })
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The cache of `shader`, loaded from its file when one with a valid
    /// checksum exists.
    #[allow(unsafe_code)]
    fn module(&self, device: &wgpu::Device, shader: &'static ShaderSource) -> Arc<ModuleCache> {
        let mut modules = self.modules.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = modules.get(shader.name) {
            return m.clone();
        }
        let hash = fnv1a(&[shader.compose().as_bytes(), self.driver.as_bytes()]);
        let path = self.dir.join(format!("{}-{hash:016x}.bin", shader.name));
        // File: the FNV-1a of the data (8 bytes, little-endian), then the data.
        let data = std::fs::read(&path).ok().and_then(|f| {
            let (sum, data) = f.split_at_checked(8)?;
            (sum == fnv1a(&[data]).to_le_bytes()).then(|| data.to_vec())
        });
        // SAFETY: `data` is what `get_data` returned for an adapter with
        // this key and driver (the file name hashes the driver, the
        // checksum rules out torn or corrupted files, and wgpu checks its
        // header against the adapter); `fallback` makes a rejected blob an
        // empty cache.
        let cache = unsafe {
            device.create_pipeline_cache(&wgpu::PipelineCacheDescriptor {
                label: Some(shader.name),
                data: data.as_deref(),
                fallback: true,
            })
        };
        let m = Arc::new(ModuleCache {
            cache,
            path,
            loaded: AtomicUsize::new(data.map_or(0, |d| d.len())),
            dirty: AtomicBool::new(false),
        });
        modules.insert(shader.name, m.clone());
        m
    }

    /// Writes every cache that gained pipelines (a temporary file renamed
    /// over the old one) and removes the module's stale files. Failures
    /// only cost the next run its warm start, so they are logged, not raised.
    fn save(&self) {
        let modules = self.modules.lock().unwrap_or_else(|e| e.into_inner());
        for (name, m) in modules.iter() {
            if !m.dirty.swap(false, Ordering::Relaxed) {
                continue;
            }
            // Pipelines the file already held leave the data as it was.
            let loaded = m.loaded.load(Ordering::Relaxed);
            let Some(data) = m.cache.get_data().filter(|d| d.len() != loaded) else {
                continue;
            };
            match write_cache_file(&self.dir, name, &m.path, &data) {
                Ok(()) => m.loaded.store(data.len(), Ordering::Relaxed),
                Err(e) => log::warn!("pipeline cache {}: {e}", m.path.display()),
            }
        }
    }
}

fn write_cache_file(dir: &Path, name: &str, path: &Path, data: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut bytes = fnv1a(&[data]).to_le_bytes().to_vec();
    bytes.extend_from_slice(data);
    std::fs::write(&tmp, &bytes)?;
    std::fs::rename(&tmp, path)?;
    // Files of the same module for other text or drivers are stale.
    let prefix = format!("{name}-");
    for e in std::fs::read_dir(dir)?.flatten() {
        let p = e.path();
        let stale = p != path
            && p.extension().is_some_and(|x| x == "bin")
            && p.file_name()
                .and_then(|f| f.to_str())
                .and_then(|f| f.strip_prefix(&prefix))
                .is_some_and(|rest| rest.len() == 20 && !rest.contains('-'));
        if stale {
            let _ = std::fs::remove_file(p);
        }
    }
    Ok(())
}

impl Gpu {
    /// The bind group layout for a uniform block plus storage bindings `access`.
    pub fn layout(&self, access: &[Access]) -> Arc<wgpu::BindGroupLayout> {
        let mut layouts = self
            .pipelines
            .layouts
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(l) = layouts.get(access) {
            return l.clone();
        }
        let mut entries = vec![wgpu::BindGroupLayoutEntry {
            binding: 0,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Uniform,
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        }];
        for (i, a) in access.iter().enumerate() {
            entries.push(wgpu::BindGroupLayoutEntry {
                binding: i as u32 + 1,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Storage {
                        read_only: *a == Access::Read,
                    },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            });
        }
        let l = Arc::new(
            self.device
                .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                    label: None,
                    entries: &entries,
                }),
        );
        layouts.insert(access.to_vec(), l.clone());
        l
    }

    fn module(&self, shader: &'static ShaderSource) -> Result<Arc<wgpu::ShaderModule>> {
        let mut modules = self
            .pipelines
            .modules
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(m) = modules.get(shader.name) {
            return Ok(m.clone());
        }
        // Validate with naga first: its messages point at the WGSL line.
        shader.validate().map_err(|msg| EngineError::Shader {
            shader: shader.name,
            msg,
        })?;
        let (m, err) = self.scoped(wgpu::ErrorFilter::Validation, || {
            self.device
                .create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(shader.name),
                    source: wgpu::ShaderSource::Wgsl(shader.compose().into()),
                })
        });
        if let Some(e) = err {
            return Err(EngineError::Shader {
                shader: shader.name,
                msg: e.to_string(),
            });
        }
        let m = Arc::new(m);
        modules.insert(shader.name, m.clone());
        Ok(m)
    }

    /// The compute pipeline for `kernel` with storage bindings `access`, created once.
    pub fn pipeline(&self, kernel: &Kernel, access: &[Access]) -> Result<Arc<Pipeline>> {
        let key = PipelineKey::of(kernel, access);
        if let Some(p) = self
            .pipelines
            .pipelines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Ok(p.clone());
        }
        let module = self.module(kernel.shader)?;
        let layout = self.layout(access);
        let pl = self
            .device
            .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: None,
                bind_group_layouts: &[Some(&layout)],
                immediate_size: 0,
            });
        let label = kernel.label();
        let t0 = web_time::Instant::now();
        let disk = (self.pipelines.disk.as_ref()).map(|d| d.module(&self.device, kernel.shader));
        let (pipeline, err) = self.scoped(wgpu::ErrorFilter::Validation, || {
            self.device
                .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(&label),
                    layout: Some(&pl),
                    module: &module,
                    entry_point: Some(kernel.entry),
                    compilation_options: wgpu::PipelineCompilationOptions {
                        constants: &kernel.constants,
                        zero_initialize_workgroup_memory: false,
                    },
                    cache: disk.as_ref().map(|m| &m.cache),
                })
        });
        if let Some(m) = &disk {
            m.dirty.store(true, Ordering::Relaxed);
        }
        log::debug!("pipeline {label}: {:.3} s", t0.elapsed().as_secs_f64());
        if let Some(e) = err {
            return Err(EngineError::Shader {
                shader: kernel.shader.name,
                msg: format!("{label}: {e}"),
            });
        }
        let p = Arc::new(Pipeline {
            pipeline,
            layout,
            label,
        });
        self.pipelines
            .pipelines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, p.clone());
        Ok(p)
    }
}

impl Gpu {
    /// Creates the pipelines of `kernels` that do not exist yet, each once
    /// however often it is listed, spread over the CPU's cores: translation
    /// and the driver's compiler run in the calling thread, so a cold
    /// start's compiles overlap. Errors as [`Gpu::pipeline`]'s.
    pub fn prepare_pipelines(&self, kernels: &[(Kernel, Vec<Access>)]) -> Result<()> {
        let mut seen = std::collections::HashSet::new();
        let kernels: Vec<_> = kernels
            .iter()
            .filter(|(k, a)| seen.insert(PipelineKey::of(k, a)))
            .collect();
        log::debug!("{} distinct pipelines", kernels.len());
        // No threads on the web (and wgpu's WebGPU handles are not Send):
        // one after another.
        #[cfg(target_arch = "wasm32")]
        return kernels
            .iter()
            .try_for_each(|(k, a)| self.pipeline(k, a).map(drop));
        #[cfg(not(target_arch = "wasm32"))]
        self.prepare_threaded(&kernels)
    }

    #[cfg(not(target_arch = "wasm32"))]
    fn prepare_threaded(&self, kernels: &[&(Kernel, Vec<Access>)]) -> Result<()> {
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(kernels.len());
        if threads <= 1 {
            return kernels
                .iter()
                .try_for_each(|(k, a)| self.pipeline(k, a).map(drop));
        }
        let next = AtomicUsize::new(0);
        let work = || -> Result<()> {
            while let Some((k, a)) = kernels.get(next.fetch_add(1, Ordering::Relaxed)) {
                self.pipeline(k, a)?;
            }
            Ok(())
        };
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads).map(|_| s.spawn(work)).collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect::<Result<Vec<()>>>()
                .map(drop)
        })
    }

    /// Writes the driver's pipeline caches that gained pipelines to disk
    /// (where the device has a disk cache; see the module docs). Called
    /// once a graph's pipelines exist.
    pub fn save_pipeline_cache(&self) {
        if let Some(d) = &self.pipelines.disk {
            d.save();
        }
    }
}
