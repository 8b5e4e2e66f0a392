//! A checkpoint's tensors on the host, in the encoding they were stored in.
//!
//! A [`HostTensor`] keeps the checkpoint's own encoding (f32, f16, bf16 or a
//! GGUF block format) so that quantized weights reach the GPU at their packed
//! size. Shapes are row-major `[rows, cols]` in the math sense: a linear layer
//! `y = W x` with `x: [cols]` has `W: [out = rows, in = cols]` (GGUF lists
//! dims innermost first, so its `[ne0, ne1]` is our `[ne1, ne0]`).

use std::sync::Arc;

use lamina_engine::weight::{MixedData, MixedLayout};

use crate::{ModelError, Result};

/// Element encoding of a host tensor. GGUF block formats quantize along the
/// row (the `cols` / input dimension), in blocks of 32.
// Variants carry ggml's type names (Q4_K, IQ4_XS), as users read them.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HostDType {
    F32,
    F16,
    BF16,
    /// ggml Q4_0: per 32 values one f16 scale d, 16 bytes of 4-bit codes; x = d * (q - 8).
    Q4_0,
    /// ggml Q4_1: per 32 values f16 scale d and f16 min m, 16 bytes of codes; x = d * q + m.
    Q4_1,
    /// ggml Q8_0: per 32 values one f16 scale d, 32 signed bytes; x = d * q.
    Q8_0,
    /// ggml Q5_0: per 32 values f16 d, 32 high bits, 16 bytes of low nibbles; x = d * (q - 16).
    Q5_0,
    /// ggml Q5_1: per 32 values f16 d and m, 32 high bits, 16 bytes of nibbles; x = d * q + m.
    Q5_1,
    /// ggml Q2_K: 256-value super-blocks, 16 sub-blocks of 16 with 4-bit scale and min.
    Q2_K,
    /// ggml Q3_K: 256-value super-blocks, 16 sub-blocks of 16 with 6-bit signed scales.
    Q3_K,
    /// ggml Q4_K: 256-value super-blocks, 8 sub-blocks of 32 with 6-bit scale and min.
    Q4_K,
    /// ggml Q5_K: as Q4_K with a fifth code bit.
    Q5_K,
    /// ggml Q6_K: 256-value super-blocks, 16 sub-blocks of 16 with i8 scales.
    Q6_K,
    /// ggml IQ4_NL: per 32 values f16 d and 4-bit indexes into a fixed non-linear table.
    IQ4_NL,
    /// ggml IQ4_XS: IQ4_NL's table in 256-value super-blocks with 6-bit sub-block scales.
    IQ4_XS,
    /// Lamina's mixed-width groups (SliM-LLM): the tensor's
    /// [`HostTensor::mixed`] holds the layout, codes, scales and mins.
    Mixed,
}

impl HostDType {
    /// Every format, in the order the names list them.
    pub const ALL: [HostDType; 16] = [
        HostDType::F32,
        HostDType::F16,
        HostDType::BF16,
        HostDType::Q4_0,
        HostDType::Q4_1,
        HostDType::Q8_0,
        HostDType::Q5_0,
        HostDType::Q5_1,
        HostDType::Q2_K,
        HostDType::Q3_K,
        HostDType::Q4_K,
        HostDType::Q5_K,
        HostDType::Q6_K,
        HostDType::IQ4_NL,
        HostDType::IQ4_XS,
        HostDType::Mixed,
    ];

