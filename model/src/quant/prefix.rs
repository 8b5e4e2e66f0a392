//! PrefixQuant's outlier tokens (arXiv 2410.05265): a few tokens (the
//! sequence's first, often "." or "\n") carry activations a hundred times
//! the median, which rules out one static activation scale per tensor. The
//! search finds them on calibration text; their full-precision KV then
//! leads every sequence as the pivot (`crate::pivot`), so no quantized
//! activation ever sees them.
//!
//! The statistic, at the down projection's input of every layer (after the
//! online Hadamard of a rotated model): a token is an outlier when its max
//! |x| over channels exceeds [`PrefixOptions::threshold`] times the median
//! of the window's token maxima. The number of prefix tokens is the worst
//! layer's mean outlier count per window, rounded up; the tokens are the
//! most frequent outlier ids (position 0, which every window's first token
//! holds, not counted), with BOS last.

use std::collections::HashMap;

use crate::checkpoint::{ActSite, LlamaConfig, LlamaWeights, PrefixRecord};
use crate::reference::Reference;
use crate::{ModelError, Result};

/// How many prefix tokens `--prefix` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrefixMode {
    None,
    /// As many as the search finds.
    Auto,
    /// Exactly this many (the most frequent outlier ids; BOS last).
    Count(usize),
}

impl std::str::FromStr for PrefixMode {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "none" => Ok(PrefixMode::None),
            "auto" => Ok(PrefixMode::Auto),
            n => n
                .parse::<usize>()
                .map(|n| {
                    if n == 0 {
                        PrefixMode::None
                    } else {
                        PrefixMode::Count(n)
                    }
                })
                .map_err(|_| {
                    ModelError::Input(format!("--prefix `{s}`: auto, none or a token count"))
                }),
        }
    }
}

