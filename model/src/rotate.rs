//! Rotation of a model's weights (QuaRot arXiv 2404.00456, SpinQuant
//! arXiv 2405.16406, as PrefixQuant uses it): orthogonal transforms that
//! leave the model's function unchanged but spread the few huge channels
//! of its activations over all channels, so weights, activations and keys
//! quantize with far less error.
//!
//! With the residual stream `x` replaced by `R x` for an orthogonal `R`
//! (`dim x dim`):
//!
//! ```text
//! fold    each RMSNorm's weight into the linears reading it (the norm's weight becomes 1:
//!         RMSNorm(R x) = R RMSNorm(x) only without a per-channel weight)
//! untie   a tied lm_head becomes its own matrix (it reads the final norm, the embedding does not)
//! embed   E'      = E Rᵀ       (each embedding row e -> R e)
//! read    W'      = W Rᵀ       q, k, v, gate, up, lm_head (each row w -> R w)
//! write   W'      = R W        o_proj, down_proj (each column -> R column)
//! heads   W_v'    = H W_v,  W_o' = W_o Hᵀ    per head, H of size head_dim
//! down    W_down' = W_down Hᵀ, and H (size ffn_dim) on the down input at run time
//! qk      H (size head_dim) on each query and key head after RoPE at run time
//! ```
//!
//! `R` is a random-sign Hadamard matrix `H D` (D = diag(±1), seeded) when
//! `dim` has a Hadamard matrix ([`hadamard::supported`]), else a random
//! orthogonal matrix. The online transforms are recorded in the config
//! ([`crate::checkpoint::OnlineHadamard`]); the GPU graph and the CPU
//! reference run them.
//!
//! PrefixQuant's reference code does not untie: it folds the final norm
//! into the shared embedding and rotates the shared matrix twice (its issue
//! #23). [`RotateOptions::untie`]` = false` reproduces that recipe, to
//! measure what it costs; it does not preserve the model's function.

use lamina_engine::ops::hadamard;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;

use crate::checkpoint::{
    HostTensor, LayerWeights, LlamaWeights, LoadedModel, ModelTensor, OnlineHadamard,
    RotationRecord,
};
use crate::{ModelError, Result};

#[derive(Debug, Clone, Copy)]
pub struct RotateOptions {
    /// Seed of `R`'s random signs (or random matrix).
    pub seed: u64,
    /// Untie a tied lm_head before rotating (false: the reference code's recipe).
    pub untie: bool,
}

impl Default for RotateOptions {
    fn default() -> Self {
        RotateOptions {
            seed: 0,
            untie: true,
        }
    }
}

/// The residual rotation `R`.
enum Residual {
    /// `R = H D`: random signs, then the orthonormal Hadamard transform.
    Hadamard(Vec<f32>),
    /// A dense orthogonal `[dim, dim]` matrix, row-major.
    Dense(Vec<f32>),
}

impl Residual {
    fn new(dim: usize, seed: u64) -> Residual {
        let mut r = rand::rngs::StdRng::seed_from_u64(seed);
        if hadamard::supported(dim) {
            let signs = (0..dim)
                .map(|_| if r.random::<bool>() { 1.0 } else { -1.0 })
                .collect();
            return Residual::Hadamard(signs);
        }
        Residual::Dense(random_orthogonal(dim, &mut r))
    }

    fn name(&self) -> &'static str {
        match self {
            Residual::Hadamard(_) => "hadamard",
            Residual::Dense(_) => "orthogonal",
        }
    }

    /// `v <- R v` for every `dim`-element chunk of `v`.
    fn apply(&self, v: &mut [f32]) {
        match self {
            Residual::Hadamard(signs) => {
                let dim = signs.len();
                for row in v.chunks_exact_mut(dim) {
                    for (x, s) in row.iter_mut().zip(signs) {
                        *x *= s;
                    }
                }
                hadamard::transform(v, dim).expect("rows of dim");
            }
            Residual::Dense(m) => {
                let dim = (m.len() as f64).sqrt() as usize;
                let mut tmp = vec![0.0f32; dim];
                for row in v.chunks_exact_mut(dim) {
                    for (t, mr) in tmp.iter_mut().zip(m.chunks_exact(dim)) {
                        *t = mr.iter().zip(row.iter()).map(|(a, b)| a * b).sum();
                    }
                    row.copy_from_slice(&tmp);
                }
            }
        }
    }
}

