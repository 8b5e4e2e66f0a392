//! `lamina bench`: prompt processing (pp) and generation (tg) speed, in the
//! manner of llama-bench: pp N = one batch of N tokens from an empty cache,
//! tg N = N single-token decode steps from an empty cache; each repeated,
//! mean ± sd of tokens/s. With `-d D` (llama-bench's depth) the cache first
//! holds D tokens (filled once, untimed; each repetition goes back to D).
//! With `--seqs S` the tg test decodes S sequences together, one batched
//! step a token each (what `lamina serve --parallel S` does with S busy
//! slots), and reports their summed tokens/s. Optional per-op GPU time from
//! timestamp queries.

use std::time::Instant;

use anyhow::{Result, bail};
use clap::{Args, ValueEnum};
use std::sync::Arc;

use lamina_model::batch::BatchDecoder;
use lamina_model::session::{SamplerConfig, Session};
use rand::{Rng, SeedableRng};

use crate::common::{ModelArgs, gpu_model, load_host_model};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Md,
    Json,
}

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt tokens for the pp test (0 = skip).
    #[arg(short = 'p', long = "n-prompt", default_value_t = 512)]
    pub n_prompt: u32,
    /// Generated tokens for the tg test (0 = skip).
    #[arg(short = 'n', long = "n-gen", default_value_t = 128)]
    pub n_gen: u32,
    /// Repetitions of each test (after one warm-up run).
    #[arg(short = 'r', long = "repetitions", default_value_t = 3)]
    pub repetitions: u32,
    /// Tokens already in the cache when each test starts (llama-bench's -d).
    #[arg(short = 'd', long = "depth", default_value_t = 0)]
    pub depth: u32,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Md)]
    pub output: Output,
    /// tg test: this many sequences decoded together, one batched step per
    /// token of each (as `lamina serve --parallel N` does); t/s is their sum.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub seqs: u32,
    /// Also time every op on the GPU (timestamp queries) and print a table.
    #[arg(long)]
    pub profile: bool,
}

fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (m, var.sqrt())
}

struct TestResult {
    name: String,
    n_prompt: u32,
    n_gen: u32,
    samples: Vec<f64>,
}

/// Feeds each session `depth` random tokens (in prompt steps, untimed): the
/// cache the tests start from.
fn fill(
    sessions: &mut [Session],
    depth: u32,
    tokens: &mut impl FnMut(u32) -> Vec<u32>,
) -> Result<()> {
    if depth == 0 {
        return Ok(());
    }
    let what = match sessions.len() {
        1 => "the cache".to_string(),
        n => format!("{n} caches"),
    };
    let sp = crate::common::spinner(&format!("filling {what} with {depth} tokens"));
    for s in sessions {
        s.feed(&tokens(depth))?;
    }
    sp.finish_and_clear();
    Ok(())
}

