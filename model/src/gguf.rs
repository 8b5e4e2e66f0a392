//! Memory-mapped GGUF reader (format versions 2 and 3, little-endian).
//!
//! Layout, after ggml's `docs/gguf.md`:
//!
//! ```text
//! magic "GGUF" | version u32 | tensor_count u64 | kv_count u64
//! kv_count x   { key: string, value_type: u32, value }
//! tensor_count x { name: string, n_dims: u32, ne[n_dims]: u64, ggml_type: u32, offset: u64 }
//! padding to `general.alignment` (default 32)
//! tensor data; each tensor at data_offset + offset
//! string = u64 length + UTF-8 bytes; array = elem_type u32 + count u64 + items
//! ```
//!
//! Every count and length read from the file is checked against the bytes
//! that remain before anything is allocated, so a corrupt or hostile file ends
//! in [`ModelError::Gguf`], never in a panic, an out-of-bounds read or a huge
//! allocation. Tensors of ggml types Lamina cannot run are still listed (with
//! their raw type id) so that files can be inspected; they only fail when used.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::checkpoint::filemap::{FileMap, copy_bytes, map_file, own_bytes};
use crate::checkpoint::{Bytes, HostDType, HostTensor};
use crate::{ModelError, Result};

mod value;
pub mod writer;

use crate::checkpoint::ggml::{ggml_type_layout, ggml_type_name, ggml_type_of, host_dtype};
pub use value::{GgufArray, GgufValue, GgufValueType};

pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
pub const DEFAULT_ALIGNMENT: usize = 32;
/// ggml's GGML_MAX_DIMS.
pub const MAX_DIMS: usize = 4;
/// Nesting limit for arrays of arrays (real files use at most one level).
pub const MAX_ARRAY_DEPTH: usize = 8;
/// Bytes of magic + version + tensor_count + kv_count.
const HEADER_LEN: usize = 24;

/// One entry of the tensor table.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufTensorInfo {
    pub name: String,
    /// ggml dims, innermost first (`ne[0]` is the row length).
    pub ne: Vec<u64>,
    /// Raw ggml type id (see [`ggml_type_name`]).
    pub ggml_type: u32,
    /// Offset of the data from the start of the data section.
    pub offset: u64,
    /// Size of the data in bytes; `None` when the type's layout is unknown.
    pub n_bytes: Option<usize>,
}

impl GgufTensorInfo {
    /// Row-major shape, outermost first (`ne` reversed).
    pub fn shape(&self) -> Vec<usize> {
        // Each ne was checked to fit usize, with a product that fits, at parse time.
        self.ne.iter().rev().map(|&d| d as usize).collect()
    }
    pub fn numel(&self) -> u64 {
        self.ne.iter().product()
    }
    pub fn type_name(&self) -> String {
        ggml_type_name(self.ggml_type)
    }
    pub fn dtype(&self) -> Option<HostDType> {
        host_dtype(self.ggml_type)
    }
}

