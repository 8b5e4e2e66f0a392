//! Adapter choice and device creation.
//!
//! The best adapter wins (discrete > integrated > virtual > CPU), unless
//! `LAMINA_BACKEND` (vulkan, metal, dx12, gl) or `LAMINA_ADAPTER` (a substring
//! of the adapter name, case-insensitive) say otherwise. Optional features
//! (SHADER_F16, SUBGROUP, TIMESTAMP_QUERY, and PIPELINE_CACHE when
//! [`DeviceOptions::pipeline_cache`] names a directory) are requested when
//! present and the kernels fall back without them.

use std::path::PathBuf;
use std::sync::Arc;

use crate::pipeline::{DiskCache, PipelineCache};
use crate::{EngineError, Result};

/// How to choose the adapter. `Default` reads nothing; [`DeviceOptions::from_env`]
/// reads `LAMINA_BACKEND` and `LAMINA_ADAPTER`.
#[derive(Debug, Clone, Default)]
pub struct DeviceOptions {
    pub backend: Option<wgpu::Backends>,
    /// Case-insensitive substring of the adapter name.
    pub adapter: Option<String>,
    /// Where to keep the driver's compiled pipelines between runs, when
    /// the adapter has a pipeline cache (Vulkan); `None`: nowhere.
    pub pipeline_cache: Option<PathBuf>,
}

impl DeviceOptions {
    pub fn from_env() -> Result<Self> {
        let backend = match std::env::var("LAMINA_BACKEND") {
            Ok(v) if !v.is_empty() => Some(parse_backend(&v)?),
            _ => None,
        };
        let adapter = std::env::var("LAMINA_ADAPTER")
            .ok()
            .filter(|s| !s.is_empty());
        Ok(DeviceOptions {
            backend,
            adapter,
            pipeline_cache: None,
        })
    }
}

fn parse_backend(v: &str) -> Result<wgpu::Backends> {
    Ok(match v.to_ascii_lowercase().as_str() {
        "vulkan" | "vk" => wgpu::Backends::VULKAN,
        "metal" | "mtl" => wgpu::Backends::METAL,
        "dx12" | "d3d12" => wgpu::Backends::DX12,
        "gl" | "gles" | "opengl" => wgpu::Backends::GL,
        _ => {
            return Err(EngineError::BadEnv {
                var: "LAMINA_BACKEND",
                value: v.to_string(),
                expected: "one of vulkan, metal, dx12, gl",
            });
        }
    })
}

/// What the kernels may use on this device.
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    pub shader_f16: bool,
    pub subgroups: bool,
    pub timestamps: bool,
    pub max_binding: u64,
    pub max_buffer: u64,
    pub max_workgroups_per_dim: u32,
    pub min_storage_align: u32,
    pub min_uniform_align: u32,
}

/// The GPU: device, queue, capabilities and the pipeline cache.
pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub caps: Caps,
    pub(crate) pipelines: PipelineCache,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Gpu({})", self.describe())
    }
}

/// One line per adapter wgpu can see (name, backend, type, driver).
#[cfg(not(target_arch = "wasm32"))]
pub fn list_adapters(opts: &DeviceOptions) -> Vec<String> {
    let backends = opts.backend.unwrap_or(wgpu::Backends::all());
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = backends;
    let instance = wgpu::Instance::new(desc);
    pollster::block_on(instance.enumerate_adapters(backends))
        .iter()
        .map(|a| {
            let i = a.get_info();
            format!(
                "{} ({:?}, {:?}, {} {})",
                i.name, i.backend, i.device_type, i.driver, i.driver_info
            )
        })
        .collect()
}

fn type_rank(t: wgpu::DeviceType) -> u32 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    }
}

