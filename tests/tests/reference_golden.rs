//! The CPU reference forward pass (`lamina_model::reference`) against the
//! golden outputs of Hugging Face transformers (f32, CPU, eager attention) on
//! SmolLM2-135M-Instruct: the top-10 logits and logsumexp at every position,
//! the full final-position logits, and greedy continuations (see
//! shared/golden/README.md).
//!
//! Needs the Q4_1 GGUF the golden files were made from: `LAMINA_MODEL`, or
//! `~/.cache/lamina/models/SmolLM2-135M-Instruct.Q4_1.gguf`. Without it (or
//! without the golden directory, `LAMINA_GOLDEN`) the tests print a notice
//! and pass.
//!
//! hidden.npz (per-layer states) is not compared here: its members are
//! deflate-compressed and no zip reader is among this crate's dependencies.
//! `Reference::forward_hidden` gives the same tensors for manual debugging.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use lamina_model::reference::{Reference, argmax};
use serde_json::Value;

/// Largest |reference - golden| accepted for any logit (and logsumexp).
///
/// Measured: 7.6e-5 max abs diff over every position of the six logits.json
/// prompts and their full last-position vectors (3.1e-5 on the greedy steps),
/// which is within the f32 noise the golden README measures between two
/// attention kernels of transformers itself (9.2e-5). The reference's result
/// does not depend on thread count or batching, so the margin only has to
/// cover libm differences between platforms. A real bug (a wrong RoPE pair,
/// norm or GQA mapping) moves logits by 0.1 or more.
const LOGIT_TOL: f32 = 2e-4;

/// Prompts of logits.json skipped unless `LAMINA_GOLDEN_ALL` is set, to keep
/// the test under a minute in debug builds on two shared cores: p5 (234
/// tokens) alone took 27 s there, of 54 s for all six. It passed with a max
/// diff of 4.0e-5; p4 (208 tokens) still covers long-context attention.
const SLOW_PROMPTS: [&str; 1] = ["p5_long_mixed"];

/// Greedy steps checked per golden prompt (of 48), to bound the test's time.
const GREEDY_STEPS: usize = 16;

/// Positions allocated in the reference's KV cache: the longest golden prompt
/// has 234 tokens, the longest greedy prompt 45 (+ GREEDY_STEPS).
const MAX_CTX: usize = 256;

fn golden_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("LAMINA_GOLDEN") {
        return Some(PathBuf::from(dir));
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    [
        manifest.join("../../shared/golden"),
        manifest.join("../shared/golden"),
    ]
    .into_iter()
    .find(|d| d.join("logits.json").is_file())
}

fn model_path() -> PathBuf {
    if let Some(p) = std::env::var_os("LAMINA_MODEL") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    home.join(".cache/lamina/models/SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// The golden directory and the reference model, shared by the tests (loading
/// and dequantizing takes seconds); `None` after printing why when either is
/// missing.
fn setup() -> Option<(PathBuf, MutexGuard<'static, Reference>)> {
    static MODEL: OnceLock<Option<Mutex<Reference>>> = OnceLock::new();
    let Some(golden) = golden_dir() else {
        eprintln!("SKIPPED: golden directory not found (set LAMINA_GOLDEN)");
        return None;
    };
    let model = MODEL.get_or_init(|| {
        let path = model_path();
        if !path.is_file() {
            eprintln!(
                "SKIPPED: model {} not found (set LAMINA_MODEL)",
                path.display()
            );
            return None;
        }
        let t = Instant::now();
        let loaded = lamina_model::loader::load(&path)
            .unwrap_or_else(|e| panic!("loading {}: {e}", path.display()));
        let r = Reference::new(&loaded.config, &loaded.weights, MAX_CTX)
            .unwrap_or_else(|e| panic!("building the reference: {e}"));
        eprintln!(
            "loaded {} in {:.1}s",
            path.display(),
            t.elapsed().as_secs_f64()
        );
        Some(Mutex::new(r))
    });
    // A test that failed while holding the lock leaves the cache in some
    // state; every forward below starts at position 0, so that is harmless.
    let guard = model.as_ref()?.lock().unwrap_or_else(|e| e.into_inner());
    Some((golden, guard))
}

fn read_json(dir: &Path, name: &str) -> Result<Value> {
    let path = dir.join(name);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

fn read_npy(path: &Path) -> Result<Vec<f32>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let npy =
        npyz::NpyFile::new(&bytes[..]).with_context(|| format!("parsing {}", path.display()))?;
    Ok(npy.into_vec::<f32>()?)
}

fn field<'a>(v: &'a Value, key: &str) -> Result<&'a Value> {
    v.get(key)
        .with_context(|| format!("golden entry without `{key}`"))
}

