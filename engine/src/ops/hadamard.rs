//! The online Hadamard transform of QuaRot (Ashkboos et al. 2024, arXiv
//! 2404.00456) and PrefixQuant (arXiv 2410.05265): each consecutive
//! `n`-element chunk of a row becomes `y = H_n x / sqrt(n)`, an orthonormal
//! rotation that spreads outlier channels across the chunk before
//! activations are quantized (its transpose is folded into the next weight).
//!
//! # The matrix
//! `n = K * P` with `P` a power of two and `K` one of [`CORE_SIZES`], and
//! `H_n = H_K ⊗ H_P`: element `i = a * P + b` (`a < K`, `b < P`) of a chunk,
//! `H_n[aP + b, cP + d] = H_K[a, c] * H_P[b, d]`.
//! - `H_P` is Sylvester's: `H_P[b, d] = (-1)^popcount(b & d)`, symmetric,
//!   applied by the fast Walsh-Hadamard transform in `P log2 P` additions.
//! - `H_K` for K > 1 is built from the quadratic residues modulo a prime q
//!   (Paley 1933; `chi(x)` = 1 for a nonzero square mod q, -1 for a
//!   non-square, 0 for 0, and the Jacobsthal matrix `Q[i][j] = chi(j - i)`):
//!   * Paley I, q ≡ 3 (mod 4), K = q + 1: `Q` is skew, `S = [[0, 1ᵀ], [-1, Q]]`
//!     has `S Sᵀ = q I`, and `H_K = I + S`. Used for K = 12 (q = 11) and
//!     K = 20 (q = 19).
//!   * Paley II, q ≡ 1 (mod 4), K = 2(q + 1): `Q` is symmetric,
//!     `C = [[0, 1ᵀ], [1, Q]]` has `C Cᵀ = q I`, and `H_K` replaces each 0 of
//!     `C` by `[[1, -1], [-1, -1]]` and each ±1 by `±[[1, 1], [1, -1]]`.
//!     Used for K = 28 (q = 13) and K = 36 (q = 17).
//!
//!   Paley I matrices are not symmetric, so the inverse is the transpose:
//!   [`transform_transposed`].
//!
//! `K` is the smallest core size whose odd part is `n`'s, so n = 64, 2048,
//! 4096 are pure Sylvester (K = 1), 576 = 36 * 16, 1536 = 12 * 128,
//! 2560 = 20 * 128, 3584 = 28 * 128. Unsupported (None): any n whose odd
//! part is not 1, 3, 5, 7 or 9, or too small for its core (e.g. 6, 10):
//! 960 = 15 * 64, 5632 = 11 * 512, 11008 = 43 * 256.
//!
//! The CPU transform costs `n log2 P` for the P part plus `n K` for the K
//! part per chunk.
//!
//! # On the GPU
//! [`Hadamard`] transforms x in place. A workgroup loads a tile of at most
//! [`TILE`] floats into workgroup memory, runs the butterflies of the P
//! factor there, then mixes the K sub-blocks (each output is a ±1 sum of K
//! tile values) straight back to x. The signs of `H_K` travel as bits in
//! the parameter block, packed from [`core`], so Rust holds the one
//! definition. Chunks up to [`TILE`] take one pass, several small chunks
//! (head_dim 64) per workgroup. Larger chunks use `H_n = H_K ⊗ H_P1 ⊗ H_P2`
//! in two passes: [`Pass::Inner`] applies `H_P2` (P2 = min(P, TILE)) to each
//! contiguous P2-block, then [`Pass::Outer`] applies `H_K ⊗ H_P1` across
//! the blocks (stride P2), a tile holding several adjacent columns.
//!
//! # Shapes
//! x: [max_rows, width] f32, read-write, `width` a multiple of `n`; the
//! step's first `n_tokens` rows are transformed, each n-chunk on its own.

use crate::act::{ActBits, ActParams, ActScale, quantize_rows};
use crate::dispatch::{
    Binding, Call, CallTag, OpDef, PARAMS_BYTES, Step, TensorId, TensorInfo, check_bytes, grid1,
    write_params,
};
use crate::pipeline::Kernel;
use crate::shader::lib::ACTQ;
use crate::{Caps, EngineError, Result, ensure_shape};

crate::shader!(SHADER, "hadamard", [ACTQ], HadamardParams, [ActParams]);

