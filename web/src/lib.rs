//! Lamina in a browser tab: the engine and model crates built for wasm32
//! with wgpu's WebGPU backend, exported to the page (web/www) through
//! wasm-bindgen.
//!
//! The page drives generation one step at a time: [`Engine::feed`] returns
//! a promise of the sampled token, so the browser's event loop runs between
//! steps (WebGPU's read-backs are promises too) and each token is shown as
//! it is sampled. Nothing here blocks: the device comes from
//! [`Gpu::with_options_async`], every read from the async paths.
//!
//! A model file reaches wasm memory once: the page copies the file into a
//! [`ModelBytes`] slice by slice (never holding it whole in JavaScript),
//! and the GGUF parser keeps that vector as the file's image
//! ([`GgufFile::from_vec`]); the weights go from there into GPU buffers,
//! and the image is freed once they are uploaded.
//!
//! Build and serve: `scripts/web.sh` (the README says how).
#![cfg(target_arch = "wasm32")]

use std::cell::{RefCell, RefMut};
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use lamina_engine::{DeviceOptions, EngineError, Gpu, Sampling};
use lamina_model::chat::{ChatMessage, ChatTemplate};
use lamina_model::gguf::{GGUF_MAGIC, GgufFile};
use lamina_model::kv_cache::KvFormat;
use lamina_model::llama::{GpuModel, WeightMode};
use lamina_model::session::{SamplerConfig, Session, seed_or_fresh};
use lamina_model::tokenizer::{StreamDecoder, Tokenizer};
use lamina_model::{ModelError, lamina_file, loader};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;

mod console;

/// Most positions a page's session holds unless the model was trained for fewer.
const DEFAULT_CTX: usize = 2048;
/// Most prompt tokens one step processes (as the CLI's `-ub` default).
const BATCH: u32 = 512;

#[wasm_bindgen(start)]
fn start() {
    console::init();
}

/// A model file's bytes, filled by the page slice by slice.
#[wasm_bindgen]
pub struct ModelBytes {
    bytes: Vec<u8>,
}

#[wasm_bindgen]
impl ModelBytes {
    /// Room for a file of `len` bytes, or an error when wasm memory (4 GiB
    /// at most) cannot hold it.
    #[wasm_bindgen(constructor)]
    pub fn new(len: f64) -> Result<ModelBytes, JsError> {
        let too_big = || {
            JsError::new(&format!(
                "the model does not fit: {:.0} MiB is more than this page's WebAssembly memory can hold",
                len / 1048576.0
            ))
        };
        if !(0.0..4294967296.0).contains(&len) {
            return Err(too_big());
        }
        let mut bytes = Vec::new();
        bytes
            .try_reserve_exact(len as usize)
            .map_err(|_| too_big())?;
        bytes.resize(len as usize, 0);
        Ok(ModelBytes { bytes })
    }

    /// Copies `chunk` to `offset`.
    pub fn write(&mut self, offset: f64, chunk: &[u8]) -> Result<(), JsError> {
        let start = offset as usize;
        let dst = start
            .checked_add(chunk.len())
            .and_then(|end| self.bytes.get_mut(start..end))
            .ok_or_else(|| JsError::new("a slice of the file falls outside it"))?;
        dst.copy_from_slice(chunk);
        Ok(())
    }
}

/// The loaded model and the page's one conversation over it.
struct Loaded {
    session: Session,
    tokenizer: Tokenizer,
    template: Option<ChatTemplate>,
    decoder: StreamDecoder,
    describe: String,
}

/// The page's GPU and (once a file is chosen) its model.
#[wasm_bindgen]
pub struct Engine {
    gpu: Arc<Gpu>,
    /// WebGPU errors no scope caught (the device's uncaptured-error handler).
    errors: Arc<Mutex<Vec<String>>>,
    /// Shared with the promises of [`Engine::load`] and [`Engine::feed`].
    loaded: Rc<RefCell<Option<Loaded>>>,
}

fn js_err(e: impl std::fmt::Display) -> JsError {
    JsError::new(&e.to_string())
}