/// A random orthogonal matrix: Gram-Schmidt (twice, for f32 accuracy in
/// f64) on Gaussian rows.
fn random_orthogonal(n: usize, r: &mut impl Rng) -> Vec<f32> {
    let mut q: Vec<Vec<f64>> = Vec::with_capacity(n);
    while q.len() < n {
        let mut v: Vec<f64> = (0..n).map(|_| r.sample(StandardNormal)).collect();
        for _ in 0..2 {
            for u in &q {
                let d: f64 = u.iter().zip(&v).map(|(a, b)| a * b).sum();
                for (x, y) in v.iter_mut().zip(u) {
                    *x -= d * y;
                }
            }
        }
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        if norm > 1e-6 {
            q.push(v.into_iter().map(|x| x / norm).collect());
        }
    }
    q.into_iter().flatten().map(|x| x as f32).collect()
}

/// A matrix `[rows, cols]` in f32 with its name.
struct Mat {
    name: String,
    rows: usize,
    cols: usize,
    v: Vec<f32>,
}

impl Mat {
    fn of(t: &HostTensor) -> Result<Mat> {
        if t.shape.len() != 2 {
            return Err(ModelError::Invalid(format!(
                "{} is not a matrix: {:?}",
                t.name, t.shape
            )));
        }
        Ok(Mat {
            name: t.name.clone(),
            rows: t.rows(),
            cols: t.cols(),
            v: t.to_f32()?,
        })
    }

    fn tensor(&self) -> HostTensor {
        HostTensor::from_f32(&self.name, vec![self.rows, self.cols], &self.v)
    }

    /// `W <- W diag(w)`: scales column `c` by `w[c]`.
    fn scale_columns(&mut self, w: &[f32]) {
        for row in self.v.chunks_exact_mut(self.cols) {
            for (x, s) in row.iter_mut().zip(w) {
                *x *= s;
            }
        }
    }

    /// Applies `f` to every row.
    fn rows_with(&mut self, f: impl Fn(&mut [f32])) {
        f(&mut self.v);
    }

    /// Applies `f` to every column (through a transposed copy).
    fn columns_with(&mut self, f: impl Fn(&mut [f32])) {
        let (r, c) = (self.rows, self.cols);
        let mut t = vec![0.0f32; r * c];
        for i in 0..r {
            for j in 0..c {
                t[j * r + i] = self.v[i * c + j];
            }
        }
        f(&mut t);
        for i in 0..r {
            for j in 0..c {
                self.v[i * c + j] = t[j * r + i];
            }
        }
    }
}

fn vector(t: &HostTensor) -> Result<Vec<f32>> {
    t.to_f32()
}

fn ones(t: &HostTensor) -> HostTensor {
    HostTensor::from_f32(&t.name, t.shape.clone(), &vec![1.0; t.numel()])
}

