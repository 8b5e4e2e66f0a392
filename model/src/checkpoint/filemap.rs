//! A whole model file's bytes, as the loaders (GGUF, safetensors) hold
//! them: memory-mapped natively; on wasm32, which has no memory maps, an
//! owned copy (`std::fs` fails in a browser anyway, so models come in as
//! bytes there).

use std::path::Path;
use std::sync::Arc;

use crate::{ModelError, Result};

#[cfg(not(target_arch = "wasm32"))]
pub type FileMap = memmap2::Mmap;
#[cfg(target_arch = "wasm32")]
pub type FileMap = Box<[u8]>;

/// Memory-maps a whole file read-only.
#[cfg(not(target_arch = "wasm32"))]
#[allow(unsafe_code)]
pub fn map_file(path: &Path) -> Result<Arc<FileMap>> {
    let file = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
    // SAFETY: the map is read-only and private to this process. Model files
    // are treated as immutable while open; if another process truncates or
    // rewrites the file meanwhile, reads may fault (SIGBUS) or see new bytes,
    // which is the documented hazard of mmap that every GGUF/safetensors
    // loader accepts. All offsets into the map are bounds-checked against its
    // length before use.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?;
    Ok(Arc::new(map))
}

/// Reads a whole file.
#[cfg(target_arch = "wasm32")]
pub fn map_file(path: &Path) -> Result<Arc<FileMap>> {
    let bytes = std::fs::read(path).map_err(|e| ModelError::io(path, e))?;
    Ok(Arc::new(bytes.into_boxed_slice()))
}

/// A copy of `bytes` held as a file's are (`path` names it in errors): an
/// anonymous read-only map natively, an owned copy on wasm32.
#[cfg(not(target_arch = "wasm32"))]
pub fn copy_bytes(path: &Path, bytes: &[u8]) -> Result<Arc<FileMap>> {
    let io = |e| ModelError::io(path, e);
    let mut anon = memmap2::MmapMut::map_anon(bytes.len()).map_err(io)?;
    anon.copy_from_slice(bytes);
    Ok(Arc::new(anon.make_read_only().map_err(io)?))
}

/// A copy of `bytes` held as a file's are.
#[cfg(target_arch = "wasm32")]
pub fn copy_bytes(_path: &Path, bytes: &[u8]) -> Result<Arc<FileMap>> {
    Ok(Arc::new(bytes.into()))
}

/// `bytes`, owned, held as a file's are: on wasm32 the vector itself (no
/// copy: a model picked in a browser page exists once in its memory);
/// natively a copy into an anonymous map.
pub fn own_bytes(path: &Path, bytes: Vec<u8>) -> Result<Arc<FileMap>> {
    #[cfg(target_arch = "wasm32")]
    {
        let _ = path;
        Ok(Arc::new(bytes.into_boxed_slice()))
    }
    #[cfg(not(target_arch = "wasm32"))]
    copy_bytes(path, &bytes)
}