    /// The format's name in files and on the command line (`q4_1`, `f16`,
    /// ...): llama.cpp's type name in lower case, and `mixed`.
    pub fn name(self) -> &'static str {
        match self {
            HostDType::F32 => "f32",
            HostDType::F16 => "f16",
            HostDType::BF16 => "bf16",
            HostDType::Q4_0 => "q4_0",
            HostDType::Q4_1 => "q4_1",
            HostDType::Q8_0 => "q8_0",
            HostDType::Q5_0 => "q5_0",
            HostDType::Q5_1 => "q5_1",
            HostDType::Q2_K => "q2_k",
            HostDType::Q3_K => "q3_k",
            HostDType::Q4_K => "q4_k",
            HostDType::Q5_K => "q5_k",
            HostDType::Q6_K => "q6_k",
            HostDType::IQ4_NL => "iq4_nl",
            HostDType::IQ4_XS => "iq4_xs",
            HostDType::Mixed => "mixed",
        }
    }

    /// Bytes of one block of [`block_size`](Self::block_size) elements
    /// (ggml's layout, [`super::ggml::ggml_type_layout`]); `None` for Mixed,
    /// whose size depends on its group widths (see `MixedLayout::row_words`).
    pub fn block_bytes(self) -> Option<usize> {
        let (_, bytes) = super::ggml::ggml_type_layout(super::ggml::ggml_type_of(self)?)?;
        Some(bytes)
    }

    /// Bytes taken by `n` elements (n a multiple of the block size for block
    /// formats; 0 for Mixed).
    pub fn bytes_for(self, n: usize) -> usize {
        n / self.block_size() * self.block_bytes().unwrap_or(0)
    }

    /// Exact byte length of `n` elements; `None` when `n` is not a whole
    /// number of blocks, the size overflows, or the format is Mixed.
    pub fn byte_len(self, n: usize) -> Option<usize> {
        let block = self.block_size();
        if !n.is_multiple_of(block) {
            return None;
        }
        (n / block).checked_mul(self.block_bytes()?)
    }
    /// Elements per block: 1 for the plain float formats, 32 for the
    /// llama.cpp block formats and Mixed's chunks.
    pub fn block_size(self) -> usize {
        super::ggml::ggml_type_of(self)
            .and_then(super::ggml::ggml_type_layout)
            .map_or(32, |(elements, _)| elements)
    }
}

impl std::fmt::Display for HostDType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for HostDType {
    type Err = ModelError;
    /// Parses a [`name`](HostDType::name), in any case.
    fn from_str(s: &str) -> Result<Self> {
        HostDType::ALL
            .into_iter()
            .find(|d| d.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                let names: Vec<&str> = HostDType::ALL.iter().map(|d| d.name()).collect();
                ModelError::Input(format!(
                    "unknown weight format `{s}` ({})",
                    names.join(", ")
                ))
            })
    }
}

/// Raw bytes of a tensor: borrowed from a memory map (an owned whole-file
/// copy on wasm32), or owned.
#[derive(Clone)]
pub enum Bytes {
    Mapped {
        map: Arc<super::filemap::FileMap>,
        offset: usize,
        len: usize,
    },
    Owned(Arc<Vec<u8>>),
}

impl Bytes {
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Mapped { map, offset, len } => &map[*offset..*offset + *len],
            Bytes::Owned(v) => v,
        }
    }
}

impl std::fmt::Debug for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bytes({} bytes)", self.as_slice().len())
    }
}

#[derive(Debug, Clone)]
pub struct HostTensor {
    pub name: String,
    /// Row-major shape, outermost first: `[rows, cols]` for matrices, `[n]` for vectors.
    pub shape: Vec<usize>,
    pub dtype: HostDType,
    /// The encoded values (empty for Mixed, whose parts are in `mixed`).
    pub data: Bytes,
    /// Mixed only.
    pub mixed: Option<Arc<MixedTensor>>,
}

/// A Mixed weight on the host: group widths, and per row the codes (as
/// `lamina_engine::weight` lays them out) and f16 scale and min bits.
#[derive(Debug, Clone, PartialEq)]
pub struct MixedTensor {
    pub layout: Arc<MixedLayout>,
    pub codes: Vec<u32>,
    pub scales: Vec<u16>,
    pub mins: Vec<u16>,
}

