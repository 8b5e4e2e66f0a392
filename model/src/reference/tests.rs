//! Unit tests of the CPU reference on small synthetic models (no checkpoint needed).

use super::*;
use crate::checkpoint::RopeStyle;
use crate::checkpoint::{Bytes, HostDType};
use crate::synthetic::{synthetic_config, synthetic_weights};

fn tiny(style: RopeStyle, dtype: HostDType) -> Result<(LlamaConfig, LlamaWeights)> {
    let cfg = LlamaConfig {
        rope_style: style,
        ..synthetic_config("tiny")?
    };
    let w = synthetic_weights(&cfg, dtype, 42)?;
    Ok((cfg, w))
}

fn tokens(n: usize, vocab: usize) -> Vec<u32> {
    (0..n).map(|i| ((i * 7919 + 13) % vocab) as u32).collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Reorders the rows of a `[rows, cols]` tensor: new row `r` is old row `perm[r]`.
/// Block formats quantize along a row, so rows move as whole byte ranges.
fn permute_rows(t: &HostTensor, perm: &[usize]) -> HostTensor {
    let row_bytes = t.dtype.bytes_for(t.cols());
    let old = t.data.as_slice();
    let data: Vec<u8> = perm
        .iter()
        .flat_map(|&r| &old[r * row_bytes..(r + 1) * row_bytes])
        .copied()
        .collect();
    HostTensor {
        data: Bytes::Owned(data.into()),
        ..t.clone()
    }
}

#[test]
fn incremental_decoding_matches_one_full_forward() -> Result<()> {
    // 150 tokens span three MAX_BATCH chunks; the module promises results
    // that do not depend on batching, so the comparison is exact.
    let (cfg, w) = tiny(RopeStyle::Interleaved, HostDType::Q8_0)?;
    let toks = tokens(150, cfg.vocab_size);
    let mut r = Reference::new(&cfg, &w, 256)?;
    let full = r.forward(&toks, 0)?;
    assert_eq!(full.len(), 150 * cfg.vocab_size);
    assert!(full.iter().all(|v| v.is_finite()));
    r.reset();
    let mut step = Vec::new();
    for (i, t) in toks.iter().enumerate() {
        step.extend(r.forward(&[*t], i)?);
    }
    assert_eq!(r.len(), 150);
    assert_eq!(max_abs_diff(&full, &step), 0.0);
    // Prompt of 70 then single tokens, and forward_last, agree as well.
    let mut last = r.forward_last(&toks[..70], 0)?;
    for (i, t) in toks.iter().enumerate().skip(70) {
        last = r.forward_last(&[*t], i)?;
    }
    assert_eq!(max_abs_diff(&full[149 * cfg.vocab_size..], &last), 0.0);
    Ok(())
}

#[test]
fn rewinding_the_cache_recomputes_from_that_position() -> Result<()> {
    let (cfg, w) = tiny(RopeStyle::Neox, HostDType::F32)?;
    let mut r = Reference::new(&cfg, &w, 64)?;
    let a = tokens(20, cfg.vocab_size);
    let mut b = a.clone();
    b[12..]
        .iter_mut()
        .for_each(|t| *t = (*t + 1) % cfg.vocab_size as u32);
    let want = r.forward(&b, 0)?;
    r.forward(&a, 0)?;
    let got = r.forward(&b[12..], 12)?;
    assert_eq!(max_abs_diff(&want[12 * cfg.vocab_size..], &got), 0.0);
    Ok(())
}

#[test]
fn rope_styles_agree_when_q_and_k_rows_are_permuted() -> Result<()> {
    // llama.cpp's convert script permutes each head's q/k rows so that HF
    // pair (i, i + d/2) lands on (2i, 2i+1): new row 2i = old row i, new
    // row 2i+1 = old row i + d/2. A Neox model and its permuted copy run
    // with interleaved RoPE must then compute the same q·k scores (up to
    // summation order inside the dot product).
    let (cfg, w) = tiny(RopeStyle::Neox, HostDType::Q4_1)?;
    let hd = cfg.head_dim;
    let perm_for = |heads: usize| -> Vec<usize> {
        (0..heads)
            .flat_map(|h| {
                (0..hd).map(move |r| h * hd + if r % 2 == 0 { r / 2 } else { r / 2 + hd / 2 })
            })
            .collect()
    };
    let mut wp = w.clone();
    for l in &mut wp.layers {
        l.wq = permute_rows(&l.wq, &perm_for(cfg.n_heads));
        l.wk = permute_rows(&l.wk, &perm_for(cfg.n_kv_heads));
    }
    let cfg_i = LlamaConfig {
        rope_style: RopeStyle::Interleaved,
        ..cfg.clone()
    };
    let toks = tokens(40, cfg.vocab_size);
    let neox = Reference::new(&cfg, &w, 64)?.forward(&toks, 0)?;
    let inter = Reference::new(&cfg_i, &wp, 64)?.forward(&toks, 0)?;
    let diff = max_abs_diff(&neox, &inter);
    assert!(diff < 1e-4, "max |neox - interleaved| = {diff}");
    // And the permutation matters: unpermuted weights with the other style differ.
    let wrong = Reference::new(&cfg_i, &w, 64)?.forward(&toks, 0)?;
    assert!(max_abs_diff(&neox, &wrong) > 1e-2);
    Ok(())
}

#[test]
fn gqa_equals_mha_with_repeated_kv_heads() -> Result<()> {
    // KV head g serves query heads g*group .. (g+1)*group (transformers'
    // repeat_kv). Repeating each K/V head's rows `group` times gives an
    // MHA model that must compute exactly the same thing.
    let (cfg, w) = tiny(RopeStyle::Interleaved, HostDType::F16)?;
    let (hd, group) = (cfg.head_dim, cfg.gqa_group());
    let perm: Vec<usize> = (0..cfg.n_heads)
        .flat_map(|h| (0..hd).map(move |r| (h / group) * hd + r))
        .collect();
    let mut wm = w.clone();
    for l in &mut wm.layers {
        l.wk = HostTensor {
            shape: vec![cfg.q_dim(), cfg.dim],
            ..permute_rows(&l.wk, &perm)
        };
        l.wv = HostTensor {
            shape: vec![cfg.q_dim(), cfg.dim],
            ..permute_rows(&l.wv, &perm)
        };
    }
    let cfg_m = LlamaConfig {
        n_kv_heads: cfg.n_heads,
        ..cfg.clone()
    };
    let toks = tokens(30, cfg.vocab_size);
    let gqa = Reference::new(&cfg, &w, 32)?.forward(&toks, 0)?;
    let mha = Reference::new(&cfg_m, &wm, 32)?.forward(&toks, 0)?;
    assert_eq!(max_abs_diff(&gqa, &mha), 0.0);
    Ok(())
}

#[test]
fn first_token_attention_is_its_own_value() -> Result<()> {
    // With one position softmax is 1, so layer 0's attention output is v:
    // check the hidden state after layer 0 against a hand-written layer.
    let (cfg, w) = tiny(RopeStyle::Interleaved, HostDType::F32)?;
    let mut r = Reference::new(&cfg, &w, 8)?;
    let tok = 77u32;
    let (_, hidden) = r.forward_hidden(&[tok], 0)?;
    let dim = cfg.dim;
    let l = &w.layers[0];
    let (wv, wo) = (l.wv.to_f32()?, l.wo.to_f32()?);
    let (wg, wu, wd) = (l.w_gate.to_f32()?, l.w_up.to_f32()?, l.w_down.to_f32()?);
    let mut x = w.token_embd.to_f32()?[tok as usize * dim..(tok as usize + 1) * dim].to_vec();
    let norm = |x: &[f32], g: &[f32]| -> Vec<f32> {
        let ms = x.iter().map(|v| (v * v) as f64).sum::<f64>() / x.len() as f64;
        x.iter()
            .zip(g)
            .map(|(v, g)| (*v as f64 / (ms + 1e-5).sqrt()) as f32 * g)
            .collect()
    };
    let mv = |m: &[f32], v: &[f32]| -> Vec<f32> {
        m.chunks(v.len())
            .map(|row| row.iter().zip(v).map(|(a, b)| (a * b) as f64).sum::<f64>() as f32)
            .collect()
    };
    let xb = norm(&x, &l.attn_norm.to_f32()?);
    let v = mv(&wv, &xb); // [kv_dim]
    let att: Vec<f32> = (0..cfg.n_heads)
        .flat_map(|h| v[(h / cfg.gqa_group()) * cfg.head_dim..][..cfg.head_dim].to_vec())
        .collect();
    x.iter_mut().zip(mv(&wo, &att)).for_each(|(a, b)| *a += b);
    let xb = norm(&x, &l.ffn_norm.to_f32()?);
    let h: Vec<f32> = mv(&wg, &xb)
        .iter()
        .zip(mv(&wu, &xb))
        .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
        .collect();
    x.iter_mut().zip(mv(&wd, &h)).for_each(|(a, b)| *a += b);
    let diff = max_abs_diff(&hidden.layer_out[0], &x);
    assert!(
        diff < 1e-5,
        "layer 0 differs from the hand-written one by {diff}"
    );
    assert_eq!(hidden.embeddings.len(), dim);
    assert_eq!(hidden.final_norm.len(), dim);
    Ok(())
}

#[test]
fn synthetic_activations_stay_sane() -> Result<()> {
    let (cfg, w) = tiny(RopeStyle::Interleaved, HostDType::Q4_0)?;
    let mut r = Reference::new(&cfg, &w, 64)?;
    let (logits, hidden) = r.forward_hidden(&tokens(64, cfg.vocab_size), 0)?;
    let rms = |x: &[f32]| (x.iter().map(|v| (v * v) as f64).sum::<f64>() / x.len() as f64).sqrt();
    let last = rms(&hidden.layer_out[cfg.n_layers - 1]);
    assert!((0.1..10.0).contains(&last), "residual rms {last}");
    let std = rms(&logits);
    assert!((0.5..8.0).contains(&std), "logit rms {std}");
    Ok(())
}

#[test]
fn bad_input_is_an_error() -> Result<()> {
    let (cfg, w) = tiny(RopeStyle::Interleaved, HostDType::F32)?;
    let mut r = Reference::new(&cfg, &w, 16)?;
    let is_input = |e: Result<Vec<f32>>| matches!(e, Err(ModelError::Input(_)));
    assert!(is_input(r.forward(&[512], 0)), "token id == vocab");
    assert!(is_input(r.forward(&[], 0)), "no tokens");
    assert!(is_input(r.forward(&[1; 17], 0)), "past max_ctx");
    r.forward(&[1; 10], 0)?;
    assert!(is_input(r.forward(&[1; 7], 10)), "past max_ctx after 10");
    assert!(is_input(r.forward(&[1], 11)), "gap in the cache");
    assert_eq!(r.len(), 10, "failed calls leave the cache alone");
    r.forward(&[1; 6], 10)?;
    assert!(matches!(
        Reference::new(&cfg, &w, 0),
        Err(ModelError::Input(_))
    ));
    let mut bad = w.clone();
    bad.layers[1].wk.shape = vec![64, 32];
    assert!(matches!(
        Reference::new(&cfg, &bad, 8),
        Err(ModelError::Invalid(_))
    ));
    Ok(())
}

#[test]
fn greedy_decoding_continues_the_cache() -> Result<()> {
    let (cfg, w) = tiny(RopeStyle::Interleaved, HostDType::Q8_0)?;
    let mut r = Reference::new(&cfg, &w, 64)?;
    let prompt = tokens(5, cfg.vocab_size);
    let out = r.generate_greedy(&prompt, 8)?;
    assert_eq!(out.len(), 8);
    // Teacher-forced full forward over prompt + output reproduces every choice.
    let all: Vec<u32> = prompt.iter().chain(&out[..7]).copied().collect();
    let logits = r.forward(&all, 0)?;
    for (i, t) in out.iter().enumerate() {
        let row = &logits[(4 + i) * cfg.vocab_size..(5 + i) * cfg.vocab_size];
        assert_eq!(argmax(row) as u32, *t, "step {i}");
    }
    Ok(())
}
