//! The CPU decoders of the GGUF block formats beyond Q4_0 / Q4_1 / Q8_0
//! (Q5_0, Q5_1, Q2_K..Q6_K, IQ4_NL, IQ4_XS; `lamina_model::checkpoint::kquant`)
//! against gguf-py's `gguf.quants.dequantize` on real blocks that
//! llama.cpp's `llama-quantize` wrote: shared/golden/archs/kquant_blocks.json
//! (see its README), four blocks per format with their raw bytes and
//! gguf-py's f32 values.
//!
//! Both sides do the same f32 operations in the same order, so every value
//! must match bit for bit (the sign of a zero included). The file's type ids
//! and block sizes must also equal Lamina's ggml type table.
//!
//! Without the shared directory the test prints a notice and passes.

use anyhow::{Context, Result, bail, ensure};
use lamina_model::checkpoint::ggml::{dequantize, ggml_type_layout, ggml_type_name, host_dtype};
use serde_json::Value;

/// The formats the file must cover: every block format Lamina decodes on
/// the CPU through `kquant`.
const FORMATS: [&str; 9] = [
    "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS",
];

fn hex_bytes(hex: &str) -> Result<Vec<u8>> {
    ensure!(hex.len().is_multiple_of(2), "odd hex length {}", hex.len());
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).context("bad hex"))
        .collect()
}

/// The f32 values of a JSON array (written from float32, so exact in f64).
fn f32_values(v: &Value) -> Result<Vec<f32>> {
    v.as_array()
        .context("values is not an array")?
        .iter()
        .map(|x| {
            x.as_f64()
                .map(|x| x as f32)
                .context("value is not a number")
        })
        .collect()
}

/// Index of the first value whose bits differ, with a message.
fn first_difference(got: &[f32], want: &[f32]) -> Option<String> {
    let i = got
        .iter()
        .zip(want)
        .position(|(a, b)| a.to_bits() != b.to_bits())?;
    let (a, b) = (got[i], want[i]);
    let what = if a == b { " (sign of zero)" } else { "" };
    Some(format!(
        "element {i}: got {a:e} ({:#010x}) want {b:e} ({:#010x}){what}",
        a.to_bits(),
        b.to_bits()
    ))
}

#[test]
fn blocks_match_gguf_py_bit_for_bit() -> Result<()> {
    let path = lamina_tests::shared_dir().join("golden/archs/kquant_blocks.json");
    if !path.is_file() {
        eprintln!("SKIPPED: {} not found", path.display());
        return Ok(());
    }
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let golden: Value = serde_json::from_str(&text)?;
    let types = golden["types"].as_object().context("no `types` object")?;
    let missing = golden["missing_types"].as_array().map_or(0, Vec::len);
    ensure!(
        missing == 0,
        "the file lists missing types: {}",
        golden["missing_types"]
    );

    let (mut blocks, mut values) = (0, 0);
    for name in FORMATS {
        let t = types
            .get(name)
            .with_context(|| format!("{name} not in the file"))?;
        let id = t["ggml_type_id"].as_u64().context("ggml_type_id")? as u32;
        let elems = t["block_elems"].as_u64().context("block_elems")? as usize;
        let bytes = t["block_bytes"].as_u64().context("block_bytes")? as usize;
        ensure!(
            ggml_type_name(id) == name,
            "{name}: type id {id} is {}",
            ggml_type_name(id)
        );
        ensure!(
            ggml_type_layout(id) == Some((elems, bytes)),
            "{name}: file has blocks of {elems} elements in {bytes} bytes, the table {:?}",
            ggml_type_layout(id)
        );
        let dtype = host_dtype(id).with_context(|| format!("{name}: no host dtype"))?;
        ensure!(
            (dtype.block_size(), dtype.block_bytes()) == (elems, Some(bytes)),
            "{name}: HostDType::{dtype:?} says {} elements in {:?} bytes",
            dtype.block_size(),
            dtype.block_bytes()
        );

        let (mut all_bytes, mut all_values) = (Vec::new(), Vec::new());
        let list = t["blocks"].as_array().context("blocks")?;
        ensure!(list.len() == 4, "{name}: {} blocks, expected 4", list.len());
        for b in list {
            let index = &b["block_index"];
            let raw = hex_bytes(b["hex"].as_str().context("hex")?)?;
            let want = f32_values(&b["values"])?;
            ensure!(
                raw.len() == bytes && want.len() == elems,
                "{name} block {index}: {} bytes, {} values",
                raw.len(),
                want.len()
            );
            let got = dequantize(dtype, &raw, elems)?;
            if let Some(diff) = first_difference(&got, &want) {
                bail!("{name} block {index} (tensor {}): {diff}", t["tensor"]);
            }
            blocks += 1;
            values += elems;
            all_bytes.extend(raw);
            all_values.extend(want);
        }
        // The four blocks in one call: the decoder steps block by block.
        let got = dequantize(dtype, &all_bytes, all_values.len())?;
        if let Some(diff) = first_difference(&got, &all_values) {
            bail!("{name}, four blocks in one call: {diff}");
        }
        println!("{name}: {} blocks bit-exact", list.len());
    }
    println!(
        "{blocks} blocks ({values} values) of {} formats bit-exact",
        FORMATS.len()
    );
    Ok(())
}