/// An open, validated GGUF file. Tensor data stays in the memory map.
pub struct GgufFile {
    path: PathBuf,
    map: Arc<FileMap>,
    version: u32,
    alignment: usize,
    data_offset: usize,
    metadata: Vec<(String, GgufValue)>,
    meta_index: HashMap<String, usize>,
    tensors: Vec<GgufTensorInfo>,
    tensor_index: HashMap<String, usize>,
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Opens and validates a GGUF file: header, all metadata, the tensor table
    /// and every tensor's extent within the file.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile> {
        let path = path.as_ref().to_path_buf();
        let map = map_file(&path)?;
        let p = parse_at(&path, &map)?;
        Ok(Self::from_parsed(path, map, p))
    }

    /// Parses a GGUF image held in memory (`name` is used in messages).
    pub fn from_bytes(name: impl Into<PathBuf>, bytes: &[u8]) -> Result<GgufFile> {
        let path = name.into();
        // Parsed before copying, so an empty or broken image never reaches mmap.
        let p = parse_at(&path, bytes)?;
        let map = copy_bytes(&path, bytes)?;
        Ok(Self::from_parsed(path, map, p))
    }

    /// [`GgufFile::from_bytes`] taking the image: in a browser it is kept
    /// as it is, not copied.
    pub fn from_vec(name: impl Into<PathBuf>, bytes: Vec<u8>) -> Result<GgufFile> {
        let path = name.into();
        let p = parse_at(&path, &bytes)?;
        let map = own_bytes(&path, bytes)?;
        Ok(Self::from_parsed(path, map, p))
    }

    /// The file over `map`, whose bytes `p` was parsed from.
    fn from_parsed(path: PathBuf, map: Arc<FileMap>, p: Parsed) -> GgufFile {
        let meta_index = p
            .metadata
            .iter()
            .enumerate()
            .map(|(i, (k, _))| (k.clone(), i))
            .collect();
        let tensor_index = p
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        GgufFile {
            path,
            map,
            version: p.version,
            alignment: p.alignment,
            data_offset: p.data_offset,
            metadata: p.metadata,
            meta_index,
            tensors: p.tensors,
            tensor_index,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn version(&self) -> u32 {
        self.version
    }
    pub fn alignment(&self) -> usize {
        self.alignment
    }
    /// Absolute file offset of the tensor data section.
    pub fn data_offset(&self) -> usize {
        self.data_offset
    }
    pub fn file_len(&self) -> usize {
        self.map.len()
    }

    /// All metadata, in file order.
    pub fn metadata(&self) -> &[(String, GgufValue)] {
        &self.metadata
    }

    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.meta_index.get(key).map(|&i| &self.metadata[i].1)
    }

    /// Looks `key` up and converts it; `Ok(None)` when absent, `Err` on a wrong type.
    fn typed<'a, T>(
        &'a self,
        key: &str,
        expected: &str,
        conv: impl FnOnce(&'a GgufValue) -> Option<T>,
    ) -> Result<Option<T>> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        match conv(v) {
            Some(x) => Ok(Some(x)),
            None => Err(ModelError::Invalid(format!(
                "{}: metadata `{key}` is {} = {v}, expected {expected}",
                self.path.display(),
                v.type_desc()
            ))),
        }
    }

    pub fn get_str(&self, key: &str) -> Result<Option<&str>> {
        self.typed(key, "a string", GgufValue::as_str)
    }
    /// Any integer type that fits u32.
    pub fn get_u32(&self, key: &str) -> Result<Option<u32>> {
        self.typed(key, "an integer in u32 range", |v| {
            v.as_u64().and_then(|x| x.try_into().ok())
        })
    }
    /// Any non-negative integer type.
    pub fn get_u64(&self, key: &str) -> Result<Option<u64>> {
        self.typed(key, "a non-negative integer", GgufValue::as_u64)
    }
    /// f32 or f64 (integers accepted too).
    pub fn get_f32(&self, key: &str) -> Result<Option<f32>> {
        self.typed(key, "a number", |v| v.as_f64().map(|x| x as f32))
    }
    pub fn get_bool(&self, key: &str) -> Result<Option<bool>> {
        self.typed(key, "a bool", GgufValue::as_bool)
    }
    pub fn get_str_array(&self, key: &str) -> Result<Option<Vec<String>>> {
        self.typed(key, "an array of strings", |v| match v.as_array()? {
            GgufArray::String(s) => Some(s.clone()),
            _ => None,
        })
    }
    /// Any integer array whose elements fit i32.
    pub fn get_i32_array(&self, key: &str) -> Result<Option<Vec<i32>>> {
        self.typed(key, "an array of integers in i32 range", |v| {
            match v.as_array()? {
                GgufArray::I32(x) => Some(x.clone()),
                a => a
                    .to_i64_vec()?
                    .into_iter()
                    .map(|x| i32::try_from(x).ok())
                    .collect(),
            }
        })
    }
    /// An f32 or f64 array.
    pub fn get_f32_array(&self, key: &str) -> Result<Option<Vec<f32>>> {
        self.typed(key, "an array of floats", |v| match v.as_array()? {
            GgufArray::F32(x) => Some(x.clone()),
            GgufArray::F64(x) => Some(x.iter().map(|&y| y as f32).collect()),
            _ => None,
        })
    }

    /// The tensor table, in file order.
    pub fn tensors(&self) -> &[GgufTensorInfo] {
        &self.tensors
    }

    pub fn tensor_info(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// Raw bytes of a tensor; `None` when its type's layout is unknown.
    pub fn tensor_bytes(&self, info: &GgufTensorInfo) -> Option<&[u8]> {
        let start = self.data_offset + usize::try_from(info.offset).ok()?;
        self.map.get(start..start.checked_add(info.n_bytes?)?)
    }

    /// A zero-copy view of a tensor; `None` when it is absent or of a type
    /// Lamina cannot run ([`GgufFile::load_tensor`] says which).
    pub fn tensor(&self, name: &str) -> Option<HostTensor> {
        self.load_tensor(name).ok()
    }

    /// A zero-copy view of a tensor: `Invalid` when absent, `Unsupported`
    /// naming the tensor and its ggml type when Lamina cannot run that type.
    pub fn load_tensor(&self, name: &str) -> Result<HostTensor> {
        let info = self.tensor_info(name).ok_or_else(|| {
            ModelError::Invalid(format!("{}: no tensor `{name}`", self.path.display()))
        })?;
        let dtype = info.dtype().ok_or_else(|| {
            let runs: Vec<String> = HostDType::ALL
                .iter()
                .filter_map(|&d| ggml_type_of(d).map(ggml_type_name))
                .collect();
            ModelError::Unsupported(format!(
                "tensor `{name}` has ggml type {} (Lamina runs {})",
                info.type_name(),
                runs.join(", ")
            ))
        })?;
        let bad = || ModelError::Gguf {
            path: self.path.clone(),
            msg: format!("tensor `{name}` lies outside the file"),
        };
        // Supported types always have a layout, and their extents were
        // checked at open; the conversions below are defensive.
        let len = info.n_bytes.ok_or_else(bad)?;
        let offset = usize::try_from(info.offset).map_err(|_| bad())? + self.data_offset;
        if offset
            .checked_add(len)
            .is_none_or(|end| end > self.map.len())
        {
            return Err(bad());
        }
        Ok(HostTensor {
            mixed: None,
            name: name.to_string(),
            shape: info.shape(),
            dtype,
            data: Bytes::Mapped {
                map: Arc::clone(&self.map),
                offset,
                len,
            },
        })
    }
}

