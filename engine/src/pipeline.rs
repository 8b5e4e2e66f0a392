//! Pipelines and bind group layouts, cached by typed keys.
//!
//! Binding convention for every kernel: group 0, binding 0 is the op's
//! uniform parameter block (a `#[repr(C)]` struct mirrored in WGSL); bindings
//! 1.. are storage buffers in the order the op lists them, each read-only or
//! read-write. A layout is therefore fully described by that access list, and
//! kernels with the same list share one layout.

use std::collections::HashMap;
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
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let m = self
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(shader.name),
                source: wgpu::ShaderSource::Wgsl(shader.compose().into()),
            });
        if let Some(e) = pollster::block_on(scope.pop()) {
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
        let key = PipelineKey {
            shader: kernel.shader.name,
            entry: kernel.entry,
            constants: kernel
                .constants
                .iter()
                .map(|(k, v)| (*k, v.to_bits()))
                .collect(),
            access: access.to_vec(),
        };
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
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(&label),
                layout: Some(&pl),
                module: &module,
                entry_point: Some(kernel.entry),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: &kernel.constants,
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            });
        if let Some(e) = pollster::block_on(scope.pop()) {
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
