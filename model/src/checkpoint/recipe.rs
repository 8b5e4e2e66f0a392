//! How a `.lamina.safetensors` file was made: its `lamina.recipe`, typed.
//!
//! `lamina quantize` writes it; loaders read it; `--pivot-only` and the
//! pivot's source look-up read `source` from it. Every field is optional
//! on reading (files from older versions lack some), keys this version
//! does not know are kept in `extra` and written back unchanged, and a
//! number JSON could not hold (a NaN or infinity is written as `null`)
//! reads back as NaN.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

/// An f64 that reads `null` as NaN (serde_json writes non-finite numbers
/// as `null`).
fn nan_if_null<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// [`nan_if_null`] for each element of a list.
fn nans_if_null<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
    let v = Vec::<Option<f64>>::deserialize(d)?;
    Ok(v.into_iter().map(|x| x.unwrap_or(f64::NAN)).collect())
}

/// The recipe of a quantized file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Recipe {
    /// Short name, e.g. `SLIM-4b-g128`; the file's `file_type`.
    pub name: String,
    /// `rtn`, `gptq` or `slim`.
    pub method: String,
    /// Mean bits per weight of the linear layers asked for.
    #[serde(deserialize_with = "nan_if_null")]
    pub bits: f64,
    /// Columns per quantization group.
    pub group: u32,
    /// Calibration windows used (0: none).
    pub samples: usize,
    /// Tokens per calibration window.
    pub seq_len: usize,
    pub seed: u64,
    /// GPTQ's damping, as a fraction of the mean Hessian diagonal.
    #[serde(deserialize_with = "nan_if_null")]
    pub damp: f64,
    /// GPTQ's column order by decreasing Hessian diagonal.
    pub act_order: bool,
    /// Format of the embedding and lm_head (a weight-format name).
    pub embed: String,
    /// Path of the full-precision source checkpoint.
    pub source: String,
    /// The source's weight format, e.g. `Q4_1`.
    pub source_type: String,
    /// Seconds the weights' quantization took.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
    /// Seconds the last `--pivot-only` run took.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pivot_seconds: Option<f64>,
    /// Bytes of calibration text read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub calib_bytes: Option<usize>,
    /// The calibration text's path, when not the default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub calib: Option<String>,
    /// IntactKV's pivot calibration, when the pivot was tuned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pivot_calibration: Option<PivotCalibration>,
    /// The rotation the weights went through (`--rotate`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rotation: Option<RotationRecord>,
    /// PrefixQuant's prefixed outlier tokens (`--prefix`), whose KV leads the pivot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix: Option<PrefixRecord>,
    /// Quantized activations (`--act-bits`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub act: Option<super::ActQuant>,
    /// Static KV-cache scales (`--kv-bits`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kv: Option<super::KvStatic>,
    /// Keys this version does not know, kept as they were.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// How the weights were rotated (`crate::quant::rotate`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RotationRecord {
    /// Seed of the residual rotation's random signs (or random orthogonal matrix).
    pub seed: u64,
    /// `hadamard` (random-sign Hadamard) or `orthogonal` (a random orthogonal
    /// matrix, for widths without a Hadamard matrix).
    pub residual: String,
    /// Whether a tied lm_head was untied before rotating (false reproduces
    /// the reference code's recipe, which rotates the shared matrix twice).
    pub untied: bool,
}

/// PrefixQuant's prefix: outlier tokens found on calibration text, whose
/// full-precision KV leads every sequence.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PrefixRecord {
    /// The tokens, in cache order (BOS last when it is one of them).
    pub tokens: Vec<u32>,
    /// Their text, for people.
    pub texts: Vec<String>,
    /// Each token's largest outlier ratio (token max / median token max) seen.
    #[serde(deserialize_with = "nans_if_null")]
    pub ratios: Vec<f64>,
    /// `auto` (searched) or the number asked for.
    pub mode: String,
    /// Outlier threshold on the ratio.
    #[serde(deserialize_with = "nan_if_null")]
    pub threshold: f64,
    /// The worst layer's mean outlier count per window.
    #[serde(deserialize_with = "nan_if_null")]
    pub worst_layer_mean: f64,
}

impl Recipe {
    /// The full-precision source's path, when the recipe names one.
    pub fn source_path(&self) -> Option<&std::path::Path> {
        (!self.source.is_empty()).then(|| std::path::Path::new(&self.source))
    }
}

/// How the pivot's KV was tuned for the quantized weights (IntactKV's
/// calibration, `quantize --calibrate-pivot`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PivotCalibration {
    /// Adam steps per layer.
    pub steps: usize,
    #[serde(deserialize_with = "nan_if_null")]
    pub lr: f64,
    /// Calibration windows.
    pub windows: usize,
    /// Tokens per window (files from before it was recorded lack it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq_len: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// The calibration text's path (None: the default text).
    pub calib: Option<String>,
    /// Each layer's attention-output MSE before and after tuning.
    #[serde(deserialize_with = "nans_if_null")]
    pub mse_before: Vec<f64>,
    #[serde(deserialize_with = "nans_if_null")]
    pub mse_after: Vec<f64>,
    /// Keys this version does not know, kept as they were.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_survive_a_round_trip() {
        let text = r#"{"name":"RTN-4b-g128","bits":4.0,"future":{"x":1},"source":"/m.gguf"}"#;
        let r: Recipe = serde_json::from_str(text).unwrap();
        assert_eq!(r.name, "RTN-4b-g128");
        assert_eq!(r.source_path(), Some(std::path::Path::new("/m.gguf")));
        assert_eq!(r.extra["future"], serde_json::json!({"x": 1}));
        let back = serde_json::to_value(&r).unwrap();
        assert_eq!(back["future"], serde_json::json!({"x": 1}));
        assert!(back.get("pivot_calibration").is_none());
    }

    /// serde_json writes a NaN as `null`; such a recipe must still load
    /// (a pivot calibration whose loss diverged, say), and keys nested in
    /// the pivot record survive too.
    #[test]
    fn nulls_read_as_nan() {
        let fit = PivotCalibration {
            lr: 0.01,
            mse_before: vec![1.0, f64::NAN],
            mse_after: vec![f64::INFINITY, 0.5],
            ..Default::default()
        };
        let r = Recipe {
            bits: f64::NAN,
            pivot_calibration: Some(fit),
            ..Default::default()
        };
        let text = serde_json::to_string(&r).unwrap();
        assert!(text.contains("null"), "{text}");
        let back: Recipe = serde_json::from_str(&text).unwrap();
        assert!(back.bits.is_nan());
        let fit = back.pivot_calibration.unwrap();
        assert_eq!(fit.mse_before[0], 1.0);
        assert!(fit.mse_before[1].is_nan() && fit.mse_after[0].is_nan());
        assert_eq!(fit.seq_len, None);
        let old = r#"{"pivot_calibration":{"steps":150,"lr":0.01,"windows":4,"mse_before":[1.0],"mse_after":[0.9],"note":"x"}}"#;
        let r: Recipe = serde_json::from_str(old).unwrap();
        let fit = r.pivot_calibration.unwrap();
        assert_eq!((fit.steps, fit.seed), (150, None));
        assert_eq!(fit.extra["note"], "x");
    }
}