/// [`parse`] with the file's path in its error.
fn parse_at(path: &Path, buf: &[u8]) -> Result<Parsed> {
    parse(buf).map_err(|msg| ModelError::Gguf {
        path: path.to_path_buf(),
        msg,
    })
}

/// What [`parse`] finds.
struct Parsed {
    version: u32,
    alignment: usize,
    data_offset: usize,
    metadata: Vec<(String, GgufValue)>,
    tensors: Vec<GgufTensorInfo>,
}

/// Bounds-checked little-endian cursor. Errors are messages; the caller adds the path.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

type ParseResult<T> = std::result::Result<T, String>;

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &dyn fmt::Display) -> ParseResult<&'a [u8]> {
        match self
            .pos
            .checked_add(n)
            .and_then(|end| self.buf.get(self.pos..end))
        {
            Some(s) => {
                self.pos += n;
                Ok(s)
            }
            None => Err(format!(
                "truncated: {what} needs {n} bytes at offset {}, but the file ends at {}",
                self.pos,
                self.buf.len()
            )),
        }
    }

    fn array<const N: usize>(&mut self, what: &dyn fmt::Display) -> ParseResult<[u8; N]> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }
    fn u32(&mut self, what: &dyn fmt::Display) -> ParseResult<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &dyn fmt::Display) -> ParseResult<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A count of items each taking at least `min_size` bytes, bounded by what remains.
    fn count(&mut self, min_size: usize, what: &dyn fmt::Display) -> ParseResult<usize> {
        let n = self.u64(what)?;
        let fits = usize::try_from(n).ok().filter(|&n| {
            n.checked_mul(min_size)
                .is_some_and(|b| b <= self.remaining())
        });
        fits.ok_or_else(|| {
            format!(
                "{what} is {n} (read at offset {}), more than the {} bytes that remain can hold",
                self.pos - 8,
                self.remaining()
            )
        })
    }

    fn string(&mut self, what: &dyn fmt::Display) -> ParseResult<String> {
        let len = self.count(1, &format_args!("length of {what}"))?;
        let bytes = self.take(len, what)?;
        // Vocabularies may hold stray invalid UTF-8 (partial byte tokens);
        // keep them readable rather than refusing the file.
        Ok(String::from_utf8_lossy(bytes).into_owned())
    }

    /// `n` fixed-size little-endian items.
    fn fixed<T, const N: usize>(
        &mut self,
        n: usize,
        what: &dyn fmt::Display,
        conv: fn([u8; N]) -> T,
    ) -> ParseResult<Vec<T>> {
        let bytes = self.take(n * N, what)?; // n * N <= remaining, checked by count()
        Ok(bytes
            .chunks_exact(N)
            .map(|c| {
                let mut a = [0u8; N];
                a.copy_from_slice(c);
                conv(a)
            })
            .collect())
    }

    fn value_type(&mut self, what: &dyn fmt::Display) -> ParseResult<GgufValueType> {
        let at = self.pos;
        let id = self.u32(what)?;
        GgufValueType::from_id(id)
            .ok_or_else(|| format!("{what}: unknown value type {id} at offset {at}"))
    }

    fn bool(b: u8, what: &dyn fmt::Display) -> ParseResult<bool> {
        match b {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(format!("{what}: invalid bool byte {b}")),
        }
    }

    fn value(&mut self, ty: GgufValueType, what: &dyn fmt::Display) -> ParseResult<GgufValue> {
        use GgufValue as V;
        use GgufValueType as T;
        Ok(match ty {
            T::U8 => V::U8(u8::from_le_bytes(self.array(what)?)),
            T::I8 => V::I8(i8::from_le_bytes(self.array(what)?)),
            T::U16 => V::U16(u16::from_le_bytes(self.array(what)?)),
            T::I16 => V::I16(i16::from_le_bytes(self.array(what)?)),
            T::U32 => V::U32(u32::from_le_bytes(self.array(what)?)),
            T::I32 => V::I32(i32::from_le_bytes(self.array(what)?)),
            T::F32 => V::F32(f32::from_le_bytes(self.array(what)?)),
            T::U64 => V::U64(u64::from_le_bytes(self.array(what)?)),
            T::I64 => V::I64(i64::from_le_bytes(self.array(what)?)),
            T::F64 => V::F64(f64::from_le_bytes(self.array(what)?)),
            T::Bool => V::Bool(Self::bool(self.array::<1>(what)?[0], what)?),
            T::String => V::String(self.string(what)?),
            T::Array => V::Array(self.array_value(what, 0)?),
        })
    }

    fn array_value(&mut self, what: &dyn fmt::Display, depth: usize) -> ParseResult<GgufArray> {
        use GgufArray as A;
        use GgufValueType as T;
        if depth >= MAX_ARRAY_DEPTH {
            return Err(format!(
                "{what}: arrays nested deeper than {MAX_ARRAY_DEPTH}"
            ));
        }
        let elem = self.value_type(&format_args!("element type of {what}"))?;
        let n = self.count(elem.min_size(), &format_args!("array {what}"))?;
        Ok(match elem {
            T::U8 => A::U8(self.fixed(n, what, u8::from_le_bytes)?),
            T::I8 => A::I8(self.fixed(n, what, i8::from_le_bytes)?),
            T::U16 => A::U16(self.fixed(n, what, u16::from_le_bytes)?),
            T::I16 => A::I16(self.fixed(n, what, i16::from_le_bytes)?),
            T::U32 => A::U32(self.fixed(n, what, u32::from_le_bytes)?),
            T::I32 => A::I32(self.fixed(n, what, i32::from_le_bytes)?),
            T::F32 => A::F32(self.fixed(n, what, f32::from_le_bytes)?),
            T::U64 => A::U64(self.fixed(n, what, u64::from_le_bytes)?),
            T::I64 => A::I64(self.fixed(n, what, i64::from_le_bytes)?),
            T::F64 => A::F64(self.fixed(n, what, f64::from_le_bytes)?),
            T::Bool => {
                let raw: Vec<[u8; 1]> = self.fixed(n, what, |b| b)?;
                A::Bool(
                    raw.iter()
                        .map(|b| Self::bool(b[0], what))
                        .collect::<ParseResult<_>>()?,
                )
            }
            T::String => {
                let mut v = Vec::with_capacity(n);
                for i in 0..n {
                    v.push(self.string(&format_args!("{what}[{i}]"))?);
                }
                A::String(v)
            }
            T::Array => {
                let mut v = Vec::with_capacity(n);
                for i in 0..n {
                    v.push(self.array_value(&format_args!("{what}[{i}]"), depth + 1)?);
                }
                A::Array(v)
            }
        })
    }
}

