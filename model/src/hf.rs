//! Hugging Face checkpoint directories: `config.json`, `model.safetensors`
//! (or shards listed in `model.safetensors.index.json`), `tokenizer.json`
//! and `tokenizer_config.json`.
//!
//! Safetensors files are memory-mapped; tensors stay in the map as F32, F16
//! or BF16. HF keeps q/k rows in their original order and rotates with
//! `rotate_half`, so these models run with [`RopeStyle::Neox`].

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

use crate::checkpoint::config::llama3_rope_factors;
use crate::checkpoint::filemap::{FileMap, map_file};
use crate::checkpoint::{
    Bytes, HostDType, HostTensor, LlamaWeights, LoadedModel, ModelTensor, TokenizerSpec,
};
use crate::{LlamaConfig, ModelError, Result, RopeStyle};

/// Loads an HF Llama/Mistral directory.
pub fn load_dir(dir: &Path) -> Result<LoadedModel> {
    let config_path = dir.join("config.json");
    let config_json = read_json(&config_path)?;
    let ckpt = SafetensorsDir::open(dir)?;
    let mut config = config_from_hf(&config_json, &config_path)?;
    // HF ties when asked to, and a missing lm_head can only mean tied.
    if !config.tied_embeddings && !ckpt.contains(ModelTensor::Output.hf_name()) {
        log::warn!(
            "{}: no lm_head.weight; using the tied embedding",
            dir.display()
        );
        config.tied_embeddings = true;
    }
    let weights = weights_from_hf(&ckpt, &config)?;
    let tokenizer_spec = tokenizer_from_hf(dir, &config_json)?;
    let file_type = format!(
        "{:?}",
        weights
            .layers
            .first()
            .map_or(weights.token_embd.dtype, |l| l.wq.dtype)
    );
    Ok(LoadedModel {
        config,
        weights,
        tokenizer_spec,
        source: dir.display().to_string(),
        file_type,
        recipe: None,
        pivot: None,
    })
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| ModelError::Checkpoint {
        path: path.to_path_buf(),
        msg: format!("bad JSON: {e}"),
    })
}