/// Floats in a workgroup's tile: 16 KiB, WebGPU's default workgroup storage
/// (the WGSL `const TILE`, held equal by tests/tests/contracts.rs).
pub const TILE: u32 = 4096;
/// Invocations per workgroup (the WGSL `const WG`).
pub const WG: u32 = 256;
/// Elements a workgroup aims for when chunks are small: several chunks
/// share a tile, four elements per invocation.
const SMALL_TILE: u32 = 1024;
/// `vec4<u32>` words holding the bits of the largest `H_K`.
pub const SIGN_VEC4: usize = (MAX_CORE * MAX_CORE).div_ceil(128);

crate::params_struct! {
    /// Mirrors `Params` in shaders/hadamard.wgsl: one pass over a
    /// `[chunks, K * p, inner]` view of x, transforming the middle axis.
    pub struct HadamardParams {
        /// Chunks of `n` floats in this step.
        pub n_chunks: u32,
        /// Chunk length.
        pub n: u32,
        /// Core size of this pass (1: Sylvester only).
        pub k: u32,
        /// Sylvester size of this pass.
        pub p: u32,
        /// Distance between consecutive transformed elements.
        pub inner: u32,
        /// Adjacent columns (of `inner`) per tile.
        pub cols: u32,
        /// Chunks per tile (1 when `inner > 1`).
        pub per_wg: u32,
        /// Applied to every output: 1/sqrt(n) in the last pass, else 1.
        pub scale: f32,
        /// Bit `a * k + c` set where `M[a, c] = -1`, `M = H_K` or `H_Kᵀ`.
        pub signs: [[u32; 4]; SIGN_VEC4],
        /// [`HadamardQuant`] only: the codes' settings.
        pub act: ActParams,
    }
}

crate::passes! {
    /// The passes of [`Hadamard`]: `Outer` alone when a chunk fits a tile.
    pub enum Pass {
        /// `H_P2` on each contiguous P2-block of a chunk.
        Inner,
        /// `H_K ⊗ H_P1` across the P2-blocks, with the scale.
        Outer,
    }
}

/// `y = H_n x / sqrt(n)` (or `H_nᵀ`) on each n-chunk of x's rows, in place.
#[derive(Debug, Clone)]
pub struct Hadamard {
    /// [max_rows, width] f32, transformed in place.
    pub x: TensorId,
    /// Chunk length: see [`factor`].
    pub n: u32,
    /// Row length, a multiple of `n`.
    pub width: u32,
    /// Rows at the graph's largest step.
    pub max_rows: u32,
    /// Apply `H_nᵀ` (the inverse) instead of `H_n`.
    pub transposed: bool,
}

/// One pass: the factor `H_k ⊗ H_p` it applies and the tile shape
/// (fields as in [`HadamardParams`]).
#[derive(Debug, Clone, Copy)]
struct Axis {
    pass: Pass,
    /// The pass's chunk length: its `n` (the Inner pass counts P2-blocks).
    block: u32,
    k: u32,
    p: u32,
    inner: u32,
    cols: u32,
    per_wg: u32,
}

/// The passes for chunks of `n`, or None when `n` is unsupported or its K
/// part does not fit a tile.
fn axes(n: u32) -> Option<Vec<Axis>> {
    let (k, p) = factor(n as usize)?;
    let (k, p) = (k as u32, p as u32);
    if n <= TILE {
        let per_wg = (SMALL_TILE / n).max(1);
        let outer = Axis {
            pass: Pass::Outer,
            block: n,
            k,
            p,
            inner: 1,
            cols: 1,
            per_wg,
        };
        return Some(vec![outer]);
    }
    let p2 = p.min(TILE);
    let m = n / p2;
    if m > TILE {
        return None;
    }
    // Adjacent columns per tile: a power of two (so it divides p2).
    let cols = 1 << (TILE / m).ilog2();
    let inner = Axis {
        pass: Pass::Inner,
        block: p2,
        k: 1,
        p: p2,
        inner: 1,
        cols: 1,
        per_wg: 1,
    };
    let outer = Axis {
        pass: Pass::Outer,
        block: n,
        k,
        p: p / p2,
        inner: p2,
        cols: cols.min(p2),
        per_wg: 1,
    };
    Some(vec![inner, outer])
}

/// The sign bits of `H_K` (or `H_Kᵀ`) for the parameter block: bit
/// `a * k + c` of the words in order, set where the entry is -1.
fn sign_bits(k: usize, transposed: bool) -> [[u32; 4]; SIGN_VEC4] {
    let mut w = [[0u32; 4]; SIGN_VEC4];
    let h = core(k).unwrap_or_default();
    for a in 0..k {
        for c in 0..k {
            let s = if transposed {
                h[c * k + a]
            } else {
                h[a * k + c]
            };
            let bit = a * k + c;
            if s < 0 {
                w[bit / 128][bit / 32 % 4] |= 1 << (bit % 32);
            }
        }
    }
    w
}