/// The rotated model: f32 weights, norms folded, `R` fused, the per-head
/// Hadamard fused into v/o, `Hᵀ` into down_proj, and the config's online
/// transforms set. Its recipe records the rotation.
pub fn rotate(m: &LoadedModel, o: &RotateOptions) -> Result<LoadedModel> {
    let mut cfg = m.config.clone();
    if cfg.hadamard != OnlineHadamard::default() {
        return Err(ModelError::Input(format!(
            "{} is already rotated",
            m.source
        )));
    }
    cfg.hadamard = OnlineHadamard {
        down: true,
        qk: true,
    };
    cfg.validate()?;
    let (hd, ffn) = (cfg.head_dim, cfg.ffn_dim);
    let rot = Residual::new(cfg.dim, o.seed);
    let head_h = |v: &mut [f32]| hadamard::transform(v, hd).expect("head_dim checked");

    let w = &m.weights;
    let mut layers = Vec::with_capacity(w.layers.len());
    for lw in &w.layers {
        let attn_norm = vector(&lw.attn_norm)?;
        let ffn_norm = vector(&lw.ffn_norm)?;
        let mut mats = Vec::new();
        for (role, t) in lw.linears() {
            let mut x = Mat::of(t)?;
            use crate::checkpoint::LayerTensor as T;
            match role {
                T::Wq | T::Wk | T::Wv => {
                    x.scale_columns(&attn_norm);
                    x.rows_with(|v| rot.apply(v));
                    if role == T::Wv {
                        // H per head on the output side: each column's head segments.
                        x.columns_with(head_h);
                    }
                }
                T::WGate | T::WUp => {
                    x.scale_columns(&ffn_norm);
                    x.rows_with(|v| rot.apply(v));
                }
                T::Wo => {
                    x.rows_with(head_h);
                    x.columns_with(|v| rot.apply(v));
                }
                T::WDown => {
                    x.rows_with(|v| hadamard::transform(v, ffn).expect("ffn_dim checked"));
                    x.columns_with(|v| rot.apply(v));
                }
                T::AttnNorm | T::FfnNorm | T::Bq | T::Bk | T::Bv => {
                    unreachable!("linears() yields matrices")
                }
            }
            mats.push((role, x.tensor()));
        }
        layers.push(LayerWeights::try_from_fn(lw.qkv_bias.is_some(), |role| {
            use crate::checkpoint::LayerTensor as T;
            let bias = |i: usize| lw.qkv_bias.as_ref().map(|b| &b[i]).expect("has biases");
            Ok(match role {
                T::AttnNorm => ones(&lw.attn_norm),
                T::FfnNorm => ones(&lw.ffn_norm),
                // R acts on q/k/v's inputs, so their biases stay; v's output
                // side has the per-head Hadamard, and so does its bias.
                T::Bq => bias(0).clone(),
                T::Bk => bias(1).clone(),
                T::Bv => {
                    let mut b = bias(2).to_f32()?;
                    head_h(&mut b);
                    HostTensor::from_f32(&bias(2).name, bias(2).shape.clone(), &b)
                }
                _ => mats
                    .iter()
                    .find(|(r, _)| *r == role)
                    .map(|(_, t)| t.clone())
                    .expect("every linear rotated"),
            })
        })?);
    }

    let final_norm = vector(&w.output_norm)?;
    let mut embd = Mat::of(&w.token_embd)?;
    let output = match (&w.output, o.untie) {
        (Some(out), _) => Some(out),
        (None, true) => Some(&w.token_embd),
        (None, false) => None,
    };
    let output = match output {
        Some(t) => {
            let mut x = Mat::of(t)?;
            x.name = ModelTensor::Output.gguf_name().to_string();
            x.scale_columns(&final_norm);
            x.rows_with(|v| rot.apply(v));
            embd.rows_with(|v| rot.apply(v));
            Some(x.tensor())
        }
        None => {
            // The reference code's recipe on a tied model: the final norm folded
            // into the shared matrix, which is then rotated as the embedding and
            // again as the lm_head.
            embd.scale_columns(&final_norm);
            embd.rows_with(|v| rot.apply(v));
            embd.rows_with(|v| rot.apply(v));
            None
        }
    };
    cfg.tied_embeddings = output.is_none();
    let weights = LlamaWeights {
        token_embd: embd.tensor(),
        layers,
        output_norm: ones(&w.output_norm),
        output,
    };
    let mut recipe = m.recipe.clone().unwrap_or_default();
    recipe.rotation = Some(RotationRecord {
        seed: o.seed,
        residual: rot.name().to_string(),
        untied: o.untie || w.output.is_some(),
    });
    Ok(LoadedModel {
        config: cfg,
        weights,
        tokenizer_spec: m.tokenizer_spec.clone(),
        source: m.source.clone(),
        file_type: m.file_type.clone(),
        recipe: Some(recipe),
        pivot: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::{HostDType, TokenizerSpec};
    use crate::reference::Reference;
    use crate::synthetic::{synthetic_config, synthetic_weights};

    fn model(preset: &str) -> LoadedModel {
        let config = synthetic_config(preset).unwrap();
        let weights = synthetic_weights(&config, HostDType::F32, 7).unwrap();
        LoadedModel {
            config,
            weights,
            tokenizer_spec: TokenizerSpec::default(),
            source: preset.to_string(),
            file_type: "F32".into(),
            recipe: None,
            pivot: None,
        }
    }

    fn logits(m: &LoadedModel, toks: &[u32]) -> Vec<f32> {
        let mut r = Reference::new(&m.config, &m.weights, 64).unwrap();
        r.forward(toks, 0).unwrap()
    }

    /// Largest |a - b| over the largest |a|.
    fn rel_diff(a: &[f32], b: &[f32]) -> f32 {
        let d = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        d / a.iter().fold(0.0f32, |m, x| m.max(x.abs()))
    }

    /// The rotated model computes the same function: the same logits within
    /// f32 noise, with the residual Hadamard (96 = 12 * 8) and with a random
    /// orthogonal residual rotation (88 has no Hadamard matrix).
    #[test]
    fn rotation_keeps_the_logits() {
        for (preset, residual) in [
            ("L2-d96-h3-kv1-f288-v300", "hadamard"),
            ("L1-d88-h11-kv1-f64-v100", "orthogonal"),
        ] {
            let m = model(preset);
            let toks: Vec<u32> = (0..37).map(|i| (i * 31 + 5) % 100).collect();
            let want = logits(&m, &toks);
            let r = rotate(&m, &RotateOptions::default()).unwrap();
            assert_eq!(
                r.recipe
                    .as_ref()
                    .unwrap()
                    .rotation
                    .as_ref()
                    .unwrap()
                    .residual,
                residual
            );
            assert!(r.weights.output.is_some() && !r.config.tied_embeddings);
            assert!(r.config.hadamard.down && r.config.hadamard.qk);
            let got = logits(&r, &toks);
            let d = rel_diff(&want, &got);
            assert!(
                d < 2e-5,
                "{preset}: rotated logits differ by {d} (relative)"
            );
            // Another seed is another rotation of the same function.
            let r2 = rotate(
                &m,
                &RotateOptions {
                    seed: 9,
                    untie: true,
                },
            )
            .unwrap();
            assert_ne!(
                r2.weights.layers[0].wq.data.as_slice(),
                r.weights.layers[0].wq.data.as_slice()
            );
            assert!(rel_diff(&want, &logits(&r2, &toks)) < 2e-5);
        }
    }

    /// Without untying (PrefixQuant's reference recipe on a tied model) the
    /// function is lost; and a rotated model is not rotated twice.
    #[test]
    fn tied_recipe_breaks_the_model_and_rotating_twice_is_an_error() {
        let m = model("L2-d96-h3-kv1-f288-v300");
        let toks: Vec<u32> = (0..20).collect();
        let want = logits(&m, &toks);
        let bad = rotate(
            &m,
            &RotateOptions {
                seed: 0,
                untie: false,
            },
        )
        .unwrap();
        assert!(bad.config.tied_embeddings && bad.weights.output.is_none());
        assert!(rel_diff(&want, &logits(&bad, &toks)) > 1e-2);
        assert!(rotate(&bad, &RotateOptions::default()).is_err());
    }
}