/// Reads a Llama-family `config.json`.
pub fn config_from_hf(j: &Value, path: &Path) -> Result<LlamaConfig> {
    let bad = |msg: String| ModelError::Checkpoint {
        path: path.to_path_buf(),
        msg,
    };
    let archs: Vec<&str> = j["architectures"]
        .as_array()
        .map_or(vec![], |a| a.iter().filter_map(Value::as_str).collect());
    let model_type = j["model_type"].as_str().unwrap_or("");
    let llama_arch = archs.iter().any(|a| {
        matches!(
            *a,
            "LlamaForCausalLM" | "MistralForCausalLM" | "Qwen2ForCausalLM"
        )
    });
    let known_type = matches!(model_type, "llama" | "mistral" | "qwen2");
    if !(llama_arch || (archs.is_empty() && known_type)) {
        let what = archs.first().copied().unwrap_or(model_type);
        return Err(ModelError::Unsupported(format!(
            "architecture `{what}`: Lamina runs Llama, Mistral and Qwen2 models"
        )));
    }
    // Qwen2 always adds biases to q, k and v (and nowhere else).
    let qkv_bias = model_type == "qwen2" || archs.contains(&"Qwen2ForCausalLM");
    let usize_of = |key: &str| -> Result<Option<usize>> {
        match &j[key] {
            Value::Null => Ok(None),
            v => v
                .as_u64()
                .and_then(|x| usize::try_from(x).ok())
                .map(Some)
                .ok_or_else(|| bad(format!("`{key}` = {v} is not a count"))),
        }
    };
    let need = |key: &str| usize_of(key)?.ok_or_else(|| bad(format!("`{key}` is missing")));
    let f32_of = |v: &Value, key: &str, default: f32| -> Result<f32> {
        match v {
            Value::Null => Ok(default),
            v => v
                .as_f64()
                .map(|x| x as f32)
                .ok_or_else(|| bad(format!("`{key}` = {v} is not a number"))),
        }
    };
    if j["attention_bias"].as_bool() == Some(true) || j["mlp_bias"].as_bool() == Some(true) {
        return Err(ModelError::Unsupported(
            "Llama with attention or MLP biases".into(),
        ));
    }
    if let Some(act) = j["hidden_act"].as_str().filter(|a| *a != "silu") {
        return Err(ModelError::Unsupported(format!(
            "hidden_act `{act}` (Lamina runs SwiGLU with silu)"
        )));
    }
    // transformers 5 moved rope settings into `rope_parameters`.
    let rope = if j["rope_parameters"].is_object() {
        &j["rope_parameters"]
    } else {
        &j["rope_scaling"]
    };
    let rope_type = rope["rope_type"]
        .as_str()
        .or(rope["type"].as_str())
        .unwrap_or("default");
    if !matches!(rope_type, "default" | "llama3") {
        return Err(ModelError::Unsupported(format!(
            "RoPE scaling `{rope_type}`"
        )));
    }
    let dim = need("hidden_size")?;
    let n_heads = need("num_attention_heads")?;
    if n_heads == 0 || !dim.is_multiple_of(n_heads) && usize_of("head_dim")?.is_none() {
        return Err(bad(format!(
            "hidden_size {dim} does not split into {n_heads} heads"
        )));
    }
    let theta = if j["rope_theta"].is_null() {
        &rope["rope_theta"]
    } else {
        &j["rope_theta"]
    };
    let max_seq_len = usize_of("max_position_embeddings")?.unwrap_or(2048);
    let head_dim = usize_of("head_dim")?.unwrap_or(dim / n_heads);
    let rope_theta = f32_of(theta, "rope_theta", 10000.0)?;
    let rope_factors = if rope_type == "llama3" {
        let num = |k: &str| {
            rope[k]
                .as_f64()
                .ok_or_else(|| bad(format!("rope_scaling of type llama3 needs a number `{k}`")))
        };
        llama3_rope_factors(
            head_dim,
            rope_theta,
            num("factor")?,
            num("low_freq_factor")?,
            num("high_freq_factor")?,
            num("original_max_position_embeddings")?,
        )
    } else {
        Vec::new()
    };
    if let Some(w) = usize_of("sliding_window")?.filter(|&w| w < max_seq_len) {
        log::warn!(
            "sliding_window {w} is ignored: attention is full up to {max_seq_len} positions"
        );
    }
    let config = LlamaConfig {
        arch: if model_type.is_empty() {
            "llama".into()
        } else {
            model_type.to_string()
        },
        n_layers: need("num_hidden_layers")?,
        dim,
        n_heads,
        n_kv_heads: usize_of("num_key_value_heads")?.unwrap_or(n_heads),
        head_dim,
        ffn_dim: need("intermediate_size")?,
        vocab_size: need("vocab_size")?,
        norm_eps: f32_of(&j["rms_norm_eps"], "rms_norm_eps", 1e-6)?,
        rope_theta,
        rope_style: RopeStyle::Neox,
        max_seq_len,
        tied_embeddings: j["tie_word_embeddings"].as_bool().unwrap_or(false),
        hadamard: Default::default(),
        rope_factors,
        qkv_bias,
    };
    config.validate()?;
    Ok(config)
}

/// One tensor's place in a mapped safetensors file.
struct Entry {
    file: PathBuf,
    map: Arc<FileMap>,
    offset: usize,
    len: usize,
    shape: Vec<usize>,
    dtype: safetensors::Dtype,
}

/// The tensors of a checkpoint directory, single-file or sharded.
pub struct SafetensorsDir {
    dir: PathBuf,
    entries: HashMap<String, Entry>,
}