impl OpDef for Hadamard {
    fn name(&self) -> &'static str {
        "hadamard"
    }
    fn check(&self, g: &[TensorInfo]) -> Result<()> {
        if !supported(self.n as usize) {
            return Err(unsupported(self.n as usize));
        }
        ensure_shape!(
            axes(self.n).is_some(),
            "hadamard",
            "n = {} is too large for two passes of {TILE}-float tiles",
            self.n
        );
        ensure_shape!(
            self.width > 0 && self.width.is_multiple_of(self.n),
            "hadamard",
            "width {} must be a nonzero multiple of n = {}",
            self.width,
            self.n
        );
        let elems = u64::from(self.width) * u64::from(self.max_rows);
        ensure_shape!(
            elems <= u64::from(u32::MAX),
            "hadamard",
            "{elems} elements exceed u32 indexing"
        );
        check_bytes(g, "hadamard", "x", self.x, 4 * elems)
    }
    fn calls(&self, _caps: &Caps) -> Vec<Call> {
        axes(self.n)
            .unwrap_or_default()
            .into_iter()
            .map(|a| {
                Call::new(
                    Kernel::new(&SHADER, "hadamard"),
                    vec![Binding::write(self.x)],
                )
                .pass(a.pass)
            })
            .collect()
    }
    fn step(&self, tag: CallTag, step: &Step, params: &mut [u8; PARAMS_BYTES]) -> [u32; 3] {
        let pass: Pass = tag.pass();
        let Some(a) = axes(self.n)
            .unwrap_or_default()
            .into_iter()
            .find(|a| a.pass == pass)
        else {
            return [0; 3];
        };
        let rows = step.n_tokens.min(self.max_rows);
        let n_chunks = rows * (self.width / a.block);
        let last = pass == Pass::Outer;
        write_params(
            params,
            &HadamardParams {
                n_chunks,
                n: a.block,
                k: a.k,
                p: a.p,
                inner: a.inner,
                cols: a.cols,
                per_wg: a.per_wg,
                scale: if last {
                    (1.0 / f64::from(self.n).sqrt()) as f32
                } else {
                    1.0
                },
                signs: sign_bits(a.k as usize, self.transposed),
                act: ActParams::default(),
            },
        );
        grid1(n_chunks.div_ceil(a.per_wg) * (a.inner / a.cols))
    }
}

/// The Hadamard transform of each row, straight to int8 codes and a scale
/// per row (`crate::act`, static or dynamic): the online Hadamard at the
/// down projection's input and that input's quantization in one dispatch
/// (PrefixQuant). x (`[max_rows, n]` f32) is read, not written; codes:
/// `[max_rows, n / 4]` u32; scales: `[max_rows]` f32. One workgroup per
/// row, so `n` must fit a tile with room for the row max's reduction:
/// [`HadamardQuant::fits`].
#[derive(Debug, Clone)]
pub struct HadamardQuant {
    pub x: TensorId,
    pub codes: TensorId,
    pub scales: TensorId,
    /// Row length, the transform's size.
    pub n: u32,
    pub bits: ActBits,
    pub scale: ActScale,
    pub max_rows: u32,
}

impl HadamardQuant {
    /// Whether rows of `n` take the fused kernel (else: [`Hadamard`], then
    /// `act_quant`).
    pub fn fits(n: u32) -> bool {
        supported(n as usize) && n.is_multiple_of(32) && n + WG <= TILE
    }
}