impl PrefixMode {
    pub fn name(self) -> String {
        match self {
            PrefixMode::None => "none".into(),
            PrefixMode::Auto => "auto".into(),
            PrefixMode::Count(n) => n.to_string(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct PrefixOptions {
    pub mode: PrefixMode,
    /// A token is an outlier above this multiple of the median token max.
    pub threshold: f64,
    /// Most prefix tokens `auto` may choose.
    pub max_tokens: usize,
}

impl Default for PrefixOptions {
    fn default() -> Self {
        PrefixOptions {
            mode: PrefixMode::Auto,
            threshold: 64.0,
            max_tokens: 8,
        }
    }
}

/// What the search saw.
#[derive(Debug, Clone)]
pub struct OutlierStats {
    /// Per layer, the mean outlier count per window.
    pub layer_mean: Vec<f64>,
    /// Outlier ids (position 0 excluded) with their count and largest ratio,
    /// most frequent first.
    pub ids: Vec<(u32, usize, f64)>,
    /// The largest ratio of each window's first token.
    pub first_ratio: f64,
}

fn median(v: &[f32]) -> f32 {
    let mut s = v.to_vec();
    s.sort_by(f32::total_cmp);
    let n = s.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        s[n / 2]
    } else {
        0.5 * (s[n / 2 - 1] + s[n / 2])
    }
}

/// Outlier statistics of `windows` (each starting with the token every
/// sequence starts with, e.g. BOS) through the f32 model.
pub fn outlier_stats(
    cfg: &LlamaConfig,
    w: &LlamaWeights,
    windows: &[Vec<u32>],
    threshold: f64,
    mut progress: impl FnMut(usize, usize),
) -> Result<OutlierStats> {
    let seq = windows.iter().map(Vec::len).max().unwrap_or(0);
    if seq < 2 {
        return Err(ModelError::Input(
            "the outlier search needs calibration windows of at least 2 tokens".into(),
        ));
    }
    let mut r = Reference::new(cfg, w, seq)?;
    let mut layer_count = vec![0usize; cfg.n_layers];
    let mut ids: HashMap<u32, (usize, f64)> = HashMap::new();
    let mut first_ratio = 0.0f64;
    for (i, win) in windows.iter().enumerate() {
        progress(i, windows.len());
        r.reset();
        let h = r.forward_site_max(win, 0, 0)?;
        for (l, sites) in h.site_max.iter().enumerate() {
            let tm = &sites[ActSite::DownIn.index()];
            let med = f64::from(median(tm)).max(f64::MIN_POSITIVE);
            for (pos, &m) in tm.iter().enumerate() {
                let ratio = f64::from(m) / med;
                if pos == 0 {
                    first_ratio = first_ratio.max(ratio);
                }
                if ratio > threshold {
                    layer_count[l] += 1;
                    if pos > 0 {
                        let e = ids.entry(win[pos]).or_insert((0, 0.0));
                        e.0 += 1;
                        e.1 = e.1.max(ratio);
                    }
                }
            }
        }
    }
    progress(windows.len(), windows.len());
    let n = windows.len().max(1) as f64;
    let mut ids: Vec<(u32, usize, f64)> = ids.into_iter().map(|(t, (c, r))| (t, c, r)).collect();
    ids.sort_by(|a, b| b.1.cmp(&a.1).then(b.2.total_cmp(&a.2)).then(a.0.cmp(&b.0)));
    Ok(OutlierStats {
        layer_mean: layer_count.iter().map(|&c| c as f64 / n).collect(),
        ids,
        first_ratio,
    })
}

/// The prefix tokens for `stats` under `o`: `ceil(worst layer mean)`
/// tokens (or the count asked for), the most frequent outlier ids, BOS
/// last. `texts` names each token for people.
pub fn choose(
    stats: &OutlierStats,
    o: &PrefixOptions,
    bos: Option<u32>,
    text: impl Fn(u32) -> String,
) -> Result<PrefixRecord> {
    let worst = stats.layer_mean.iter().copied().fold(0.0, f64::max);
    let n = match o.mode {
        PrefixMode::None => 0,
        PrefixMode::Auto => (worst.ceil() as usize).min(o.max_tokens),
        PrefixMode::Count(n) => n,
    };
    let mut tokens: Vec<u32> = Vec::new();
    let mut ratios = Vec::new();
    let others = n.saturating_sub(usize::from(bos.is_some()));
    for &(t, _, r) in stats.ids.iter().filter(|(t, _, _)| Some(*t) != bos) {
        if tokens.len() == others {
            break;
        }
        tokens.push(t);
        ratios.push(r);
    }
    if n > 0
        && let Some(b) = bos
    {
        tokens.push(b);
        ratios.push(stats.first_ratio);
    }
    if tokens.len() < n {
        return Err(ModelError::Input(format!(
            "--prefix {}: the calibration text has only {} outlier tokens to prefix",
            o.mode.name(),
            tokens.len()
        )));
    }
    Ok(PrefixRecord {
        texts: tokens.iter().map(|&t| text(t)).collect(),
        tokens,
        ratios,
        mode: o.mode.name(),
        threshold: o.threshold,
        worst_layer_mean: worst,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(layer_mean: Vec<f64>) -> OutlierStats {
        OutlierStats {
            layer_mean,
            ids: vec![(13, 9, 300.0), (198, 4, 120.0), (1, 2, 90.0)],
            first_ratio: 2000.0,
        }
    }

    #[test]
    fn worst_layer_sets_the_count_and_bos_goes_last() {
        let o = PrefixOptions::default();
        let name = |t: u32| format!("<{t}>");
        let p = choose(&stats(vec![0.5, 2.2, 1.0]), &o, Some(1), name).unwrap();
        assert_eq!(p.tokens, vec![13, 198, 1]);
        assert_eq!(p.texts[2], "<1>");
        assert_eq!(p.ratios, vec![300.0, 120.0, 2000.0]);
        let p = choose(&stats(vec![1.0]), &o, Some(1), name).unwrap();
        assert_eq!(p.tokens, vec![1]);
        let none = PrefixOptions {
            mode: PrefixMode::None,
            ..o.clone()
        };
        assert!(
            choose(&stats(vec![3.0]), &none, Some(1), name)
                .unwrap()
                .tokens
                .is_empty()
        );
        let many = PrefixOptions {
            mode: PrefixMode::Count(5),
            ..o
        };
        assert!(choose(&stats(vec![1.0]), &many, Some(1), name).is_err());
        assert_eq!("2".parse::<PrefixMode>().unwrap(), PrefixMode::Count(2));
        assert!("x".parse::<PrefixMode>().is_err());
    }
}
