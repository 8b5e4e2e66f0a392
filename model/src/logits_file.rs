//! Saved reference logits for KL divergence (`lamina perplexity
//! --save-logits`, read back by `--kl-base FILE`), so that the
//! full-precision model runs once for a whole table of quantized models.
//!
//! Layout, little-endian: the 8-byte magic `LMNLGT01`, then `vocab`, `ctx`,
//! `first` (the first scored position of a chunk) and `chunks` as u32; then
//! per chunk a u64 FNV-1a hash of the chunk's tokens (after the BOS
//! substitution) and the logits of positions `first .. ctx - 1` as f32,
//! `(ctx - 1 - first) * vocab` of them. The logits are stored unrounded so
//! that a model compared with the run that saved them scores a KL of
//! exactly 0. The file is written under a temporary name and renamed once
//! the last chunk is in.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::{ModelError, Result};

const MAGIC: &[u8; 8] = b"LMNLGT01";
const HEADER: u64 = 8 + 4 * 4;

/// FNV-1a over the token ids of one chunk.
pub fn chunk_hash(tokens: &[u32]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for t in tokens {
        for b in t.to_le_bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// Whether `path` starts with the saved-logits magic.
pub fn is_logits_file(path: &Path) -> bool {
    let mut m = [0u8; 8];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut m))
        .is_ok_and(|_| &m == MAGIC)
}

/// The shape every chunk of a file has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogitsShape {
    pub vocab: usize,
    pub ctx: usize,
    pub first: usize,
}

impl LogitsShape {
    /// Scored rows per chunk.
    pub fn rows(&self) -> usize {
        self.ctx - 1 - self.first
    }
    fn chunk_bytes(&self) -> u64 {
        8 + 4 * (self.rows() * self.vocab) as u64
    }
}

/// Writes a saved-logits file; dropped before [`Self::finish`], it removes
/// its partial file.
pub struct LogitsWriter {
    out: Option<BufWriter<File>>,
    tmp: PathBuf,
    path: PathBuf,
    shape: LogitsShape,
    chunks: u32,
}

impl LogitsWriter {
    /// Starts `path` (written as `path.partial` until [`Self::finish`]).
    pub fn create(path: &Path, shape: LogitsShape) -> Result<Self> {
        if shape.first + 1 >= shape.ctx || shape.vocab == 0 {
            return Err(ModelError::Input(format!(
                "no scored rows in a chunk of {} from position {}",
                shape.ctx, shape.first
            )));
        }
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".partial");
        let tmp = PathBuf::from(tmp);
        let f = File::create(&tmp).map_err(|e| ModelError::io(&tmp, e))?;
        let mut w = LogitsWriter {
            out: Some(BufWriter::with_capacity(1 << 20, f)),
            tmp,
            path: path.to_path_buf(),
            shape,
            chunks: 0,
        };
        w.header()?;
        Ok(w)
    }

    fn header(&mut self) -> Result<()> {
        let s = self.shape;
        let mut h = MAGIC.to_vec();
        for v in [s.vocab as u32, s.ctx as u32, s.first as u32, self.chunks] {
            h.extend_from_slice(&v.to_le_bytes());
        }
        self.writer()?
            .write_all(&h)
            .map_err(|e| ModelError::io(&self.tmp, e))
    }

    fn writer(&mut self) -> Result<&mut BufWriter<File>> {
        self.out
            .as_mut()
            .ok_or_else(|| ModelError::Input("the logits file is already finished".into()))
    }

    /// Appends one chunk: its tokens' hash and its scored rows' logits.
    pub fn push(&mut self, hash: u64, rows: &[f32]) -> Result<()> {
        if rows.len() != self.shape.rows() * self.shape.vocab {
            return Err(ModelError::Input(format!(
                "a chunk has {} logits, the file {} per chunk",
                rows.len(),
                self.shape.rows() * self.shape.vocab
            )));
        }
        let tmp = self.tmp.clone();
        let out = self.writer()?;
        out.write_all(&hash.to_le_bytes())
            .and_then(|_| out.write_all(bytemuck::cast_slice(rows)))
            .map_err(|e| ModelError::io(&tmp, e))?;
        self.chunks += 1;
        Ok(())
    }

    /// Writes the chunk count and renames the file into place.
    pub fn finish(mut self) -> Result<PathBuf> {
        let tmp = self.tmp.clone();
        self.writer()?
            .seek(SeekFrom::Start(0))
            .map_err(|e| ModelError::io(&tmp, e))?;
        self.header()?;
        let out = self.out.take().expect("checked by header()");
        let f = out
            .into_inner()
            .map_err(|e| ModelError::io(&tmp, e.into_error()))?;
        f.sync_all().map_err(|e| ModelError::io(&tmp, e))?;
        // Closed before the rename (on wasm32 File has no Drop: nothing to close).
        #[cfg_attr(target_arch = "wasm32", allow(clippy::drop_non_drop))]
        drop(f);
        std::fs::rename(&tmp, &self.path).map_err(|e| ModelError::io(&self.path, e))?;
        Ok(self.path.clone())
    }
}