impl OpDef for HadamardQuant {
    fn name(&self) -> &'static str {
        "hadamard_quant"
    }
    fn check(&self, g: &[TensorInfo]) -> Result<()> {
        const OP: &str = "hadamard_quant";
        ensure_shape!(
            Self::fits(self.n),
            OP,
            "rows of {} need a supported size, a multiple of 32, of at most {}",
            self.n,
            TILE - WG
        );
        self.scale.check(OP)?;
        let elems = u64::from(self.n) * u64::from(self.max_rows);
        check_bytes(g, OP, "x", self.x, 4 * elems)?;
        check_bytes(g, OP, "codes", self.codes, elems)?;
        check_bytes(g, OP, "scales", self.scales, 4 * u64::from(self.max_rows))
    }
    fn calls(&self, _caps: &Caps) -> Vec<Call> {
        // x is only read, but the shader shares `hadamard`'s read_write binding.
        let bindings = vec![
            Binding::write(self.x),
            Binding::write(self.codes),
            Binding::write(self.scales),
        ];
        vec![Call::new(Kernel::new(&SHADER, "hadamard_quant"), bindings)]
    }
    fn step(&self, _tag: CallTag, step: &Step, params: &mut [u8; PARAMS_BYTES]) -> [u32; 3] {
        let (k, p) = factor(self.n as usize).unwrap_or((1, 1));
        let rows = step.n_tokens.min(self.max_rows);
        write_params(
            params,
            &HadamardParams {
                n_chunks: rows,
                n: self.n,
                k: k as u32,
                p: p as u32,
                inner: 1,
                cols: 1,
                per_wg: 1,
                scale: (1.0 / f64::from(self.n).sqrt()) as f32,
                signs: sign_bits(k, false),
                act: self.scale.params(self.bits),
            },
        );
        grid1(rows)
    }
}

/// CPU reference of [`HadamardQuant`]: [`transform`], then `crate::act`'s
/// quantizer.
pub fn reference_quant(
    x: &[f32],
    n: usize,
    bits: ActBits,
    scale: ActScale,
) -> Result<(Vec<i8>, Vec<f32>)> {
    let y = reference(x, n, false)?;
    Ok(quantize_rows(&y, n, bits, scale))
}

/// CPU reference: [`transform`] (or [`transform_transposed`]) of a copy.
pub fn reference(x: &[f32], n: usize, transposed: bool) -> Result<Vec<f32>> {
    let mut y = x.to_vec();
    apply(&mut y, n, transposed)?;
    Ok(y)
}

/// The sizes K of the non-Sylvester factor `H_K` this module constructs (1
/// is the trivial factor; sizes 2 and 4 are absorbed by Sylvester's P).
pub const CORE_SIZES: [usize; 5] = [1, 12, 20, 28, 36];

/// The largest core size.
pub const MAX_CORE: usize = 36;

/// Splits `n = K * P` (returned as `(K, P)`): `K` in [`CORE_SIZES`], `P` a
/// power of two. None when no supported K fits.
pub fn factor(n: usize) -> Option<(usize, usize)> {
    if n == 0 {
        return None;
    }
    let odd = n >> n.trailing_zeros();
    let k = CORE_SIZES
        .into_iter()
        .find(|k| k >> k.trailing_zeros() == odd)?;
    (n.is_multiple_of(k) && (n / k).is_power_of_two()).then_some((k, n / k))
}

/// Whether [`transform`] handles chunks of `n`.
pub fn supported(n: usize) -> bool {
    factor(n).is_some()
}

/// The ±1 matrix `H_K` row-major, `K * K` entries, for K in [`CORE_SIZES`];
/// None for any other K. `H_K H_Kᵀ = K I`.
pub fn core(k: usize) -> Option<Vec<i8>> {
    match k {
        1 => Some(vec![1]),
        12 => Some(paley_1(11)),
        20 => Some(paley_1(19)),
        28 => Some(paley_2(13)),
        36 => Some(paley_2(17)),
        _ => None,
    }
}

/// Quadratic character modulo the prime `q`: 0, 1 (nonzero square) or -1.
fn chi(x: usize, q: usize) -> i8 {
    let x = x % q;
    if x == 0 {
        0
    } else if (1..q).any(|y| y * y % q == x) {
        1
    } else {
        -1
    }
}

/// Jacobsthal matrix `Q[i][j] = chi(j - i)`, q x q row-major.
fn jacobsthal(q: usize) -> Vec<i8> {
    let row: Vec<i8> = (0..q).map(|d| chi(d, q)).collect();
    (0..q * q).map(|e| row[(e % q + q - e / q) % q]).collect()
}

/// Paley I for a prime q ≡ 3 (mod 4): `I + [[0, 1ᵀ], [-1, Q]]`, K = q + 1.
fn paley_1(q: usize) -> Vec<i8> {
    let k = q + 1;
    let jq = jacobsthal(q);
    let mut h = vec![0i8; k * k];
    for a in 0..k {
        for c in 0..k {
            let s = match (a, c) {
                (0, 0) => 0,
                (0, _) => 1,
                (_, 0) => -1,
                _ => jq[(a - 1) * q + c - 1],
            };
            h[a * k + c] = s + i8::from(a == c);
        }
    }
    h
}