impl Gpu {
    /// Opens the adapter chosen by `LAMINA_BACKEND` / `LAMINA_ADAPTER`, or the best one.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new() -> Result<Arc<Gpu>> {
        Self::with_options(&DeviceOptions::from_env()?)
    }

    /// Opens the adapter `opts` choose, or the best one (blocks until the
    /// device exists; on the web, where nothing may block, see
    /// [`Gpu::with_options_async`]).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn with_options(opts: &DeviceOptions) -> Result<Arc<Gpu>> {
        pollster::block_on(Self::with_options_async(opts))
    }

    /// [`Gpu::with_options`] as a future: the browser's adapter and device
    /// arrive as promises, which only its event loop settles.
    pub async fn with_options_async(opts: &DeviceOptions) -> Result<Arc<Gpu>> {
        // Without a choice, try the primary APIs (Vulkan, Metal, DX12) first
        // and GL only when none has an adapter: probing EGL logs noise on
        // machines without a GL driver, and GL is the slowest path anyway.
        let tries = match opts.backend {
            Some(b) => vec![b],
            None => vec![wgpu::Backends::PRIMARY, wgpu::Backends::SECONDARY],
        };
        let mut adapters = Vec::new();
        for backends in tries {
            let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
            desc.backends = backends;
            let instance = wgpu::Instance::new(desc);
            adapters = instance.enumerate_adapters(backends).await;
            if !adapters.is_empty() {
                break;
            }
        }
        let seen: Vec<String> = adapters
            .iter()
            .map(|a| {
                let i = a.get_info();
                format!("{} ({:?}, {:?})", i.name, i.backend, i.device_type)
            })
            .collect();
        if let Some(want) = &opts.adapter {
            let want = want.to_lowercase();
            adapters.retain(|a| a.get_info().name.to_lowercase().contains(&want));
        }
        // Best first: device type, then Vulkan/Metal/DX12 before GL.
        adapters.sort_by_key(|a| {
            let i = a.get_info();
            (
                type_rank(i.device_type),
                u32::from(i.backend == wgpu::Backend::Gl),
            )
        });
        let Some(adapter) = adapters.into_iter().next() else {
            let detail = match (&opts.adapter, seen.is_empty()) {
                (_, true) => String::new(),
                (Some(w), false) => {
                    format!(
                        " matching LAMINA_ADAPTER=`{w}` (available: {})",
                        seen.join(", ")
                    )
                }
                (None, false) => format!(" (available: {})", seen.join(", ")),
            };
            return Err(EngineError::NoAdapter { detail });
        };
        Self::open(adapter, opts.pipeline_cache.as_deref()).await
    }

    async fn open(adapter: wgpu::Adapter, cache_dir: Option<&std::path::Path>) -> Result<Arc<Gpu>> {
        let info = adapter.get_info();
        let have = adapter.features();
        let mut want = wgpu::Features::SHADER_F16
            | wgpu::Features::SUBGROUP
            | wgpu::Features::TIMESTAMP_QUERY
            | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS;
        if cache_dir.is_some() {
            want |= wgpu::Features::PIPELINE_CACHE;
        }
        let features = have & want;
        let disk = cache_dir
            .filter(|_| features.contains(wgpu::Features::PIPELINE_CACHE))
            .and_then(|d| DiskCache::new(d, &info));
        let al = adapter.limits();
        // Ask for what the adapter offers on the limits that matter for big
        // tensors and wide workgroups; defaults elsewhere.
        let mut limits = wgpu::Limits::default().using_resolution(al.clone());
        limits.max_storage_buffer_binding_size = al.max_storage_buffer_binding_size;
        limits.max_buffer_size = al.max_buffer_size;
        limits.max_storage_buffers_per_shader_stage =
            al.max_storage_buffers_per_shader_stage.min(16);
        limits.max_compute_workgroup_storage_size = al.max_compute_workgroup_storage_size;
        limits.max_compute_invocations_per_workgroup = al.max_compute_invocations_per_workgroup;
        limits.max_compute_workgroup_size_x = al.max_compute_workgroup_size_x;
        limits.max_compute_workgroups_per_dimension = al.max_compute_workgroups_per_dimension;
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("lamina"),
                required_features: features,
                required_limits: limits.clone(),
                experimental_features: wgpu::ExperimentalFeatures::disabled(),
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .map_err(|e| EngineError::RequestDevice {
                adapter: info.name.clone(),
                msg: e.to_string(),
            })?;
        let caps = Caps {
            shader_f16: features.contains(wgpu::Features::SHADER_F16),
            subgroups: features.contains(wgpu::Features::SUBGROUP),
            timestamps: features.contains(wgpu::Features::TIMESTAMP_QUERY),
            max_binding: limits.max_storage_buffer_binding_size,
            max_buffer: limits.max_buffer_size,
            max_workgroups_per_dim: limits.max_compute_workgroups_per_dimension,
            min_storage_align: limits.min_storage_buffer_offset_alignment,
            min_uniform_align: limits.min_uniform_buffer_offset_alignment,
        };
        log::info!(
            "adapter: {} ({:?}, {:?}, driver {} {}), f16={} subgroups={} timestamps={} max binding {} MiB",
            info.name,
            info.backend,
            info.device_type,
            info.driver,
            info.driver_info,
            caps.shader_f16,
            caps.subgroups,
            caps.timestamps,
            caps.max_binding >> 20
        );
        if let Some(d) = &disk {
            log::info!("pipeline cache: {}", d.dir().display());
        }
        Ok(Arc::new(Gpu {
            device,
            queue,
            info,
            caps,
            pipelines: PipelineCache::new(disk),
        }))
    }

    /// One line naming the adapter, backend and driver.
    pub fn describe(&self) -> String {
        format!(
            "{} ({:?}, {:?}, {} {})",
            self.info.name,
            self.info.backend,
            self.info.device_type,
            self.info.driver,
            self.info.driver_info
        )
        .replace(" , ", " ")
    }

    /// Fails with a message when a storage binding would exceed the device limit.
    pub fn check_binding(&self, what: &str, size: u64) -> Result<()> {
        if size > self.caps.max_binding {
            return Err(EngineError::TooLarge {
                what: what.to_string(),
                size,
                limit: self.caps.max_binding,
            });
        }
        Ok(())
    }

    /// Runs `f` inside an error scope of `filter` and returns what `f`
    /// raised there. On the web no scope is pushed: popping one is a promise
    /// that only the browser's event loop settles, so a blocking pop would
    /// never return. There the errors reach the device's uncaptured-error
    /// handler, or a scope the caller pops asynchronously around the whole
    /// of its work (the page does so around loading and each step).
    pub(crate) fn scoped<T>(
        &self,
        filter: wgpu::ErrorFilter,
        f: impl FnOnce() -> T,
    ) -> (T, Option<wgpu::Error>) {
        #[cfg(not(target_arch = "wasm32"))]
        {
            let scope = self.device.push_error_scope(filter);
            let out = f();
            (out, pollster::block_on(scope.pop()))
        }
        #[cfg(target_arch = "wasm32")]
        {
            let _ = filter;
            (f(), None)
        }
    }

    /// Waits for all submitted work, turning device loss into an error.
    pub fn wait(&self) -> Result<()> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map(|_| ())
            .map_err(|e| EngineError::DeviceLost(e.to_string()))
    }
}
