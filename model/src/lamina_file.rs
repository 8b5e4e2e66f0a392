//! `.lamina.safetensors`: a quantized model in one self-contained file, in
//! the safetensors container.
//!
//! Header metadata (string values):
//! - `lamina.format`: [`FORMAT`];
//! - `lamina.config`: the [`LlamaConfig`] as JSON;
//! - `lamina.tokenizer`: the [`TokenizerSpec`] as JSON (chat template included);
//! - `lamina.recipe`: JSON of how the file was made (method, bits, group,
//!   calibration, source, timings): a [`Recipe`];
//! - `lamina.dtypes`: JSON map from tensor name to its encoding for tensors
//!   that are not plain F32 / F16: `"q8_0"`, `"q4_1"`, `"q4_0"` (llama.cpp
//!   block bytes stored as U8 `[rows, row_bytes]`) or `"mixed"`;
//! - `lamina.allocation`: JSON map from each mixed tensor's name to
//!   `{"group": G, "bits": [b_0, b_1, ...]}`, the width of every column group.
//!
//! Tensors use llama.cpp's names (`token_embd.weight`, `blk.N.attn_q.weight`,
//! ...). A mixed tensor `X` is stored as three: `X.codes` (U32 `[rows,
//! row_words]`, the chunk layout of `lamina_engine::weight`), `X.scales` and
//! `X.mins` (F16 `[rows, n_groups]`).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use lamina_engine::weight::MixedLayout;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{
    Bytes, HostDType, HostTensor, LlamaWeights, LoadedModel, MixedTensor, Pivot, Recipe,
    TokenizerSpec,
};
use crate::{LlamaConfig, ModelError, Result};

/// Value of `lamina.format`.
pub const FORMAT: &str = "lamina-1";

/// Conventional file name ending.
pub const EXTENSION: &str = ".lamina.safetensors";

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Allocation {
    group: u32,
    bits: Vec<u8>,
}

/// Whether safetensors has a dtype for `d`; the other formats are named in
/// `lamina.dtypes` ([`HostDType::name`]).
fn is_plain(d: HostDType) -> bool {
    matches!(d, HostDType::F32 | HostDType::F16 | HostDType::BF16)
}