/// Paley II for a prime q ≡ 1 (mod 4), K = 2(q + 1): each entry of the
/// symmetric conference matrix `C = [[0, 1ᵀ], [1, Q]]` becomes a 2 x 2 block.
fn paley_2(q: usize) -> Vec<i8> {
    let m = q + 1;
    let k = 2 * m;
    let jq = jacobsthal(q);
    let mut h = vec![0i8; k * k];
    for a in 0..m {
        for c in 0..m {
            let e = match (a, c) {
                (0, 0) => 0,
                (0, _) | (_, 0) => 1,
                _ => jq[(a - 1) * q + c - 1],
            };
            let block: [[i8; 2]; 2] = if e == 0 {
                [[1, -1], [-1, -1]]
            } else {
                [[e, e], [e, -e]]
            };
            for (u, br) in block.iter().enumerate() {
                for (v, &s) in br.iter().enumerate() {
                    h[(2 * a + u) * k + 2 * c + v] = s;
                }
            }
        }
    }
    h
}

fn unsupported(n: usize) -> EngineError {
    EngineError::Shape {
        op: "hadamard",
        msg: format!("no Hadamard matrix of size {n}: n must be K * 2^m with K in {CORE_SIZES:?}"),
    }
}

/// Checks `n` and the length, and returns `(K, P, H_K)`.
fn prepare(len: usize, n: usize) -> Result<(usize, usize, Vec<i8>)> {
    let (k, p) = factor(n).ok_or_else(|| unsupported(n))?;
    if !len.is_multiple_of(n) {
        return Err(EngineError::Shape {
            op: "hadamard",
            msg: format!("length {len} is not a multiple of the chunk size {n}"),
        });
    }
    let h = core(k).ok_or_else(|| unsupported(n))?;
    Ok((k, p, h))
}

/// In-place unnormalised Walsh-Hadamard transform (Sylvester order) of
/// each consecutive P-element block of `x`.
fn fwht(x: &mut [f32], p: usize) {
    let mut h = 1;
    while h < p {
        for block in x.chunks_exact_mut(2 * h) {
            let (lo, hi) = block.split_at_mut(h);
            for (u, v) in lo.iter_mut().zip(hi.iter_mut()) {
                let (a, b) = (*u, *v);
                *u = a + b;
                *v = a - b;
            }
        }
        h *= 2;
    }
}

/// Applies `(H_K or H_Kᵀ) ⊗ H_P / sqrt(n)` to every n-chunk of `x`.
fn apply(x: &mut [f32], n: usize, transposed: bool) -> Result<()> {
    let (k, p, h) = prepare(x.len(), n)?;
    let scale = (1.0 / (n as f64).sqrt()) as f32;
    let mut col = vec![0.0f32; k];
    for chunk in x.chunks_exact_mut(n) {
        fwht(chunk, p);
        if k == 1 {
            chunk.iter_mut().for_each(|v| *v *= scale);
            continue;
        }
        for b in 0..p {
            for (c, v) in col.iter_mut().enumerate() {
                *v = chunk[c * p + b];
            }
            for a in 0..k {
                let mut acc = 0.0f32;
                for (c, &v) in col.iter().enumerate() {
                    let s = if transposed {
                        h[c * k + a]
                    } else {
                        h[a * k + c]
                    };
                    acc += f32::from(s) * v;
                }
                chunk[a * p + b] = acc * scale;
            }
        }
    }
    Ok(())
}

/// `y = H_n x / sqrt(n)` on every consecutive n-element chunk of `x`, in
/// place. Errors when n is unsupported or `x.len()` is not a multiple of n.
pub fn transform(x: &mut [f32], n: usize) -> Result<()> {
    apply(x, n, false)
}

/// `y = H_nᵀ x / sqrt(n)`, the inverse of [`transform`], on every chunk.
pub fn transform_transposed(x: &mut [f32], n: usize) -> Result<()> {
    apply(x, n, true)
}