/// Parses and validates the header, metadata and tensor table of a GGUF image.
fn parse(buf: &[u8]) -> ParseResult<Parsed> {
    if buf.len() < HEADER_LEN {
        return Err(format!(
            "file is {} bytes, shorter than the {HEADER_LEN}-byte GGUF header",
            buf.len()
        ));
    }
    let mut r = Reader { buf, pos: 0 };
    let magic = r.array::<4>(&"magic")?;
    if magic != GGUF_MAGIC {
        return Err(format!(
            "bad magic {:?} (expected \"GGUF\"); is this a GGUF model file?",
            String::from_utf8_lossy(&magic)
        ));
    }
    let version = r.u32(&"version")?;
    match version {
        2 | 3 => {}
        1 => {
            return Err(
                "GGUF version 1 is not supported (convert it with a newer llama.cpp)".into(),
            );
        }
        v if v.swap_bytes() <= 3 => {
            return Err(format!(
                "version {v}: a big-endian GGUF, which Lamina does not read"
            ));
        }
        v => {
            return Err(format!(
                "unsupported GGUF version {v} (Lamina reads 2 and 3)"
            ));
        }
    }
    let n_tensors = r.u64(&"tensor count")?;
    let n_kv = r.u64(&"metadata count")?;
    // Smallest encodings: a kv takes 13 bytes (empty key, type, u8), a tensor
    // info 32 (empty name, n_dims, one dim, type, offset).
    let need = u128::from(n_kv) * 13 + u128::from(n_tensors) * 32;
    if need > r.remaining() as u128 {
        return Err(format!(
            "header claims {n_kv} metadata entries and {n_tensors} tensors, \
             which cannot fit in the {} bytes that follow (truncated or corrupt)",
            r.remaining()
        ));
    }
    // Both counts are now bounded by the file length, hence fit usize.
    let (n_kv, n_tensors) = (n_kv as usize, n_tensors as usize);

    let mut metadata: Vec<(String, GgufValue)> = Vec::with_capacity(n_kv);
    let mut seen = HashMap::with_capacity(n_kv);
    for i in 0..n_kv {
        let key = r.string(&format_args!("key of metadata entry {i}"))?;
        let ty = r.value_type(&format_args!("type of `{key}`"))?;
        let value = r.value(ty, &format_args!("`{key}`"))?;
        if seen.insert(key.clone(), i).is_some() {
            return Err(format!("duplicate metadata key `{key}`"));
        }
        metadata.push((key, value));
    }

    let alignment = match seen.get("general.alignment").map(|&i| &metadata[i].1) {
        None => DEFAULT_ALIGNMENT,
        Some(GgufValue::U32(a)) if a.is_power_of_two() => *a as usize,
        Some(v) => {
            return Err(format!(
                "general.alignment = {v} is not a power of two stored as u32"
            ));
        }
    };

    let mut tensors = Vec::with_capacity(n_tensors);
    let mut names = HashMap::with_capacity(n_tensors);
    for i in 0..n_tensors {
        let name = r.string(&format_args!("name of tensor {i}"))?;
        let what = format!("tensor `{name}`");
        let n_dims = r.u32(&format_args!("dimension count of {what}"))? as usize;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(format!(
                "{what} has {n_dims} dimensions (1 to {MAX_DIMS} allowed)"
            ));
        }
        let mut ne = Vec::with_capacity(n_dims);
        for _ in 0..n_dims {
            ne.push(r.u64(&format_args!("dims of {what}"))?);
        }
        let ggml_type = r.u32(&format_args!("type of {what}"))?;
        let offset = r.u64(&format_args!("offset of {what}"))?;
        let n_bytes = tensor_bytes(&ne, ggml_type).map_err(|m| format!("{what}: {m}"))?;
        if !offset.is_multiple_of(alignment as u64) {
            return Err(format!(
                "{what}: offset {offset} is not a multiple of the alignment {alignment}"
            ));
        }
        if names.insert(name.clone(), i).is_some() {
            return Err(format!("duplicate tensor name `{name}`"));
        }
        tensors.push(GgufTensorInfo {
            name,
            ne,
            ggml_type,
            offset,
            n_bytes,
        });
    }

    let data_offset = r.pos.next_multiple_of(alignment);
    let file_len = buf.len() as u64;
    for t in &tensors {
        // data_offset may exceed the file only when there is no tensor data at all.
        let start = (data_offset as u64).saturating_add(t.offset);
        let end = start.saturating_add(t.n_bytes.unwrap_or(0) as u64);
        if end > file_len {
            return Err(format!(
                "tensor `{}` ({}, {} bytes) spans file bytes {start}..{end}, past the end at {file_len}",
                t.name,
                ggml_type_name(t.ggml_type),
                t.n_bytes.map_or("?".to_string(), |b| b.to_string()),
            ));
        }
    }
    Ok(Parsed {
        version,
        alignment,
        data_offset,
        metadata,
        tensors,
    })
}

