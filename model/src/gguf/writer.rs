//! A small GGUF v3 writer, for tests and synthetic models.
//!
//! It writes exactly the layout that [`super::GgufFile`] reads: header,
//! metadata in insertion order, tensor table, data padded to the alignment
//! (`general.alignment` when set as u32, else 32).

use std::path::Path;

use super::{DEFAULT_ALIGNMENT, GgufArray, GgufValue};
use crate::checkpoint::HostTensor;
use crate::checkpoint::ggml::ggml_type_of;
use crate::{ModelError, Result};

struct PendingTensor {
    name: String,
    /// ggml order, innermost first.
    ne: Vec<u64>,
    ggml_type: u32,
    data: Vec<u8>,
}

#[derive(Default)]
pub struct GgufWriter {
    kvs: Vec<(String, GgufValue)>,
    tensors: Vec<PendingTensor>,
}

impl GgufWriter {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn kv(&mut self, key: impl Into<String>, value: GgufValue) -> &mut Self {
        self.kvs.push((key.into(), value));
        self
    }

    /// Adds a tensor with a row-major `shape` (outermost first), a raw ggml
    /// type id and its encoded bytes. Sizes are not checked here, so tests
    /// can write broken files on purpose.
    pub fn tensor(
        &mut self,
        name: impl Into<String>,
        shape: &[usize],
        ggml_type: u32,
        data: Vec<u8>,
    ) -> &mut Self {
        let ne = shape.iter().rev().map(|&d| d as u64).collect();
        self.tensors.push(PendingTensor {
            name: name.into(),
            ne,
            ggml_type,
            data,
        });
        self
    }

    pub fn tensor_f32(
        &mut self,
        name: impl Into<String>,
        shape: &[usize],
        values: &[f32],
    ) -> &mut Self {
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.tensor(name, shape, 0, data)
    }

    /// Copies a host tensor under `name`. Mixed tensors, which GGUF has no
    /// type for, are written dequantized as f32 (NaN if they do not decode).
    pub fn host_tensor(&mut self, name: impl Into<String>, t: &HostTensor) -> &mut Self {
        match ggml_type_of(t.dtype) {
            Some(ty) => self.tensor(name, &t.shape, ty, t.data.as_slice().to_vec()),
            None => {
                let v = t.to_f32().unwrap_or_else(|_| vec![f32::NAN; t.numel()]);
                self.tensor_f32(name, &t.shape, &v)
            }
        }
    }

    fn alignment(&self) -> usize {
        self.kvs
            .iter()
            .find_map(|(k, v)| match v {
                GgufValue::U32(a) if k == "general.alignment" && *a > 0 => Some(*a as usize),
                _ => None,
            })
            .unwrap_or(DEFAULT_ALIGNMENT)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let align = self.alignment();
        let mut out = Vec::new();
        out.extend_from_slice(b"GGUF");
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.kvs.len() as u64).to_le_bytes());
        for (k, v) in &self.kvs {
            put_str(&mut out, k);
            out.extend_from_slice(&v.value_type().id().to_le_bytes());
            put_value(&mut out, v);
        }
        let mut offset = 0usize;
        for t in &self.tensors {
            put_str(&mut out, &t.name);
            out.extend_from_slice(&(t.ne.len() as u32).to_le_bytes());
            for d in &t.ne {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.ggml_type.to_le_bytes());
            out.extend_from_slice(&(offset as u64).to_le_bytes());
            offset = (offset + t.data.len()).next_multiple_of(align);
        }
        out.resize(out.len().next_multiple_of(align), 0);
        for t in &self.tensors {
            out.extend_from_slice(&t.data);
            out.resize(out.len().next_multiple_of(align), 0);
        }
        out
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        std::fs::write(path, self.to_bytes()).map_err(|e| ModelError::io(path, e))
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &GgufValue) {
    use GgufValue as V;
    match v {
        V::U8(x) => out.extend_from_slice(&x.to_le_bytes()),
        V::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        V::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        V::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        V::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        V::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        V::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        V::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        V::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        V::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        V::Bool(x) => out.push(u8::from(*x)),
        V::String(s) => put_str(out, s),
        V::Array(a) => put_array(out, a),
    }
}

fn put_array(out: &mut Vec<u8>, a: &GgufArray) {
    use GgufArray as A;
    out.extend_from_slice(&a.elem_type().id().to_le_bytes());
    out.extend_from_slice(&(a.len() as u64).to_le_bytes());
    match a {
        A::U8(v) => out.extend_from_slice(v),
        A::I8(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        A::U16(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        A::I16(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        A::U32(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        A::I32(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        A::F32(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        A::U64(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        A::I64(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        A::F64(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        A::Bool(v) => out.extend(v.iter().map(|&b| u8::from(b))),
        A::String(v) => v.iter().for_each(|s| put_str(out, s)),
        A::Array(v) => v.iter().for_each(|x| put_array(out, x)),
    }
}

impl From<&str> for GgufValue {
    fn from(s: &str) -> Self {
        GgufValue::String(s.to_string())
    }
}
impl From<String> for GgufValue {
    fn from(s: String) -> Self {
        GgufValue::String(s)
    }
}
impl From<u32> for GgufValue {
    fn from(x: u32) -> Self {
        GgufValue::U32(x)
    }
}
impl From<f32> for GgufValue {
    fn from(x: f32) -> Self {
        GgufValue::F32(x)
    }
}
impl From<bool> for GgufValue {
    fn from(x: bool) -> Self {
        GgufValue::Bool(x)
    }
}
impl From<Vec<String>> for GgufValue {
    fn from(v: Vec<String>) -> Self {
        GgufValue::Array(GgufArray::String(v))
    }
}
impl From<Vec<i32>> for GgufValue {
    fn from(v: Vec<i32>) -> Self {
        GgufValue::Array(GgufArray::I32(v))
    }
}
impl From<Vec<f32>> for GgufValue {
    fn from(v: Vec<f32>) -> Self {
        GgufValue::Array(GgufArray::F32(v))
    }
}