/// The dense orthonormal `H_n / sqrt(n)`, n x n row-major (for tests and
/// for fusing the rotation into weights offline).
pub fn matrix(n: usize) -> Result<Vec<f32>> {
    let (k, p, h) = prepare(n, n)?;
    let scale = (1.0 / (n as f64).sqrt()) as f32;
    let mut m = vec![0.0f32; n * n];
    for (i, row) in m.chunks_exact_mut(n).enumerate() {
        let (a, b) = (i / p, i % p);
        for (j, v) in row.iter_mut().enumerate() {
            let (c, d) = (j / p, j % p);
            let sylvester = if (b & d).count_ones() % 2 == 0 {
                1.0
            } else {
                -1.0
            };
            *v = f32::from(h[a * k + c]) * sylvester * scale;
        }
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize, seed: u32) -> Vec<f32> {
        // A small LCG: deterministic values in [-1, 1).
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..len)
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (s >> 8) as f32 / (1u32 << 23) as f32 - 1.0
            })
            .collect()
    }

    const SIZES: [usize; 12] = [1, 2, 12, 24, 20, 28, 36, 64, 144, 576, 1536, 2048];

    #[test]
    fn factors() {
        assert_eq!(factor(64), Some((1, 64)));
        assert_eq!(factor(576), Some((36, 16)));
        assert_eq!(factor(1536), Some((12, 128)));
        assert_eq!(factor(2048), Some((1, 2048)));
        assert_eq!(factor(4096), Some((1, 4096)));
        assert_eq!(factor(3584), Some((28, 128)));
        assert_eq!(factor(20), Some((20, 1)));
        for n in [0, 3, 6, 10, 18, 960, 5632, 11008] {
            assert_eq!(factor(n), None, "n = {n}");
            assert!(!supported(n));
        }
    }

    #[test]
    fn cores_are_hadamard() {
        for k in CORE_SIZES {
            let h = core(k).unwrap();
            for a in 0..k {
                for c in 0..k {
                    let dot: i32 = (0..k)
                        .map(|j| i32::from(h[a * k + j]) * i32::from(h[c * k + j]))
                        .sum();
                    let want = if a == c { k as i32 } else { 0 };
                    assert_eq!(dot, want, "K = {k}, rows {a} and {c}");
                }
            }
            assert!(h.iter().all(|&s| s == 1 || s == -1), "K = {k}");
        }
        assert!(core(8).is_none());
    }

    #[test]
    fn matrix_is_orthonormal() {
        for n in SIZES.into_iter().filter(|&n| n <= 576) {
            let m = matrix(n).unwrap();
            for i in 0..n {
                for j in 0..n {
                    let dot: f64 = (0..n)
                        .map(|t| f64::from(m[i * n + t]) * f64::from(m[j * n + t]))
                        .sum();
                    let want = if i == j { 1.0 } else { 0.0 };
                    assert!((dot - want).abs() < 1e-5, "n = {n} ({i}, {j}): {dot}");
                }
            }
        }
    }

    #[test]
    fn transform_is_the_matrix_product() {
        for n in SIZES {
            let m = matrix(n).unwrap();
            let x = data(3 * n, n as u32);
            let mut y = x.clone();
            transform(&mut y, n).unwrap();
            let mut yt = x.clone();
            transform_transposed(&mut yt, n).unwrap();
            for (ch, xc) in x.chunks_exact(n).enumerate() {
                for i in 0..n {
                    let (mut want, mut want_t) = (0.0f64, 0.0f64);
                    for j in 0..n {
                        want += f64::from(m[i * n + j]) * f64::from(xc[j]);
                        want_t += f64::from(m[j * n + i]) * f64::from(xc[j]);
                    }
                    let (got, got_t) = (y[ch * n + i], yt[ch * n + i]);
                    assert!(
                        (f64::from(got) - want).abs() < 1e-5,
                        "n {n} [{ch}, {i}]: {got} vs {want}"
                    );
                    assert!(
                        (f64::from(got_t) - want_t).abs() < 1e-5,
                        "n {n} [{ch}, {i}]ᵀ: {got_t} vs {want_t}"
                    );
                }
            }
        }
    }

    #[test]
    fn transposed_is_the_inverse() {
        for n in SIZES {
            let x = data(2 * n, 7 + n as u32);
            let mut y = x.clone();
            transform(&mut y, n).unwrap();
            transform_transposed(&mut y, n).unwrap();
            for (i, (a, b)) in x.iter().zip(&y).enumerate() {
                assert!((a - b).abs() < 1e-5, "n {n} [{i}]: {a} vs {b}");
            }
        }
    }

    #[test]
    fn bad_lengths_and_sizes_are_errors() {
        let mut x = vec![0.0; 100];
        assert!(transform(&mut x, 64).is_err());
        assert!(transform_transposed(&mut x, 12).is_err());
        assert!(transform(&mut x, 10).is_err());
        assert!(transform(&mut x, 0).is_err());
        assert!(matrix(960).is_err());
        let mut empty: Vec<f32> = Vec::new();
        assert!(transform(&mut empty, 64).is_ok());
    }
}