/// Byte size of a tensor, with its dims checked; `Ok(None)` for unknown types.
fn tensor_bytes(ne: &[u64], ggml_type: u32) -> ParseResult<Option<usize>> {
    let numel = ne
        .iter()
        .try_fold(1usize, |acc, &d| {
            usize::try_from(d).ok().and_then(|d| acc.checked_mul(d))
        })
        .filter(|&n| i64::try_from(n).is_ok())
        .ok_or_else(|| format!("dims {ne:?} overflow"))?;
    let Some((block, block_bytes)) = ggml_type_layout(ggml_type) else {
        return Ok(None);
    };
    if !ne[0].is_multiple_of(block as u64) {
        return Err(format!(
            "row length {} is not a multiple of the {} block size {block}",
            ne[0],
            ggml_type_name(ggml_type)
        ));
    }
    (numel / block)
        .checked_mul(block_bytes)
        .map(Some)
        .ok_or_else(|| format!("dims {ne:?} overflow"))
}

#[cfg(test)]
mod tests {
    use super::writer::GgufWriter;
    use super::*;

    fn sample() -> Vec<u8> {
        let mut w = GgufWriter::new();
        w.kv("general.architecture", "llama".into())
            .kv("n", GgufValue::I32(7))
            .kv("neg", GgufValue::I32(-1))
            .kv("big", GgufValue::U64(1 << 40))
            .kv("f", GgufValue::F64(0.5))
            .kv("b", GgufValue::Bool(true))
            .kv("toks", vec!["a".to_string(), "bc".to_string()].into())
            .kv("ids", GgufValue::Array(GgufArray::U8(vec![1, 2, 3])))
            .kv(
                "nested",
                GgufValue::Array(GgufArray::Array(vec![GgufArray::F32(vec![1.0])])),
            );
        w.tensor_f32("v", &[3], &[1.0, 2.0, 3.0]);
        w.tensor("q", &[2, 32], 3, vec![0u8; 40]);
        w.tensor("odd", &[4], 99, vec![0u8; 7]);
        w.to_bytes()
    }

