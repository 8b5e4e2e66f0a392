//! How a `.lamina.safetensors` file was made: its `lamina.recipe`, typed.
//!
//! `lamina quantize` writes it; loaders read it; `--pivot-only` and the
//! pivot's source look-up read `source` from it. Every field is optional
//! on reading (files from older versions lack some), and keys this version
//! does not know are kept in `extra` and written back unchanged.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The recipe of a quantized file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Recipe {
    /// Short name, e.g. `SLIM-4b-g128`; the file's `file_type`.
    pub name: String,
    /// `rtn`, `gptq` or `slim`.
    pub method: String,
    /// Mean bits per weight of the linear layers asked for.
    pub bits: f64,
    /// Columns per quantization group.
    pub group: u32,
    /// Calibration windows used (0: none).
    pub samples: usize,
    /// Tokens per calibration window.
    pub seq_len: usize,
    pub seed: u64,
    /// GPTQ's damping, as a fraction of the mean Hessian diagonal.
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
    /// Keys this version does not know, kept as they were.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
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
    pub lr: f64,
    /// Calibration windows.
    pub windows: usize,
    pub seq_len: usize,
    pub seed: u64,
    /// The calibration text's path (None: the default text).
    pub calib: Option<String>,
    /// Each layer's attention-output MSE before and after tuning.
    pub mse_before: Vec<f64>,
    pub mse_after: Vec<f64>,
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
}