impl Drop for LogitsWriter {
    fn drop(&mut self) {
        if self.out.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

pub struct LogitsReader {
    input: BufReader<File>,
    path: PathBuf,
    pub shape: LogitsShape,
    pub chunks: usize,
    next: usize,
}

impl LogitsReader {
    pub fn open(path: &Path) -> Result<Self> {
        let bad = |msg: String| ModelError::Checkpoint {
            path: path.to_path_buf(),
            msg,
        };
        let f = File::open(path).map_err(|e| ModelError::io(path, e))?;
        let len = f.metadata().map_err(|e| ModelError::io(path, e))?.len();
        let mut input = BufReader::with_capacity(1 << 20, f);
        let mut h = [0u8; HEADER as usize];
        input
            .read_exact(&mut h)
            .map_err(|_| bad("not a saved-logits file (too short)".into()))?;
        if &h[..8] != MAGIC {
            return Err(bad("not a saved-logits file (bad magic)".into()));
        }
        let u =
            |i: usize| u32::from_le_bytes(h[8 + 4 * i..12 + 4 * i].try_into().unwrap()) as usize;
        let shape = LogitsShape {
            vocab: u(0),
            ctx: u(1),
            first: u(2),
        };
        let chunks = u(3);
        if shape.vocab == 0 || shape.first + 1 >= shape.ctx {
            return Err(bad(format!("bad shape {shape:?}")));
        }
        let want = HEADER + chunks as u64 * shape.chunk_bytes();
        if len != want {
            return Err(bad(format!(
                "{len} bytes, but the header's {chunks} chunks of {} rows x {} need {want}",
                shape.rows(),
                shape.vocab
            )));
        }
        Ok(LogitsReader {
            input,
            path: path.to_path_buf(),
            shape,
            chunks,
            next: 0,
        })
    }

    /// Reads the next chunk into `rows`, checking that it was made from the
    /// same tokens (`hash`).
    pub fn next_chunk(&mut self, hash: u64, rows: &mut Vec<f32>) -> Result<()> {
        let bad = |msg: String| ModelError::Checkpoint {
            path: self.path.clone(),
            msg,
        };
        if self.next >= self.chunks {
            return Err(bad(format!(
                "holds {} chunks; run the base with at least as many",
                self.chunks
            )));
        }
        let mut hb = [0u8; 8];
        self.input
            .read_exact(&mut hb)
            .map_err(|e| ModelError::io(&self.path, e))?;
        if u64::from_le_bytes(hb) != hash {
            return Err(bad(format!(
                "chunk {} was saved from different tokens (another text, tokenizer or context)",
                self.next
            )));
        }
        rows.resize(self.shape.rows() * self.shape.vocab, 0.0);
        self.input
            .read_exact(bytemuck::cast_slice_mut(rows))
            .map_err(|e| ModelError::io(&self.path, e))?;
        self.next += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_checks() {
        let dir = std::env::temp_dir().join(format!("lamina-logits-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("base.logits");
        let shape = LogitsShape {
            vocab: 5,
            ctx: 6,
            first: 3,
        };
        let mut w = LogitsWriter::create(&p, shape).unwrap();
        assert!(!p.exists(), "only the partial file exists before finish");
        let rows: Vec<f32> = (0..10).map(|i| i as f32 * 0.5 - 1.0).collect();
        w.push(chunk_hash(&[1, 2, 3]), &rows).unwrap();
        w.push(
            chunk_hash(&[4, 5, 6]),
            &rows[..10].iter().map(|x| -x).collect::<Vec<_>>(),
        )
        .unwrap();
        assert!(w.push(0, &rows[..9]).is_err());
        w.finish().unwrap();
        let q = dir.join("dropped.logits");
        drop(LogitsWriter::create(&q, shape).unwrap());
        assert!(!q.exists() && !dir.join("dropped.logits.partial").exists());
        assert!(is_logits_file(&p));

        let mut r = LogitsReader::open(&p).unwrap();
        assert_eq!((r.shape, r.chunks), (shape, 2));
        let mut got = Vec::new();
        r.next_chunk(chunk_hash(&[1, 2, 3]), &mut got).unwrap();
        assert_eq!(got, rows);
        let e = r.next_chunk(chunk_hash(&[4, 5, 7]), &mut got).unwrap_err();
        assert!(e.to_string().contains("different tokens"), "{e}");

        // A truncated file is refused up front.
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 4]).unwrap();
        assert!(LogitsReader::open(&p).is_err());
        std::fs::write(&p, b"GGUF....").unwrap();
        assert!(!is_logits_file(&p));
        std::fs::remove_dir_all(&dir).ok();
    }
}