fn str_field<'a>(v: &'a Value, key: &str) -> Result<&'a str> {
    field(v, key)?
        .as_str()
        .with_context(|| format!("`{key}` is not a string"))
}

fn array<'a>(v: &'a Value, key: &str) -> Result<&'a Vec<Value>> {
    field(v, key)?
        .as_array()
        .with_context(|| format!("`{key}` is not an array"))
}

fn ids(v: &Value, key: &str) -> Result<Vec<u32>> {
    array(v, key)?
        .iter()
        .map(|x| {
            x.as_u64()
                .and_then(|x| u32::try_from(x).ok())
                .with_context(|| format!("bad id in `{key}`"))
        })
        .collect()
}

fn floats(v: &Value, key: &str) -> Result<Vec<f32>> {
    array(v, key)?
        .iter()
        .map(|x| x.as_f64().map(|x| x as f32).context("bad number"))
        .collect()
}

fn float(v: &Value, key: &str) -> Result<f64> {
    field(v, key)?
        .as_f64()
        .with_context(|| format!("`{key}` is not a number"))
}

/// Indices of the `k` largest values, largest first (ties: lower index first).
fn top_k(x: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.sort_by(|&a, &b| x[b].total_cmp(&x[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

/// log(sum(exp(x))) in f64, as the golden files compute it.
fn logsumexp(x: &[f32]) -> f64 {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v)) as f64;
    max + x.iter().map(|v| (*v as f64 - max).exp()).sum::<f64>().ln()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> (f32, usize) {
    a.iter()
        .zip(b)
        .enumerate()
        .map(|(i, (x, y))| ((x - y).abs(), i))
        .fold((0.0, 0), |m, d| if d.0 > m.0 { d } else { m })
}

/// Checks one position's logits against its golden top-10 and logsumexp;
/// returns the largest logit difference seen.
fn check_position(row: &[f32], gold: &Value, what: &str) -> Result<f32> {
    let g_ids = ids(gold, "top10_ids")?;
    let g_logits = floats(gold, "top10_logits")?;
    ensure!(
        g_ids.len() == 10 && g_logits.len() == 10,
        "{what}: golden top-10 is not 10 long"
    );
    let mut worst = 0.0f32;
    for (k, (&id, &want)) in g_ids.iter().zip(&g_logits).enumerate() {
        let got = *row
            .get(id as usize)
            .with_context(|| format!("{what}: golden id {id} outside vocab"))?;
        let diff = (got - want).abs();
        worst = worst.max(diff);
        ensure!(
            diff <= LOGIT_TOL,
            "{what} rank {k} id {id}: reference {got}, golden {want}, diff {diff:.3e}"
        );
    }
    // Ranks may swap only between golden logits closer than the tolerance.
    let ours = top_k(row, 10);
    for (k, &id) in ours.iter().enumerate() {
        if id == g_ids[k] as usize {
            continue;
        }
        let close = |j: usize| (g_logits[k] - g_logits[j]).abs() <= LOGIT_TOL;
        let near_tie = (k > 0 && close(k - 1))
            || (k + 1 < 10 && close(k + 1))
            // Rank 10's golden logit is unknown: our 10th must then be as close to golden's 10th.
            || (k == 9 && (row[id] - g_logits[9]).abs() <= LOGIT_TOL);
        ensure!(
            near_tie,
            "{what} rank {k}: reference id {id} ({}), golden id {} ({}), golden neighbours {:?}",
            row[id],
            g_ids[k],
            g_logits[k],
            &g_logits[k.saturating_sub(1)..(k + 2).min(10)]
        );
        println!(
            "{what} rank {k}: near-tie swap, reference id {id}, golden id {}",
            g_ids[k]
        );
    }
    let lse = logsumexp(row);
    let want = float(gold, "logsumexp")?;
    let diff = (lse - want).abs();
    ensure!(
        diff <= LOGIT_TOL as f64,
        "{what}: logsumexp {lse}, golden {want}, diff {diff:.3e}"
    );
    Ok(worst.max(diff as f32))
}

#[test]
fn logits_match_golden_at_every_position() -> Result<()> {
    let Some((dir, mut r)) = setup() else {
        return Ok(());
    };
    let vocab = r.config().vocab_size;
    let golden = read_json(&dir, "logits.json")?;
    let t_all = Instant::now();
    let mut worst = 0.0f32;
    for p in array(&golden, "prompts")? {
        let name = str_field(p, "name")?;
        if SLOW_PROMPTS.contains(&name) && std::env::var_os("LAMINA_GOLDEN_ALL").is_none() {
            println!("{name}: skipped (set LAMINA_GOLDEN_ALL=1 to include it)");
            continue;
        }
        let input = ids(p, "input_ids")?;
        let t = Instant::now();
        let logits = r.forward(&input, 0)?; // [n, vocab]
        let positions = array(p, "positions")?;
        ensure!(
            positions.len() == input.len(),
            "{name}: {} positions for {} tokens",
            positions.len(),
            input.len()
        );
        let mut top10 = 0.0f32;
        for (i, gold) in positions.iter().enumerate() {
            let row = &logits[i * vocab..(i + 1) * vocab];
            top10 = top10.max(check_position(row, gold, &format!("{name} pos {i}"))?);
        }

        // The whole final-position vector (and every position where golden has them).
        let last = &logits[(input.len() - 1) * vocab..];
        let want = read_npy(&dir.join(str_field(p, "npy_last")?))?;
        ensure!(
            want.len() == vocab,
            "{name}: golden last logits have {} entries",
            want.len()
        );
        let (full, at) = max_abs_diff(last, &want);
        ensure!(
            full <= LOGIT_TOL,
            "{name} last position, id {at}: reference {}, golden {}, diff {full:.3e}",
            last[at],
            want[at]
        );
        let all_path = dir.join(format!("logits_{name}_all.npy"));
        if all_path.is_file() {
            let want = read_npy(&all_path)?;
            ensure!(
                want.len() == logits.len(),
                "{name}: golden all-position logits have {} entries",
                want.len()
            );
            let (d, at) = max_abs_diff(&logits, &want);
            ensure!(
                d <= LOGIT_TOL,
                "{name} all positions, pos {} id {}: diff {d:.3e}",
                at / vocab,
                at % vocab
            );
            worst = worst.max(d);
        }
        worst = worst.max(top10).max(full);
        println!(
            "{name}: {} tokens, max |diff| top-10/logsumexp {top10:.2e}, full last row {full:.2e}, {:.1}s",
            input.len(),
            t.elapsed().as_secs_f64()
        );
    }
    println!(
        "max |reference - golden| {worst:.3e} (tolerance {LOGIT_TOL:.1e}), {:.1}s",
        t_all.elapsed().as_secs_f64()
    );
    Ok(())
}

#[test]
fn greedy_continuations_match_golden() -> Result<()> {
    let Some((dir, mut r)) = setup() else {
        return Ok(());
    };
    let golden = read_json(&dir, "greedy.json")?;
    let t_all = Instant::now();
    let mut worst = 0.0f32;
    for p in array(&golden, "prompts")? {
        let name = str_field(p, "name")?;
        let prompt = ids(p, "prompt_ids")?;
        let new_ids = ids(p, "new_ids")?;
        let steps = array(p, "steps")?;
        // Teacher forcing: feed golden's token at every step, so one
        // legitimate near-tie flip does not end the comparison.
        let mut logits = r.forward_last(&prompt, 0)?;
        for (s, (&want, step)) in new_ids.iter().zip(steps).take(GREEDY_STEPS).enumerate() {
            let got = argmax(&logits) as u32;
            let top = float(step, "logit")? as f32;
            let margin = float(step, "margin")?;
            let diff = (logits[want as usize] - top).abs();
            worst = worst.max(diff);
            ensure!(
                diff <= LOGIT_TOL,
                "{name} step {s}: logit of golden token {want} is {}, golden {top}",
                logits[want as usize]
            );
            if got != want {
                ensure!(
                    margin <= LOGIT_TOL as f64,
                    "{name} step {s}: reference chose {got}, golden {want} with margin {margin:.3e}"
                );
                println!(
                    "{name} step {s}: flip to {got} (golden {want}, margin {margin:.2e}) accepted"
                );
            }
            if s + 1 < GREEDY_STEPS {
                logits = r.forward_last(&[want], prompt.len() + s)?;
            }
        }
    }
    println!(
        "greedy: {GREEDY_STEPS} steps of 8 prompts, max |top logit diff| {worst:.3e}, {:.1}s",
        t_all.elapsed().as_secs_f64()
    );
    Ok(())
}