impl MixedTensor {
    pub fn data(&self) -> MixedData<'_> {
        MixedData {
            layout: &self.layout,
            codes: &self.codes,
            scales: &self.scales,
            mins: &self.mins,
        }
    }
    /// Bytes of codes, scales and mins.
    pub fn bytes(&self) -> usize {
        4 * self.codes.len() + 2 * (self.scales.len() + self.mins.len())
    }
}

impl HostTensor {
    /// An f32 tensor owning `values` (row-major, `shape`'s product of them).
    pub fn from_f32(name: &str, shape: Vec<usize>, values: &[f32]) -> HostTensor {
        debug_assert_eq!(values.len(), shape.iter().product::<usize>());
        HostTensor {
            name: name.to_string(),
            shape,
            dtype: HostDType::F32,
            data: Bytes::Owned(Arc::new(bytemuck::cast_slice(values).to_vec())),
            mixed: None,
        }
    }
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn rows(&self) -> usize {
        if self.shape.len() < 2 {
            1
        } else {
            self.shape[..self.shape.len() - 1].iter().product()
        }
    }
    pub fn cols(&self) -> usize {
        *self.shape.last().unwrap_or(&1)
    }
    /// Dequantizes / converts to f32, row-major.
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        if let Some(m) = &self.mixed {
            let rows = self.rows() as u32;
            let packed = lamina_engine::weight::pack_mixed(rows, &m.data())
                .map_err(|e| ModelError::Invalid(format!("{}: {e}", self.name)))?;
            return Ok(lamina_engine::weight::dequantize_packed(&packed));
        }
        super::ggml::dequantize(self.dtype, self.data.as_slice(), self.numel())
    }
    /// Checks the shape against the one the config gives.
    pub fn check_shape(&self, want: &[usize]) -> Result<()> {
        if self.shape != want {
            return Err(ModelError::Invalid(format!(
                "tensor `{}` has shape {:?}, expected {:?} from the config",
                self.name, self.shape, want
            )));
        }
        Ok(())
    }
    /// The matrices' rows one after another, as one matrix `name` in their
    /// encoding: `None` unless all are matrices of the same width and type
    /// (Mixed: the same group widths). Every encoding here stores rows
    /// whole and in order, so this is their bytes (codes, scales, mins)
    /// appended.
    pub fn concat_rows(name: &str, parts: &[&HostTensor]) -> Option<HostTensor> {
        let first = parts.first()?;
        let same = parts.iter().all(|t| {
            t.shape.len() == 2
                && t.cols() == first.cols()
                && t.dtype == first.dtype
                && match (&t.mixed, &first.mixed) {
                    (Some(a), Some(b)) => a.layout == b.layout,
                    (None, None) => true,
                    _ => false,
                }
        });
        if !same {
            return None;
        }
        let rows = parts.iter().map(|t| t.rows()).sum();
        let mixed = match &first.mixed {
            Some(m) => {
                let cat = |f: &dyn Fn(&MixedTensor) -> &[u16]| -> Vec<u16> {
                    parts
                        .iter()
                        .flat_map(|t| t.mixed.as_deref().map_or(&[][..], f).iter().copied())
                        .collect()
                };
                Some(Arc::new(MixedTensor {
                    layout: m.layout.clone(),
                    codes: parts
                        .iter()
                        .flat_map(|t| t.mixed.as_deref().map_or(&[][..], |m| &m.codes[..]))
                        .copied()
                        .collect(),
                    scales: cat(&|m| &m.scales[..]),
                    mins: cat(&|m| &m.mins[..]),
                }))
            }
            None => None,
        };
        let data: Vec<u8> = parts
            .iter()
            .flat_map(|t| t.data.as_slice().iter().copied())
            .collect();
        Some(HostTensor {
            name: name.to_string(),
            shape: vec![rows, first.cols()],
            dtype: first.dtype,
            data: Bytes::Owned(Arc::new(data)),
            mixed,
        })
    }
    /// Encoded size in bytes.
    pub fn byte_size(&self) -> usize {
        match &self.mixed {
            Some(m) => m.bytes(),
            None => self.data.as_slice().len(),
        }
    }
}
