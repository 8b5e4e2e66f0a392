//! Small graph-building helpers of the forward graph: a tensor written in
//! parts by one matmul over concatenated weights, and single-op pushes
//! (RMSNorm, the Hadamard transform, Gram accumulation).

use lamina_engine::graph::{Graph, Op, TensorId};
use lamina_engine::mmout::{OutLayout, part_offsets};
use lamina_engine::ops::{gram, hadamard, rmsnorm};

use crate::{LlamaConfig, Result};

/// An intermediate that one matmul over concatenated weights writes in
/// parts (`lamina_engine::mmout`), and a view of each part: `[n, width]` f32
/// each, named as given.
pub fn parts_tensor<const P: usize>(
    g: &mut Graph,
    name: &str,
    parts: [(&str, usize); P],
    n: u32,
) -> Result<(TensorId, [TensorId; P])> {
    let rows: Vec<u32> = parts.iter().map(|&(_, w)| w as u32).collect();
    let bytes = OutLayout::parts(&rows).bytes(rows.iter().sum(), n);
    let all = g.intermediate(name, bytes);
    let offsets = part_offsets(&rows, n);
    let mut views = [all; P];
    for (i, (&(part, w), off)) in parts.iter().zip(offsets).enumerate() {
        views[i] = g.view(part, all, off, 4 * w as u64 * u64::from(n))?;
    }
    Ok((all, views))
}

/// `out = RMSNorm(x) * w`.
pub fn push_norm(
    g: &mut Graph,
    c: &LlamaConfig,
    x: TensorId,
    weight: TensorId,
    out: TensorId,
    n: u32,
    label: String,
) -> Result<()> {
    let op = rmsnorm::RmsNorm {
        x,
        weight,
        out,
        dim: c.dim as u32,
        eps: c.norm_eps,
        max_rows: n,
    };
    g.push(label, Op::RmsNorm(op))?;
    Ok(())
}

/// `x <- H x` on each `chunk`-wide piece of x's `width`-wide rows.
pub fn push_hadamard(
    g: &mut Graph,
    x: TensorId,
    chunk: u32,
    width: u32,
    n: u32,
    label: String,
) -> Result<()> {
    let op = hadamard::Hadamard {
        x,
        n: chunk,
        width,
        max_rows: n,
        transposed: false,
    };
    g.push(label, Op::Hadamard(op))?;
    Ok(())
}

pub fn push_gram(
    g: &mut Graph,
    x: TensorId,
    out: TensorId,
    dim: usize,
    n: u32,
    label: String,
) -> Result<()> {
    g.push(
        label,
        Op::Gram(gram::Gram {
            x,
            out,
            dim: dim as u32,
            max_rows: n,
        }),
    )?;
    Ok(())
}