fn u32_bytes(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}
fn u16_bytes(v: &[u16]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Writes `m` to `path`, with its recipe (`{}` when it has none). The file is
/// written under a temporary name next to `path` and renamed at the end, so
/// an interrupted write never leaves a partial `path`.
pub fn write(path: &Path, m: &LoadedModel) -> Result<()> {
    let mut dtypes = BTreeMap::new();
    let mut alloc = BTreeMap::new();
    // (name, dtype, shape, bytes)
    let mut tensors: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (role, t) in m.weights.tensors() {
        let name = role.gguf_name();
        match (t.dtype, &t.mixed) {
            (HostDType::Mixed, Some(mx)) => {
                let l = &mx.layout;
                let rows = t.rows();
                tensors.push((
                    format!("{name}.codes"),
                    safetensors::Dtype::U32,
                    vec![rows, l.row_words() as usize],
                    u32_bytes(&mx.codes),
                ));
                let ng = l.n_groups() as usize;
                for (part, v) in [("scales", &mx.scales), ("mins", &mx.mins)] {
                    tensors.push((
                        format!("{name}.{part}"),
                        safetensors::Dtype::F16,
                        vec![rows, ng],
                        u16_bytes(v),
                    ));
                }
                alloc.insert(
                    name.clone(),
                    Allocation {
                        group: l.group,
                        bits: l.bits.clone(),
                    },
                );
                dtypes.insert(name, HostDType::Mixed.name());
            }
            (HostDType::Mixed, None) => {
                return Err(ModelError::Invalid(format!(
                    "{name}: mixed tensor without its data"
                )));
            }
            (HostDType::F32 | HostDType::F16 | HostDType::BF16, _) => {
                let dt = match t.dtype {
                    HostDType::F32 => safetensors::Dtype::F32,
                    HostDType::F16 => safetensors::Dtype::F16,
                    _ => safetensors::Dtype::BF16,
                };
                tensors.push((name, dt, t.shape.clone(), t.data.as_slice().to_vec()));
            }
            (d, _) => {
                let bytes = t.data.as_slice().to_vec();
                let rows = t.rows().max(1);
                tensors.push((
                    name.clone(),
                    safetensors::Dtype::U8,
                    vec![rows, bytes.len() / rows],
                    bytes,
                ));
                dtypes.insert(name, d.name());
            }
        }
    }
    let mut meta = HashMap::new();
    if let Some(pv) = &m.pivot {
        pv.check(&m.config)?;
        meta.insert("lamina.pivot".to_string(), json(&pv.tokens)?);
        for (part, x) in [("pivot.k", &pv.k), ("pivot.v", &pv.v)] {
            let flat: Vec<f32> = x.iter().flatten().copied().collect();
            tensors.push((
                part.to_string(),
                safetensors::Dtype::F32,
                vec![m.config.n_layers, pv.len(), m.config.kv_dim()],
                bytemuck::cast_slice(&flat).to_vec(),
            ));
        }
    }
    meta.insert("lamina.format".to_string(), FORMAT.to_string());
    meta.insert("lamina.config".to_string(), json(&m.config)?);
    meta.insert("lamina.tokenizer".to_string(), json(&m.tokenizer_spec)?);
    let recipe = match &m.recipe {
        Some(r) => json(r)?,
        None => "{}".to_string(),
    };
    meta.insert("lamina.recipe".to_string(), recipe);
    meta.insert("lamina.dtypes".to_string(), json(&dtypes)?);
    meta.insert("lamina.allocation".to_string(), json(&alloc)?);
    let views = tensors
        .iter()
        .map(|(n, dt, shape, b)| {
            safetensors::tensor::TensorView::new(*dt, shape.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| ModelError::Invalid(format!("{n}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let tmp = dir.join(format!(".{file_name}.partial-{}", std::process::id()));
    let res = safetensors::serialize_to_file(views, Some(meta), &tmp)
        .map_err(|e| ModelError::Invalid(format!("writing {}: {e}", tmp.display())))
        .and_then(|_| std::fs::rename(&tmp, path).map_err(|e| ModelError::io(path, e)));
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

fn json<T: Serialize + ?Sized>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| ModelError::Invalid(format!("metadata JSON: {e}")))
}

/// Whether `path` is a safetensors file whose header says it is a Lamina file.
pub fn is_lamina_file(path: &Path) -> bool {
    use std::io::Read;
    let Ok(mut f) = std::fs::File::open(path) else {
        return false;
    };
    let mut len = [0u8; 8];
    if f.read_exact(&mut len).is_err() {
        return false;
    }
    let n = u64::from_le_bytes(len);
    if n > 100_000_000 {
        return false;
    }
    let mut head = vec![0u8; n as usize];
    f.read_exact(&mut head).is_ok()
        && std::str::from_utf8(&head).is_ok_and(|s| s.contains("\"lamina.format\""))
}

/// Loads a `.lamina.safetensors` file.
pub fn load(path: &Path) -> Result<LoadedModel> {
    // Read whole: every tensor is copied out (mixed codes into u32 words) anyway.
    let bytes = std::fs::read(path).map_err(|e| ModelError::io(path, e))?;
    from_bytes(path, &bytes)
}

/// [`load`] of a file's image in memory (`path` names it in messages and
/// becomes the model's source).
pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<LoadedModel> {
    let bad = |msg: String| ModelError::Checkpoint {
        path: path.to_path_buf(),
        msg,
    };
    let (_, header) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| bad(format!("not a valid safetensors file: {e}")))?;
    let st = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| bad(format!("not a valid safetensors file: {e}")))?;
    let meta = header
        .metadata()
        .clone()
        .ok_or_else(|| bad("no Lamina metadata in the header".into()))?;
    let get = |k: &str| {
        meta.get(k)
            .ok_or_else(|| bad(format!("header metadata lacks `{k}`")))
    };
    let format = get("lamina.format")?;
    if format != FORMAT {
        return Err(bad(format!(
            "format `{format}` (this build reads `{FORMAT}`)"
        )));
    }
    let parse = |k: &str| -> Result<serde_json::Value> {
        serde_json::from_str(get(k)?).map_err(|e| bad(format!("`{k}`: {e}")))
    };
    let config: LlamaConfig = serde_json::from_value(parse("lamina.config")?)
        .map_err(|e| bad(format!("`lamina.config`: {e}")))?;
    config.validate()?;
    let tokenizer_spec: TokenizerSpec = serde_json::from_value(parse("lamina.tokenizer")?)
        .map_err(|e| bad(format!("`lamina.tokenizer`: {e}")))?;
    let dtypes: BTreeMap<String, String> = serde_json::from_value(parse("lamina.dtypes")?)
        .map_err(|e| bad(format!("`lamina.dtypes`: {e}")))?;
    let alloc: BTreeMap<String, Allocation> =
        serde_json::from_value(parse("lamina.allocation")?)
            .map_err(|e| bad(format!("`lamina.allocation`: {e}")))?;

    let raw = |name: &str, want: safetensors::Dtype| -> Result<(Vec<usize>, Vec<u8>)> {
        let v = st
            .tensor(name)
            .map_err(|_| bad(format!("tensor `{name}` is missing")))?;
        if v.dtype() != want {
            return Err(bad(format!(
                "tensor `{name}` is {:?}, expected {want:?}",
                v.dtype()
            )));
        }
        Ok((v.shape().to_vec(), v.data().to_vec()))
    };
    let tensor = |name: String, shape: &[usize]| -> Result<HostTensor> {
        let owned = |b: Vec<u8>| Bytes::Owned(Arc::new(b));
        match dtypes.get(&name).map(String::as_str) {
            Some(enc) if enc == HostDType::Mixed.name() => {
                let a = alloc
                    .get(&name)
                    .ok_or_else(|| bad(format!("`{name}` has no bit allocation")))?;
                let cols = *shape.last().unwrap_or(&0) as u32;
                let rows = shape.first().copied().unwrap_or(0);
                let layout = Arc::new(
                    MixedLayout::new(a.group, cols, a.bits.clone())
                        .map_err(|e| bad(format!("`{name}`: {e}")))?,
                );
                let (cs, codes) = raw(&format!("{name}.codes"), safetensors::Dtype::U32)?;
                let (ss, scales) = raw(&format!("{name}.scales"), safetensors::Dtype::F16)?;
                let (ms, mins) = raw(&format!("{name}.mins"), safetensors::Dtype::F16)?;
                let ng = layout.n_groups() as usize;
                if cs != [rows, layout.row_words() as usize] || ss != [rows, ng] || ms != [rows, ng]
                {
                    return Err(bad(format!(
                        "`{name}` parts have shapes {cs:?}, {ss:?}, {ms:?} for a {rows}x{cols} weight"
                    )));
                }
                let words = codes
                    .chunks_exact(4)
                    .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                let halves = |b: &[u8]| -> Vec<u16> {
                    b.chunks_exact(2)
                        .map(|c| u16::from_le_bytes([c[0], c[1]]))
                        .collect()
                };
                Ok(HostTensor {
                    name,
                    shape: shape.to_vec(),
                    dtype: HostDType::Mixed,
                    data: owned(Vec::new()),
                    mixed: Some(Arc::new(MixedTensor {
                        layout,
                        codes: words,
                        scales: halves(&scales),
                        mins: halves(&mins),
                    })),
                })
            }
            Some(other) => {
                let dt = other
                    .parse::<HostDType>()
                    .ok()
                    .filter(|d| !is_plain(*d) && *d != HostDType::Mixed)
                    .ok_or_else(|| bad(format!("`{name}` has unknown encoding `{other}`")))?;
                let (_, b) = raw(&name, safetensors::Dtype::U8)?;
                let n: usize = shape.iter().product();
                if dt.byte_len(n) != Some(b.len()) {
                    return Err(bad(format!(
                        "`{name}` has {} bytes for {n} {other} values",
                        b.len()
                    )));
                }
                Ok(HostTensor {
                    name,
                    shape: shape.to_vec(),
                    dtype: dt,
                    data: owned(b),
                    mixed: None,
                })
            }
            None => {
                let v = st
                    .tensor(&name)
                    .map_err(|_| bad(format!("tensor `{name}` is missing")))?;
                let dt = match v.dtype() {
                    safetensors::Dtype::F32 => HostDType::F32,
                    safetensors::Dtype::F16 => HostDType::F16,
                    safetensors::Dtype::BF16 => HostDType::BF16,
                    d => return Err(bad(format!("`{name}` has dtype {d:?}"))),
                };
                if v.shape() != shape {
                    return Err(bad(format!(
                        "`{name}` has shape {:?}, expected {shape:?}",
                        v.shape()
                    )));
                }
                Ok(HostTensor {
                    name,
                    shape: shape.to_vec(),
                    dtype: dt,
                    data: owned(v.data().to_vec()),
                    mixed: None,
                })
            }
        }
    };
    let c = &config;
    let weights = LlamaWeights::try_from_table(c, |role| tensor(role.gguf_name(), &role.shape(c)))?;
    let pivot = match meta.get("lamina.pivot") {
        None => None,
        Some(t) => {
            let tokens: Vec<u32> =
                serde_json::from_str(t).map_err(|e| bad(format!("`lamina.pivot`: {e}")))?;
            let per_layer = tokens.len() * c.kv_dim();
            let mut parts = Vec::new();
            for name in ["pivot.k", "pivot.v"] {
                let (shape, b) = raw(name, safetensors::Dtype::F32)?;
                if shape != [c.n_layers, tokens.len(), c.kv_dim()] {
                    return Err(bad(format!("`{name}` has shape {shape:?}")));
                }
                let f: Vec<f32> = b
                    .chunks_exact(4)
                    .map(|x| f32::from_le_bytes([x[0], x[1], x[2], x[3]]))
                    .collect();
                parts.push(
                    f.chunks(per_layer.max(1))
                        .map(<[f32]>::to_vec)
                        .collect::<Vec<_>>(),
                );
            }
            let v = parts.pop().unwrap_or_default();
            let k = parts.pop().unwrap_or_default();
            Some(Pivot { tokens, k, v })
        }
    };
    let recipe: Recipe = serde_json::from_value(parse("lamina.recipe")?)
        .map_err(|e| bad(format!("`lamina.recipe`: {e}")))?;
    let file_type = if recipe.name.is_empty() {
        "lamina".to_string()
    } else {
        recipe.name.clone()
    };
    Ok(LoadedModel {
        config,
        weights,
        tokenizer_spec,
        source: path.display().to_string(),
        file_type,
        recipe: Some(recipe),
        pivot,
    })
}