/// The pending work's WebGPU errors: those of an out-of-memory scope and a
/// validation scope pushed around it (popped here, asynchronously: the
/// engine pushes none in the browser, see `Gpu::scoped`).
async fn scoped<T>(
    gpu: &Gpu,
    what: &str,
    work: impl std::future::Future<Output = Result<T, JsError>>,
) -> Result<T, JsError> {
    let oom = gpu.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
    let invalid = gpu.device.push_error_scope(wgpu::ErrorFilter::Validation);
    let out = work.await;
    let invalid = invalid.pop().await;
    let oom = oom.pop().await;
    if let Some(e) = oom {
        return Err(JsError::new(&format!(
            "{what}: the model does not fit in this GPU's memory ({e})"
        )));
    }
    if let Some(e) = invalid {
        return Err(JsError::new(&format!("{what}: WebGPU rejected it: {e}")));
    }
    out
}

impl Engine {
    /// `f` of the loaded model: an error when there is none, or while a
    /// load or step holds it (the page awaits each before the next call).
    fn with_model<T>(
        &self,
        f: impl FnOnce(&mut Loaded) -> Result<T, JsError>,
    ) -> Result<T, JsError> {
        let mut slot = hold(&self.loaded)?;
        f(model(&mut slot)?)
    }
}

/// The model's slot, held: an error while a load, a step or a shader check
/// holds it. Held across their awaits, it is what makes other calls
/// meanwhile answer busy.
fn hold(loaded: &RefCell<Option<Loaded>>) -> Result<RefMut<'_, Option<Loaded>>, JsError> {
    loaded
        .try_borrow_mut()
        .map_err(|_| JsError::new("busy: a load or a step is running"))
}

/// The loaded model in a held slot.
fn model(slot: &mut Option<Loaded>) -> Result<&mut Loaded, JsError> {
    slot.as_mut().ok_or_else(|| JsError::new("no model loaded"))
}