    #[test]
    fn round_trip() {
        let g = GgufFile::from_bytes("mem", &sample()).unwrap();
        assert_eq!(g.version(), 3);
        assert_eq!(g.get_str("general.architecture").unwrap(), Some("llama"));
        assert_eq!(g.get_u32("n").unwrap(), Some(7));
        assert!(g.get_u32("neg").is_err());
        assert!(g.get_u32("big").is_err());
        assert_eq!(g.get_u64("big").unwrap(), Some(1 << 40));
        assert_eq!(g.get_f32("f").unwrap(), Some(0.5));
        assert_eq!(g.get_bool("b").unwrap(), Some(true));
        assert_eq!(g.get_bool("missing").unwrap(), None);
        assert_eq!(g.get_str_array("toks").unwrap().unwrap(), ["a", "bc"]);
        assert_eq!(g.get_i32_array("ids").unwrap().unwrap(), [1, 2, 3]);
        assert!(g.get_f32_array("ids").is_err());
        assert!(matches!(
            g.get("nested"),
            Some(GgufValue::Array(GgufArray::Array(_)))
        ));

        let v = g.tensor("v").unwrap();
        assert_eq!(v.shape, [3]);
        assert_eq!(v.to_f32().unwrap(), [1.0, 2.0, 3.0]);
        let q = g.tensor("q").unwrap();
        assert_eq!((q.shape.clone(), q.dtype), (vec![2, 32], HostDType::Q4_1));
        assert_eq!(q.data.as_slice().len(), 40);
        // Unknown types are listed, but fail (by name) when used.
        let odd = g.tensor_info("odd").unwrap();
        assert_eq!(
            (odd.type_name().as_str(), odd.n_bytes),
            ("unknown(99)", None)
        );
        assert!(g.tensor("odd").is_none());
        let err = g.load_tensor("odd").unwrap_err().to_string();
        assert!(err.contains("odd") && err.contains("unknown(99)"), "{err}");
        assert!(g.load_tensor("nope").is_err());
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = sample();
        let full = GgufFile::from_bytes("mem", &bytes).unwrap();
        // Cutting anywhere before the end of the last known-size tensor must fail.
        let needed = full.data_offset() + 32 + 40; // "v" padded to 32, then "q"
        for cut in 0..needed {
            assert!(
                GgufFile::from_bytes("mem", &bytes[..cut]).is_err(),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn corrupt_counts_and_types() {
        let good = sample();
        let patch = |at: usize, b: &[u8]| {
            let mut v = good.clone();
            v[at..at + b.len()].copy_from_slice(b);
            GgufFile::from_bytes("mem", &v).unwrap_err().to_string()
        };
        assert!(patch(0, b"GGUX").contains("magic"));
        assert!(patch(4, &1u32.to_le_bytes()).contains("version 1"));
        assert!(patch(4, &(3u32 << 24).to_le_bytes()).contains("big-endian"));
        assert!(patch(8, &u64::MAX.to_le_bytes()).contains("cannot fit"));
        assert!(patch(16, &(1u64 << 40).to_le_bytes()).contains("cannot fit"));
        // First key's length (offset 24) set absurd.
        assert!(patch(24, &u64::MAX.to_le_bytes()).contains("remain"));
        // First value's type tag: key "general.architecture" is 20 bytes.
        assert!(patch(24 + 8 + 20, &77u32.to_le_bytes()).contains("unknown value type"));
    }

    #[test]
    fn nesting_is_bounded() {
        // An array of arrays of arrays... deeper than the limit.
        let mut a = GgufArray::U8(vec![]);
        for _ in 0..MAX_ARRAY_DEPTH + 1 {
            a = GgufArray::Array(vec![a]);
        }
        let mut w = GgufWriter::new();
        w.kv("deep", GgufValue::Array(a));
        let err = GgufFile::from_bytes("mem", &w.to_bytes())
            .unwrap_err()
            .to_string();
        assert!(err.contains("nested"), "{err}");
    }

    #[test]
    fn alignment_and_offsets() {
        let mut w = GgufWriter::new();
        w.kv("general.alignment", GgufValue::U32(64));
        w.tensor_f32("a", &[1], &[5.0])
            .tensor_f32("b", &[2], &[6.0, 7.0]);
        let bytes = w.to_bytes();
        let g = GgufFile::from_bytes("mem", &bytes).unwrap();
        assert_eq!(g.alignment(), 64);
        assert_eq!(g.data_offset() % 64, 0);
        assert_eq!(g.tensor_info("b").unwrap().offset, 64);
        assert_eq!(g.tensor("b").unwrap().to_f32().unwrap(), [6.0, 7.0]);

        let mut w = GgufWriter::new();
        w.kv("general.alignment", GgufValue::U32(48));
        let err = GgufFile::from_bytes("mem", &w.to_bytes())
            .unwrap_err()
            .to_string();
        assert!(err.contains("power of two"), "{err}");
    }
}