pub fn run(a: &BenchArgs) -> Result<()> {
    if a.n_prompt == 0 && a.n_gen == 0 {
        bail!("nothing to run: both -p and -n are 0");
    }
    if a.repetitions == 0 {
        bail!("-r/--repetitions must be at least 1");
    }
    let host = load_host_model(&a.model)?;
    let need = (a.n_prompt.max(a.n_gen) as usize).max(1) + a.depth as usize;
    let mut margs = a.model.clone();
    margs.ctx_size = Some(a.model.ctx_size.filter(|&c| c > 0).unwrap_or(need));
    let ctx = margs.ctx_size.unwrap_or(need);
    if ctx < need {
        bail!("-c/--ctx-size {ctx} is smaller than the test length {need}");
    }
    margs.batch_size = a.model.batch_size.min(a.n_prompt.max(a.depth).max(1));
    let model = gpu_model(&margs, &host, need)?;
    let desc = format!("{} {}", host.source, host.file_type);
    let vocab = host.config.vocab_size as u32;
    drop(host);
    let mut session = Session::new(model.clone(), margs.batch_size, SamplerConfig::greedy())?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let mut tokens = |n: u32| -> Vec<u32> { (0..n).map(|_| rng.random_range(0..vocab)).collect() };
    if a.profile && !session.enable_profiling()? {
        eprintln!("note: this adapter has no timestamp queries; no per-op profile");
    }
    let at = if a.depth > 0 {
        format!(" @ d{}", a.depth)
    } else {
        String::new()
    };
    // Fill the cache to the depth once; every repetition goes back to it.
    // With --seqs the tg test runs on forks, so this session is filled only
    // for the pp test.
    let start = session.pos() + a.depth as usize;
    if a.n_prompt > 0 || a.seqs == 1 {
        fill(std::slice::from_mut(&mut session), a.depth, &mut tokens)?;
    }
    let rewind = |s: &mut Session| -> Result<()> {
        if a.depth > 0 {
            s.truncate(start)?;
        } else {
            s.reset();
        }
        Ok(())
    };
    let mut results = Vec::new();
    if a.n_prompt > 0 {
        let mut samples = Vec::new();
        for rep in 0..=a.repetitions {
            let prompt = tokens(a.n_prompt);
            rewind(&mut session)?;
            let t0 = Instant::now();
            session.feed(&prompt)?;
            let s = t0.elapsed().as_secs_f64();
            if rep > 0 {
                samples.push(f64::from(a.n_prompt) / s);
            }
        }
        results.push(TestResult {
            name: format!("pp{}{at}", a.n_prompt),
            n_prompt: a.n_prompt,
            n_gen: 0,
            samples,
        });
    }
    let mut batch = None;
    if a.n_gen > 0 && a.seqs > 1 {
        // Forks of the model: its weights, a KV cache each (the slots of
        // one buffer per layer, as `lamina serve` makes them).
        let mut seqs = model
            .forks(a.seqs as usize)?
            .into_iter()
            .map(|m| {
                Ok(Session::new(
                    Arc::new(m),
                    margs.batch_size,
                    SamplerConfig::greedy(),
                )?)
            })
            .collect::<Result<Vec<_>>>()?;
        fill(&mut seqs, a.depth, &mut tokens)?;
        let mut dec = BatchDecoder::new(&seqs.iter().collect::<Vec<_>>())?;
        if a.profile {
            dec.executor_mut().enable_profiling();
        }
        let mut samples = Vec::new();
        for rep in 0..=a.repetitions {
            for s in &mut seqs {
                rewind(s)?;
            }
            let mut t: Vec<Option<u32>> = tokens(a.seqs).into_iter().map(Some).collect();
            let t0 = Instant::now();
            for _ in 0..a.n_gen {
                let mut refs: Vec<&mut Session> = seqs.iter_mut().collect();
                t = dec.step(&mut refs, &t)?;
            }
            let s = t0.elapsed().as_secs_f64();
            if rep > 0 {
                samples.push(f64::from(a.n_gen * a.seqs) / s);
            }
        }
        results.push(TestResult {
            name: format!("tg{}{at} x{}", a.n_gen, a.seqs),
            n_prompt: 0,
            n_gen: a.n_gen,
            samples,
        });
        batch = Some(dec);
    } else if a.n_gen > 0 {
        let mut samples = Vec::new();
        for rep in 0..=a.repetitions {
            rewind(&mut session)?;
            let mut t = tokens(1)[0];
            let t0 = Instant::now();
            for _ in 0..a.n_gen {
                t = session.feed(&[t])?;
            }
            let s = t0.elapsed().as_secs_f64();
            if rep > 0 {
                samples.push(f64::from(a.n_gen) / s);
            }
        }
        results.push(TestResult {
            name: format!("tg{}{at}", a.n_gen),
            n_prompt: 0,
            n_gen: a.n_gen,
            samples,
        });
    }
    let wbytes = model.weight_bytes_per_token();
    let kv_bytes = model.kv.format.bytes_per_token(&model.config);
    let device = model.gpu.describe();
    match a.output {
        Output::Md => {
            println!("| model | weights | kv | device | test | t/s |");
            println!("| --- | --- | --- | --- | --- | ---: |");
            for r in &results {
                let (m, sd) = mean_sd(&r.samples);
                println!(
                    "| {desc} | {} | {} | {} | {} | {m:.2} ± {sd:.2} |",
                    a.model.weights.name(),
                    model.kv.format.name(),
                    model.gpu.info.name,
                    r.name
                );
            }
            if let Some(tg) = results.iter().find(|r| r.n_gen > 0) {
                let (m, _) = mean_sd(&tg.samples);
                let per = match a.seqs {
                    1 => "token".to_string(),
                    s => format!("step of {s} tokens"),
                };
                println!(
                    "\nweights streamed per {per}: {:.1} MiB; effective {:.2} GB/s at tg; KV {kv_bytes:.1} bytes/token (+{:.2} MiB fixed)",
                    wbytes as f64 / 1048576.0,
                    wbytes as f64 * m / f64::from(a.seqs) / 1e9,
                    model.kv.fixed_bytes() as f64 / 1048576.0
                );
            }
            eprintln!("device: {device}");
        }
        Output::Json => {
            let tests: Vec<_> = results
                .iter()
                .map(|r| {
                    let (m, sd) = mean_sd(&r.samples);
                    serde_json::json!({
                        "test": r.name, "n_prompt": r.n_prompt, "n_gen": r.n_gen,
                        "avg_ts": m, "stddev_ts": sd, "samples_ts": r.samples,
                    })
                })
                .collect();
            let tg = results
                .iter()
                .find(|r| r.n_gen > 0)
                .map(|r| mean_sd(&r.samples).0);
            let j = serde_json::json!({
                "model": desc, "weights": a.model.weights.name(), "kv": model.kv.format.name(),
                "device": device, "repetitions": a.repetitions,
                "weight_bytes_per_token": wbytes, "kv_bytes_per_token": kv_bytes,
                "kv_fixed_bytes": model.kv.fixed_bytes(), "depth": a.depth,
                "pivot": model.kv.pivot,
                "effective_gb_s": tg.map(|t| wbytes as f64 * t / f64::from(a.seqs) / 1e9),
                "seqs": a.seqs,
                "tests": tests,
            });
            println!("{}", serde_json::to_string_pretty(&j)?);
        }
    }
    if a.profile {
        let batched = batch.as_ref().map(|d| ("batched decode", d.executor()));
        for (name, ex) in session.executors().chain(batched) {
            let Some(p) = ex.profile() else { continue };
            let rows = p.rows();
            let total: f64 = rows.iter().map(|r| r.total_ms).sum();
            let dispatches: u64 = rows.iter().map(|r| r.dispatches).sum();
            eprintln!("\nper-op GPU time, {name} graph ({} steps):", p.steps);
            eprintln!("| op | kernel | dispatches | ms | share |");
            eprintln!("| --- | --- | ---: | ---: | ---: |");
            for r in rows {
                eprintln!(
                    "| {} | {} | {} | {:.2} | {:.1}% |",
                    r.op,
                    r.kernel,
                    r.dispatches,
                    r.total_ms,
                    100.0 * r.total_ms / total.max(1e-12)
                );
            }
            if p.steps > 0 {
                let per_step = dispatches as f64 / p.steps as f64;
                let layers = model.config.n_layers.max(1);
                eprintln!(
                    "dispatches per step: {per_step:.1}, {:.2} per layer ({layers} layers; \
                     the embedding, final norm, lm_head and sampling counted in)",
                    per_step / layers as f64
                );
            }
        }
    }
    Ok(())
}