impl SafetensorsDir {
    /// Maps `model.safetensors`, or every shard named by `model.safetensors.index.json`.
    pub fn open(dir: &Path) -> Result<SafetensorsDir> {
        let index_path = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        let mut entries = HashMap::new();
        if index_path.is_file() {
            let bad = |msg: String| ModelError::Checkpoint {
                path: index_path.clone(),
                msg,
            };
            let index = read_json(&index_path)?;
            let map = index["weight_map"]
                .as_object()
                .ok_or_else(|| bad("no `weight_map` object".into()))?;
            let mut shard_of = HashMap::new();
            for (name, file) in map {
                let file = file
                    .as_str()
                    .ok_or_else(|| bad(format!("`{name}` maps to {file}, not a file name")))?;
                // Shards must sit in the directory itself: no paths, no `..`.
                if Path::new(file).file_name().and_then(|f| f.to_str()) != Some(file) {
                    return Err(bad(format!("shard name `{file}` is not a plain file name")));
                }
                shard_of.insert(name.as_str(), file);
            }
            let shards: BTreeSet<&str> = shard_of.values().copied().collect();
            for shard in shards {
                read_safetensors(&dir.join(shard), &mut entries)?;
            }
            for (name, shard) in shard_of {
                match entries.get(name) {
                    Some(e) if e.file.file_name().and_then(|f| f.to_str()) == Some(shard) => {}
                    _ => {
                        return Err(bad(format!(
                            "tensor `{name}` is not in its shard `{shard}`"
                        )));
                    }
                }
            }
        } else if single.is_file() {
            read_safetensors(&single, &mut entries)?;
        } else {
            return Err(ModelError::Checkpoint {
                path: dir.to_path_buf(),
                msg: "no model.safetensors or model.safetensors.index.json".into(),
            });
        }
        Ok(SafetensorsDir {
            dir: dir.to_path_buf(),
            entries,
        })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// Tensor names, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.entries.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }

    /// A zero-copy view; `Invalid` when absent, `Unsupported` for dtypes other than F32/F16/BF16.
    pub fn tensor(&self, name: &str) -> Result<HostTensor> {
        let e = self.entries.get(name).ok_or_else(|| {
            ModelError::Invalid(format!("{}: no tensor `{name}`", self.dir.display()))
        })?;
        let dtype = match e.dtype {
            safetensors::Dtype::F32 => HostDType::F32,
            safetensors::Dtype::F16 => HostDType::F16,
            safetensors::Dtype::BF16 => HostDType::BF16,
            other => {
                return Err(ModelError::Unsupported(format!(
                    "tensor `{name}` has dtype {other:?} (Lamina reads F32, F16, BF16 safetensors)"
                )));
            }
        };
        let numel = e.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if numel.and_then(|n| dtype.byte_len(n)) != Some(e.len) {
            return Err(ModelError::Checkpoint {
                path: e.file.clone(),
                msg: format!(
                    "tensor `{name}`: {} bytes do not hold {dtype:?} {:?}",
                    e.len, e.shape
                ),
            });
        }
        Ok(HostTensor {
            mixed: None,
            name: name.to_string(),
            shape: e.shape.clone(),
            dtype,
            data: Bytes::Mapped {
                map: Arc::clone(&e.map),
                offset: e.offset,
                len: e.len,
            },
        })
    }
}

/// Maps one safetensors file and adds its tensors to `entries`.
fn read_safetensors(path: &Path, entries: &mut HashMap<String, Entry>) -> Result<()> {
    let map = map_file(path)?;
    let bad = |msg: String| ModelError::Checkpoint {
        path: path.to_path_buf(),
        msg,
    };
    // read_metadata checks the header length, the JSON, and that the tensors
    // tile the data section exactly.
    let (header_len, meta) = safetensors::SafeTensors::read_metadata(&map)
        .map_err(|e| bad(format!("not a valid safetensors file: {e}")))?;
    let data_start = 8 + header_len;
    for (name, info) in meta.tensors() {
        let (start, end) = info.data_offsets;
        let in_file = data_start.checked_add(end).is_some_and(|e| e <= map.len()) && start <= end;
        if !in_file {
            return Err(bad(format!("tensor `{name}` lies outside the file")));
        }
        let entry = Entry {
            file: path.to_path_buf(),
            map: Arc::clone(&map),
            offset: data_start + start,
            len: end - start,
            shape: info.shape.clone(),
            dtype: info.dtype,
        };
        if entries.insert(name.clone(), entry).is_some() {
            return Err(bad(format!(
                "tensor `{name}` appears in more than one shard"
            )));
        }
    }
    Ok(())
}

/// Maps HF tensor names to [`LlamaWeights`], checking shapes.
pub fn weights_from_hf(ck: &SafetensorsDir, c: &LlamaConfig) -> Result<LlamaWeights> {
    LlamaWeights::try_from_table(c, |role| ck.tensor(&role.hf_name()))
}

/// Builds a [`TokenizerSpec`] of model "hf-json" from `tokenizer.json`, with
/// special tokens, flags and the chat template from `tokenizer_config.json`
/// (or `chat_template.jinja`), falling back to ids in `config.json`.
///
/// `tokens` and `merges` are filled from the tokenizer.json model where it
/// has them. `add_bos` / `add_eos` say whether encoding with special tokens
/// puts BOS first / EOS last: the config's `add_bos_token` / `add_eos_token`
/// when set, else what the tokenizer.json post-processor does.
pub fn tokenizer_from_hf(dir: &Path, config_json: &Value) -> Result<TokenizerSpec> {
    let tok_path = dir.join("tokenizer.json");
    let text = std::fs::read_to_string(&tok_path).map_err(|e| ModelError::io(&tok_path, e))?;
    let tok: Value = serde_json::from_str(&text).map_err(|e| ModelError::Checkpoint {
        path: tok_path.clone(),
        msg: format!("bad JSON: {e}"),
    })?;
    let cfg_path = dir.join("tokenizer_config.json");
    let cfg = if cfg_path.is_file() {
        read_json(&cfg_path)?
    } else {
        Value::Null
    };

    let tokens = vocab_tokens(&tok).map_err(|msg| ModelError::Checkpoint {
        path: tok_path.clone(),
        msg,
    })?;
    let merges = tok["model"]["merges"].as_array().map_or(vec![], |m| {
        m.iter()
            .filter_map(|x| match x {
                Value::String(s) => Some(s.clone()),
                Value::Array(p) => {
                    Some(format!("{} {}", p.first()?.as_str()?, p.get(1)?.as_str()?))
                }
                _ => None,
            })
            .collect()
    });
    let id_of = |content: &str| -> Option<u32> {
        let added = tok["added_tokens"].as_array().and_then(|a| {
            a.iter()
                .find(|t| t["content"] == content)
                .and_then(|t| t["id"].as_u64())
        });
        let id = added
            .or_else(|| tok["model"]["vocab"][content].as_u64())
            .or_else(|| tokens.iter().position(|t| t == content).map(|i| i as u64));
        id.and_then(|i| u32::try_from(i).ok())
    };
    // A special token in tokenizer_config.json: a string or an AddedToken object.
    let special = |key: &str, cfg_id_key: &str| -> Option<u32> {
        let v = &cfg[key];
        v.as_str()
            .or(v["content"].as_str())
            .and_then(id_of)
            .or_else(|| {
                let id = &config_json[cfg_id_key];
                id.as_u64()
                    .or(id[0].as_u64())
                    .and_then(|i| u32::try_from(i).ok())
            })
    };
    let bos_id = special("bos_token", "bos_token_id");
    let eos_id = special("eos_token", "eos_token_id");
    let unk_id = special("unk_token", "unk_token_id");
    let pad_id = special("pad_token", "pad_token_id");
    let template_ids = template_special_ids(&tok["post_processor"], &id_of);
    let add_bos = cfg["add_bos_token"]
        .as_bool()
        .unwrap_or_else(|| bos_id.is_some() && template_ids.first().copied().flatten() == bos_id);
    let add_eos = cfg["add_eos_token"].as_bool().unwrap_or_else(|| {
        eos_id.is_some()
            && template_ids.len() > 1
            && template_ids.last().copied().flatten() == eos_id
    });
    Ok(TokenizerSpec {
        model: "hf-json".into(),
        pre: None,
        tokens,
        merges,
        token_types: vec![],
        scores: vec![],
        bos_id,
        eos_id,
        unk_id,
        pad_id,
        add_bos,
        add_eos,
        chat_template: chat_template(dir, &cfg)?,
        hf_json: Some(text),
    })
}

/// id -> token string from the model vocabulary and added tokens.
fn vocab_tokens(tok: &Value) -> std::result::Result<Vec<String>, String> {
    let mut pairs: Vec<(u64, &str)> = Vec::new();
    match &tok["model"]["vocab"] {
        Value::Object(m) => pairs.extend(
            m.iter()
                .filter_map(|(t, id)| Some((id.as_u64()?, t.as_str()))),
        ),
        // Unigram: [[piece, score], ...] indexed by position.
        Value::Array(a) => pairs.extend(
            a.iter()
                .enumerate()
                .filter_map(|(i, p)| Some((i as u64, p[0].as_str()?))),
        ),
        _ => {}
    }
    if let Some(added) = tok["added_tokens"].as_array() {
        pairs.extend(
            added
                .iter()
                .filter_map(|t| Some((t["id"].as_u64()?, t["content"].as_str()?))),
        );
    }
    let Some(max) = pairs.iter().map(|p| p.0).max() else {
        return Ok(vec![]);
    };
    // Ids are dense in practice; refuse a bogus id rather than allocate for it.
    if max >= 4 * pairs.len() as u64 + 1024 {
        return Err(format!(
            "token id {max} is far beyond the {} tokens listed",
            pairs.len()
        ));
    }
    let mut tokens = vec![String::new(); max as usize + 1];
    for (id, t) in pairs {
        tokens[id as usize] = t.to_string();
    }
    Ok(tokens)
}

/// Ids of the special tokens and `None` for the sequence slot(s) in a
/// TemplateProcessing post-processor's `single` template (also inside a Sequence).
fn template_special_ids(pp: &Value, id_of: &dyn Fn(&str) -> Option<u32>) -> Vec<Option<u32>> {
    match pp["type"].as_str() {
        Some("TemplateProcessing") => pp["single"].as_array().map_or(vec![], |items| {
            items
                .iter()
                .map(|it| it["SpecialToken"]["id"].as_str().and_then(id_of))
                .collect()
        }),
        Some("Sequence") => pp["processors"].as_array().map_or(vec![], |ps| {
            ps.iter()
                .map(|p| template_special_ids(p, id_of))
                .find(|v| !v.is_empty())
                .unwrap_or_default()
        }),
        _ => vec![],
    }
}

/// The chat template: tokenizer_config.json's `chat_template` (a string, or a
/// list of named templates, where "default" wins), else `chat_template.jinja`.
fn chat_template(dir: &Path, cfg: &Value) -> Result<Option<String>> {
    match &cfg["chat_template"] {
        Value::String(s) => return Ok(Some(s.clone())),
        Value::Array(list) => {
            let pick = list
                .iter()
                .find(|t| t["name"] == "default")
                .or(list.first());
            if let Some(s) = pick.and_then(|t| t["template"].as_str()) {
                return Ok(Some(s.to_string()));
            }
        }
        _ => {}
    }
    let jinja = dir.join("chat_template.jinja");
    if jinja.is_file() {
        return std::fs::read_to_string(&jinja)
            .map(Some)
            .map_err(|e| ModelError::io(&jinja, e));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use safetensors::Dtype;
    use safetensors::tensor::TensorView;
    use serde_json::json;
    use std::collections::BTreeMap;

    const DIM: usize = 8;
    const FFN: usize = 12;
    const VOCAB: usize = 6;

    /// name -> (shape, values)
    type Tensors = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

    /// Random tensors of a 2-layer model with 2 query heads and 1 KV head of width 4.
    fn random_tensors(tied: bool) -> Tensors {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut t = BTreeMap::new();
        let mut add = |name: String, shape: Vec<usize>| {
            let v = (0..shape.iter().product())
                .map(|_| rng.random_range(-1.0..1.0))
                .collect();
            t.insert(name, (shape, v));
        };
        add("model.embed_tokens.weight".into(), vec![VOCAB, DIM]);
        for l in 0..2 {
            let n = |s: &str| format!("model.layers.{l}.{s}.weight");
            add(n("input_layernorm"), vec![DIM]);
            add(n("self_attn.q_proj"), vec![DIM, DIM]);
            add(n("self_attn.k_proj"), vec![4, DIM]);
            add(n("self_attn.v_proj"), vec![4, DIM]);
            add(n("self_attn.o_proj"), vec![DIM, DIM]);
            add(n("post_attention_layernorm"), vec![DIM]);
            add(n("mlp.gate_proj"), vec![FFN, DIM]);
            add(n("mlp.up_proj"), vec![FFN, DIM]);
            add(n("mlp.down_proj"), vec![DIM, FFN]);
        }
        add("model.norm.weight".into(), vec![DIM]);
        if !tied {
            add("lm_head.weight".into(), vec![VOCAB, DIM]);
        }
        t
    }

    fn encode(v: &[f32], dtype: Dtype) -> Vec<u8> {
        match dtype {
            Dtype::BF16 => v
                .iter()
                .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
                .collect(),
            _ => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }

    fn write_st(path: &Path, tensors: &Tensors, dtype: Dtype) {
        let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
            .iter()
            .map(|(n, (s, v))| (n.clone(), s.clone(), encode(v, dtype)))
            .collect();
        let views = bytes
            .iter()
            .map(|(n, s, b)| (n.clone(), TensorView::new(dtype, s.clone(), b).unwrap()));
        safetensors::serialize_to_file(views, None, path).unwrap();
    }

    fn config(tied: bool) -> Value {
        json!({
            "architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "num_hidden_layers": 2, "hidden_size": DIM, "num_attention_heads": 2,
            "num_key_value_heads": 1, "intermediate_size": FFN, "vocab_size": VOCAB,
            "rms_norm_eps": 1e-5, "rope_theta": 100000.0, "max_position_embeddings": 128,
            "tie_word_embeddings": tied, "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2
        })
    }

    fn write_dir(dir: &Path, tied: bool, sharded: bool, dtype: Dtype) -> Tensors {
        let t = random_tensors(tied);
        std::fs::write(dir.join("config.json"), config(tied).to_string()).unwrap();
        if sharded {
            let mut a = t.clone();
            let b = a.split_off("model.layers.1");
            write_st(&dir.join("model-00001-of-00002.safetensors"), &a, dtype);
            write_st(&dir.join("model-00002-of-00002.safetensors"), &b, dtype);
            let mut map = serde_json::Map::new();
            for (i, part) in [a, b].iter().enumerate() {
                for n in part.keys() {
                    map.insert(
                        n.clone(),
                        json!(format!("model-0000{}-of-00002.safetensors", i + 1)),
                    );
                }
            }
            let index = json!({"metadata": {}, "weight_map": map});
            std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
        } else {
            write_st(&dir.join("model.safetensors"), &t, dtype);
        }
        let tok = json!({
            "version": "1.0",
            "added_tokens": [
                {"id": 0, "content": "<unk>", "special": true},
                {"id": 1, "content": "<s>", "special": true},
                {"id": 2, "content": "</s>", "special": true}
            ],
            "post_processor": {"type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}]},
            "model": {"type": "BPE", "vocab": {"<unk>": 0, "<s>": 1, "</s>": 2, "a": 3, "b": 4, "ab": 5},
                "merges": [["a", "b"]]}
        });
        std::fs::write(dir.join("tokenizer.json"), tok.to_string()).unwrap();
        let cfg = json!({"bos_token": "<s>", "eos_token": {"content": "</s>"}, "chat_template": "{{ m }}"});
        std::fs::write(dir.join("tokenizer_config.json"), cfg.to_string()).unwrap();
        t
    }

    fn check_values(m: &LoadedModel, t: &Tensors, tol: f32) {
        let pairs = [
            ("model.embed_tokens.weight", &m.weights.token_embd),
            (
                "model.layers.1.self_attn.k_proj.weight",
                &m.weights.layers[1].wk,
            ),
            (
                "model.layers.0.mlp.down_proj.weight",
                &m.weights.layers[0].w_down,
            ),
            ("model.norm.weight", &m.weights.output_norm),
        ];
        for (name, got) in pairs {
            let (shape, want) = &t[name];
            assert_eq!(&got.shape, shape, "{name}");
            for (i, (a, b)) in got.to_f32().unwrap().iter().zip(want).enumerate() {
                assert!((a - b).abs() <= tol, "{name}[{i}]: {a} vs {b}");
            }
        }
    }

    #[test]
    fn single_file_untied_f32() {
        let dir = tempfile::tempdir().unwrap();
        let t = write_dir(dir.path(), false, false, Dtype::F32);
        let m = crate::loader::load(dir.path()).unwrap();
        let c = &m.config;
        assert_eq!(
            (
                c.n_layers,
                c.dim,
                c.n_heads,
                c.n_kv_heads,
                c.head_dim,
                c.ffn_dim
            ),
            (2, 8, 2, 1, 4, 12)
        );
        assert_eq!(
            (c.vocab_size, c.max_seq_len, c.rope_theta, c.norm_eps),
            (6, 128, 100000.0, 1e-5)
        );
        assert_eq!(c.rope_style, RopeStyle::Neox);
        assert!(!c.tied_embeddings);
        assert_eq!(m.weights.lm_head().name, "lm_head.weight");
        assert_eq!(m.file_type, "F32");
        check_values(&m, &t, 0.0);
        let s = &m.tokenizer_spec;
        assert_eq!(s.model, "hf-json");
        assert!(
            s.hf_json
                .as_deref()
                .is_some_and(|j| j.contains("TemplateProcessing"))
        );
        assert_eq!(s.tokens, ["<unk>", "<s>", "</s>", "a", "b", "ab"]);
        assert_eq!(s.merges, ["a b"]);
        assert_eq!(
            (s.bos_id, s.eos_id, s.unk_id, s.add_bos, s.add_eos),
            (Some(1), Some(2), None, true, false)
        );
        assert_eq!(s.chat_template.as_deref(), Some("{{ m }}"));
    }

    #[test]
    fn sharded_tied_bf16() {
        let dir = tempfile::tempdir().unwrap();
        let t = write_dir(dir.path(), true, true, Dtype::BF16);
        let m = load_dir(dir.path()).unwrap();
        assert!(m.config.tied_embeddings && m.weights.output.is_none());
        assert_eq!(m.file_type, "BF16");
        check_values(&m, &t, 1.0 / 128.0);
    }

    fn load_err(dir: &Path) -> String {
        match load_dir(dir) {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn errors_are_clear() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        write_dir(p, false, true, Dtype::F32);
        let index = p.join("model.safetensors.index.json");
        let good_index = std::fs::read_to_string(&index).unwrap();

        // A shard outside the directory.
        std::fs::write(
            &index,
            good_index.replace("model-00001-of-00002", "../evil"),
        )
        .unwrap();
        assert!(load_err(p).contains("not a plain file name"));
        // An index naming a tensor its shard lacks.
        let mut j: Value = serde_json::from_str(&good_index).unwrap();
        j["weight_map"]["extra.weight"] = json!("model-00001-of-00002.safetensors");
        std::fs::write(&index, j.to_string()).unwrap();
        assert!(load_err(p).contains("extra.weight"));
        std::fs::write(&index, &good_index).unwrap();

        // A truncated shard.
        let shard = p.join("model-00002-of-00002.safetensors");
        let bytes = std::fs::read(&shard).unwrap();
        std::fs::write(&shard, &bytes[..bytes.len() - 3]).unwrap();
        assert!(load_err(p).contains("safetensors"));
        std::fs::write(&shard, &bytes).unwrap();

        // Shapes that disagree with the config name the tensor.
        let mut cfg = config(false);
        cfg["intermediate_size"] = json!(10);
        std::fs::write(p.join("config.json"), cfg.to_string()).unwrap();
        let err = load_err(p);
        assert!(
            err.contains("model.layers.0.mlp.gate_proj.weight") && err.contains("[12, 8]"),
            "{err}"
        );

        // Other architectures are refused by name.
        cfg = config(false);
        cfg["architectures"] = json!(["GPT2LMHeadModel"]);
        std::fs::write(p.join("config.json"), cfg.to_string()).unwrap();
        assert!(load_err(p).contains("GPT2LMHeadModel"));

        std::fs::remove_file(&index).unwrap();
        assert!(load_err(p).contains("no model.safetensors"));
    }

    #[test]
    fn unsupported_dtype_names_tensor() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.safetensors");
        let data = [0u8; 16];
        let view = TensorView::new(Dtype::I32, vec![4], &data).unwrap();
        safetensors::serialize_to_file([("ids", view)], None, &path).unwrap();
        std::fs::copy(&path, dir.path().join("model.safetensors")).unwrap();
        let ck = SafetensorsDir::open(dir.path()).unwrap();
        assert_eq!(ck.names(), ["ids"]);
        let err = ck.tensor("ids").unwrap_err().to_string();
        assert!(err.contains("ids") && err.contains("I32"), "{err}");
    }
}