#[wasm_bindgen]
impl Engine {
    /// Opens the browser's WebGPU adapter (an error when it has none).
    pub async fn open() -> Result<Engine, JsError> {
        let gpu = Gpu::with_options_async(&DeviceOptions::default())
            .await
            .map_err(js_err)?;
        let errors = Arc::new(Mutex::new(Vec::new()));
        let sink = errors.clone();
        gpu.device
            .on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
                log::error!("WebGPU: {e}");
                sink.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(e.to_string());
            }));
        Ok(Engine {
            gpu,
            errors,
            loaded: Rc::new(RefCell::new(None)),
        })
    }

    /// The adapter, as the engine names it.
    pub fn adapter(&self) -> String {
        self.gpu.describe()
    }

    /// The WebGPU errors raised outside any scope since the last call.
    pub fn take_gpu_errors(&self) -> Vec<String> {
        std::mem::take(&mut *self.errors.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Loads `file` (a GGUF or `.lamina.safetensors` image named `name`),
    /// replacing any model loaded before; resolves to a one-line
    /// description. `ctx`: positions of the KV cache (0: the model's
    /// trained length, at most 2048).
    #[allow(clippy::await_holding_refcell_ref)]
    pub fn load(&self, file: ModelBytes, name: String, ctx: usize) -> js_sys::Promise {
        let gpu = self.gpu.clone();
        let loaded = self.loaded.clone();
        future_to_promise(async move {
            let mut slot = hold(&loaded)?;
            // The old model's buffers go before the new one's arrive.
            *slot = None;
            let work = async { load_model(gpu.clone(), file.bytes, &name, ctx) };
            let model = scoped(&gpu, &format!("loading {name}"), work).await?;
            let describe = model.describe.clone();
            *slot = Some(model);
            Ok(JsValue::from_str(&describe))
        })
    }

    /// Whether the loaded model has a chat template.
    pub fn has_chat_template(&self) -> Result<bool, JsError> {
        self.with_model(|m| Ok(m.template.is_some()))
    }

    /// The prompt's token ids, as `lamina generate` makes them: the text,
    /// or with `chat` the chat template's rendering of it as the user's
    /// message (and the assistant's turn opened), with BOS where the
    /// tokenizer adds it.
    pub fn encode(&self, prompt: &str, chat: bool) -> Result<Vec<u32>, JsError> {
        self.with_model(|m| encode(m, prompt, chat))
    }
    /// Starts a new generation: the cache emptied, the sampler set
    /// (`temperature` 0: greedy; `seed` < 0: a fresh one).
    pub fn start(
        &self,
        temperature: f32,
        top_k: u32,
        top_p: f32,
        repeat_penalty: f32,
        seed: f64,
    ) -> Result<(), JsError> {
        let sampling = Sampling::checked(temperature, top_k, top_p, repeat_penalty)
            .map_err(|(field, msg)| JsError::new(&format!("{} {msg}", field.replace('_', "-"))))?;
        self.with_model(|m| {
            m.session.reset();
            m.session.set_sampler(SamplerConfig {
                sampling,
                seed: seed_or_fresh((seed >= 0.0).then_some(seed as u64)),
            });
            m.decoder = m.tokenizer.stream_decoder();
            Ok(())
        })
    }

    /// Feeds `ids` (the prompt, then each sampled token) and resolves to
    /// the token sampled after them.
    #[allow(clippy::await_holding_refcell_ref)]
    pub fn feed(&self, ids: Vec<u32>) -> js_sys::Promise {
        let gpu = self.gpu.clone();
        let loaded = self.loaded.clone();
        future_to_promise(async move {
            let mut slot = hold(&loaded)?;
            let m = model(&mut slot)?;
            let work = async { m.session.feed_async(&ids).await.map_err(js_err) };
            let next = scoped(&gpu, "a step", work).await?;
            Ok(JsValue::from(next))
        })
    }

    /// The text `id` completes (empty while a character is incomplete).
    pub fn piece(&self, id: u32) -> Result<String, JsError> {
        self.with_model(|m| m.decoder.push(id).map_err(js_err))
    }

    /// The text held back for an incomplete character, at the end.
    pub fn flush(&self) -> Result<String, JsError> {
        self.with_model(|m| Ok(m.decoder.flush()))
    }

    /// Whether `id` ends the generation (end of turn or of text).
    pub fn is_eog(&self, id: u32) -> Result<bool, JsError> {
        self.with_model(|m| Ok(m.tokenizer.is_eog(id)))
    }

    /// Positions used so far.
    pub fn position(&self) -> Result<usize, JsError> {
        self.with_model(|m| Ok(m.session.pos()))
    }

    /// Positions the KV cache holds.
    pub fn max_ctx(&self) -> Result<usize, JsError> {
        self.with_model(|m| Ok(m.session.max_ctx()))
    }

    /// Compiles every registered shader this device can select in this
    /// browser and resolves to the messages of those it rejects (an empty
    /// array: all compile). Subgroup kernels count only where the device
    /// has subgroups (wgpu's WebGPU backend does not ask for them yet).
    /// Busy while a load or a step runs: their error scopes must be popped
    /// before this pushes its own.
    #[allow(clippy::await_holding_refcell_ref)]
    pub fn check_shaders(&self) -> js_sys::Promise {
        let gpu = self.gpu.clone();
        let loaded = self.loaded.clone();
        future_to_promise(async move {
            let _hold = hold(&loaded)?;
            let failures = js_sys::Array::new();
            let shaders = lamina_engine::ops::all_shaders();
            let selectable = shaders
                .into_iter()
                .filter(|s| gpu.caps.subgroups || !s.uses_subgroups());
            for s in selectable {
                let scope = gpu.device.push_error_scope(wgpu::ErrorFilter::Validation);
                let module = gpu
                    .device
                    .create_shader_module(wgpu::ShaderModuleDescriptor {
                        label: Some(s.name),
                        source: wgpu::ShaderSource::Wgsl(s.compose().into()),
                    });
                let info = module.get_compilation_info().await;
                let errors: Vec<String> = info
                    .messages
                    .iter()
                    .filter(|m| m.message_type == wgpu::CompilationMessageType::Error)
                    .map(|m| m.message.clone())
                    .collect();
                if let Some(e) = scope.pop().await {
                    failures.push(&JsValue::from_str(&format!("{}: {e}", s.name)));
                } else if !errors.is_empty() {
                    failures.push(&JsValue::from_str(&format!(
                        "{}: {}",
                        s.name,
                        errors.join("; ")
                    )));
                }
            }
            Ok(failures.into())
        })
    }
}

fn encode(m: &Loaded, prompt: &str, chat: bool) -> Result<Vec<u32>, JsError> {
    let text = if chat {
        let t = m
            .template
            .as_ref()
            .ok_or_else(|| JsError::new("this model has no chat template"))?;
        t.render_for(&m.tokenizer, &[ChatMessage::user(prompt)], true)
            .map_err(js_err)?
    } else {
        prompt.to_string()
    };
    let ids = m.tokenizer.encode(&text, true).map_err(js_err)?;
    if ids.is_empty() {
        return Err(JsError::new("the prompt encodes to no tokens"));
    }
    Ok(ids)
}

/// The browser runs a model as `lamina generate` does without flags (f16
/// KV cache, no pivot) and so refuses a file whose recipe needs more:
/// PrefixQuant's prefix and static scales need the pivot's KV computed on
/// the CPU first, which the page does not do yet.
fn check_runs_here(m: &lamina_model::checkpoint::LoadedModel) -> Result<(), JsError> {
    let Some(r) = &m.recipe else {
        return Ok(());
    };
    let needs = [
        (r.prefix.is_some(), "a PrefixQuant prefix"),
        (r.act.is_some(), "quantized activations"),
        (r.kv.is_some(), "static KV-cache scales"),
    ];
    let needs: Vec<&str> = needs.iter().filter(|n| n.0).map(|n| n.1).collect();
    if needs.is_empty() {
        return Ok(());
    }
    Err(JsError::new(&format!(
        "{} has {}, which the browser build does not run yet (its weights-only files it does; \
         `lamina generate` runs this one)",
        m.source,
        needs.join(" and ")
    )))
}

/// Parses `bytes`, uploads the weights and compiles the session's graphs
/// (all of it queued on the GPU without waiting: `Engine::load` awaits
/// the error scopes around it).
fn load_model(gpu: Arc<Gpu>, bytes: Vec<u8>, name: &str, ctx: usize) -> Result<Loaded, JsError> {
    let t0 = web_time::Instant::now();
    let m = if bytes.starts_with(&GGUF_MAGIC) {
        let g = GgufFile::from_vec(name, bytes).map_err(js_err)?;
        loader::load_gguf(&g).map_err(js_err)?
    } else if name.ends_with(".safetensors") {
        // Its tensors come out as copies (mixed codes repacked), so the
        // image goes at once.
        let m = lamina_file::from_bytes(std::path::Path::new(name), &bytes).map_err(js_err)?;
        drop(bytes);
        m
    } else {
        return Err(JsError::new(&format!(
            "{name}: neither a GGUF file nor a .lamina.safetensors file"
        )));
    };
    check_runs_here(&m)?;
    let tokenizer = Tokenizer::from_spec(&m.tokenizer_spec).map_err(js_err)?;
    let template = tokenizer
        .chat_template()
        .is_some()
        .then(|| ChatTemplate::from_tokenizer(&tokenizer))
        .transpose()
        .map_err(js_err)?;
    let ctx = match ctx {
        0 => m.config.max_seq_len.min(DEFAULT_CTX),
        c => c,
    };
    let model =
        GpuModel::new(gpu, &m, WeightMode::Native, ctx, KvFormat::F16, |_, _| {}).map_err(|e| {
            match e {
                ModelError::Engine(
                    e @ (EngineError::TooLarge { .. } | EngineError::OutOfMemory(_)),
                ) => JsError::new(&format!(
                    "the model does not fit in this GPU with a {ctx}-position KV cache \
                     (a smaller context may help): {e}"
                )),
                e => js_err(e),
            }
        })?;
    let weight_mib = model.weight_bytes() as f64 / 1048576.0;
    let (file_type, n_layers) = (m.file_type.clone(), m.config.n_layers);
    // The file's image goes now that the weights are on the GPU.
    drop(m);
    let mut session =
        Session::new(Arc::new(model), BATCH, SamplerConfig::greedy()).map_err(js_err)?;
    session.prepare().map_err(js_err)?;
    let describe = format!(
        "{name} ({}, {} layers): weights {weight_mib:.1} MiB on the GPU, KV cache {ctx} \
         positions; ready in {:.1} s",
        file_type,
        n_layers,
        t0.elapsed().as_secs_f64()
    );
    let decoder = tokenizer.stream_decoder();
    Ok(Loaded {
        session,
        tokenizer,
        template,
        decoder,
        describe,
    })
}
