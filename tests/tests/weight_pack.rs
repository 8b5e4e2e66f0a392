//! Weight packing on the host, no GPU: llama.cpp's blocks (Q4_0, Q4_1,
//! Q8_0, the K-quants, f32 / f16) into Lamina's code and scale planes, row
//! ranges (shards), and the Mixed format's chunks and layout. The kernels
//! that read these planes are checked in matmul.rs.

use half::f16;
use lamina_engine::weight::{
    self, HostData, HostWeight, MixedLayout, PackedWeight, Planes, dequantize_packed, pack_f32,
    pack_ggml,
};
use lamina_engine::{EngineError, WeightFormat};
use lamina_tests::{rand_vec, random_ggml};
use rand::{Rng, SeedableRng};

#[test]
fn mixed_chunks_roundtrip_every_width() {
    let mut r = rand::rngs::StdRng::seed_from_u64(5);
    for bits in 1..=8u32 {
        let q: [u32; 32] = std::array::from_fn(|_| r.random_range(0..1u32 << bits));
        let words = weight::mixed_chunk(&q, bits);
        assert_eq!(words.len(), bits as usize);
        for (k, &want) in q.iter().enumerate() {
            assert_eq!(
                weight::mixed_code(&words, bits, k),
                want,
                "bits {bits} k {k}"
            );
        }
    }
    // 3 bits: a 2-bit segment (low bits) then a 1-bit segment.
    let mut q = [0u32; 32];
    q[1] = 0b110;
    let w = weight::mixed_chunk(&q, 3);
    assert_eq!(w, vec![0b10 << 2, 0, 1 << 1]);
}

#[test]
fn mixed_layout_counts_and_rejects() {
    // SmolLM2's 576 columns in groups of 128: four full groups and one of 64.
    let l = MixedLayout::new(128, 576, vec![2, 3, 2, 1, 4]).unwrap();
    assert_eq!(l.group_len(4), 64);
    assert_eq!(l.row_words(), (2 + 3 + 2 + 1) * 4 + 4 * 2);
    // The GPU table of 3 rows: groups by class (2 * (bits - 1), + 1 for the
    // scalar path): group 3 (1 bit), 0 and 2 (2 bits), 1 (3 bits), then the
    // short group 4 (4 bits, two chunks: scalar), whose region starts after
    // 3 rows of the other groups' 32 words.
    let t = l.gpu_table(3);
    assert_eq!(t[..9], [0, 1, 1, 3, 3, 4, 4, 4, 5]);
    assert_eq!(t[17..19], [3 * 8 + 3 * 12 + 3 * 8, 3 | 4 << 20]);
    assert_eq!(t[25..27], [3 * 32, 4 | 2 << 20]);
    // Codes 2.33 bits on average, plus 32 bits of scale and min per group.
    let bpw = l.bits_per_weight();
    assert!(
        (bpw - (40.0 * 32.0 + 5.0 * 32.0) / 576.0).abs() < 1e-12,
        "{bpw}"
    );
    for (g, c, b) in [
        (48, 576, vec![2; 12]),
        (128, 100, vec![2]),
        (128, 576, vec![2; 4]),
    ] {
        assert!(MixedLayout::new(g, c, b).is_err());
    }
    assert!(MixedLayout::new(128, 576, vec![2, 3, 0, 1, 4]).is_err());
    assert!(MixedLayout::new(128, 576, vec![2, 3, 9, 1, 4]).is_err());
    // Mixed data cannot be packed as a llama.cpp type, nor a table looked up as one.
    assert!(pack_ggml(WeightFormat::Mixed, 1, 32, &[]).is_err());
}

fn h(v: f32) -> [u8; 2] {
    f16::from_f32(v).to_le_bytes()
}

#[test]
fn pack_q4_0_block() {
    // One row of two blocks. Block 0: d = 0.5, byte j = (j & 15) | ((15 - j) << 4):
    // element j (< 16) has code j, element 16 + j has code 15 - j.
    let mut bytes = Vec::new();
    bytes.extend(h(0.5));
    bytes.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
    bytes.extend(h(-2.0));
    bytes.extend([0x8f; 16]); // low nibble 15, high nibble 8
    let p = pack_ggml(WeightFormat::Q4_0, 1, 64, &bytes).unwrap();
    assert_eq!(p.planes, Planes::layout(WeightFormat::Q4_0, 1, 64));
    // Element 8w + k in nibble k of word w.
    assert_eq!(p.words[0], 0x7654_3210);
    assert_eq!(p.words[1], 0xfedc_ba98);
    assert_eq!(p.words[2], 0x89ab_cdef);
    assert_eq!(p.words[3], 0x0123_4567);
    assert_eq!(p.words[4], 0xffff_ffff);
    assert_eq!(p.words[6], 0x8888_8888);
    let s = p.words[p.planes.scales as usize];
    assert_eq!(
        s,
        u32::from(f16::from_f32(0.5).to_bits()) | (u32::from(f16::from_f32(-2.0).to_bits()) << 16)
    );
    let v = dequantize_packed(&p);
    for j in 0..16 {
        assert_eq!(v[j], 0.5 * (j as f32 - 8.0), "element {j}");
        assert_eq!(v[16 + j], 0.5 * (7.0 - j as f32), "element {}", 16 + j);
        assert_eq!(v[32 + j], -2.0 * 7.0, "element {}", 32 + j);
        assert_eq!(v[48 + j], 0.0, "element {}", 48 + j);
    }
}

#[test]
fn pack_q4_1_block() {
    // Two rows of one block: d, m per row; byte j = 0x3c (low 12, high 3).
    let mut bytes = Vec::new();
    for (d, m) in [(0.25f32, -1.0f32), (2.0, 0.5)] {
        bytes.extend(h(d));
        bytes.extend(h(m));
        bytes.extend([0x3c; 16]);
    }
    let p = pack_ggml(WeightFormat::Q4_1, 2, 32, &bytes).unwrap();
    // Elements 0..15 have code 12, 16..31 code 3; row 1 follows row 0.
    assert_eq!(
        &p.words[..8],
        &[0xcccc_cccc, 0xcccc_cccc, 0x3333_3333, 0x3333_3333].repeat(2)[..]
    );
    let s = p.words[p.planes.scales as usize];
    let m = p.words[p.planes.mins as usize];
    assert_eq!(
        s,
        u32::from(f16::from_f32(0.25).to_bits()) | (u32::from(f16::from_f32(2.0).to_bits()) << 16)
    );
    assert_eq!(
        m,
        u32::from(f16::from_f32(-1.0).to_bits()) | (u32::from(f16::from_f32(0.5).to_bits()) << 16)
    );
    let v = dequantize_packed(&p);
    for j in 0..16 {
        assert_eq!(v[j], 0.25 * 12.0 - 1.0, "row 0 element {j}");
        assert_eq!(v[16 + j], 0.25 * 3.0 - 1.0, "row 0 element {}", 16 + j);
        assert_eq!(v[32 + j], 2.0 * 12.0 + 0.5, "row 1 element {j}");
        assert_eq!(v[48 + j], 2.0 * 3.0 + 0.5, "row 1 element {}", 16 + j);
    }
}

#[test]
fn pack_q8_0_block() {
    let mut bytes = Vec::new();
    bytes.extend(h(0.125));
    bytes.extend((0..32i8).map(|j| (j * 4 - 64) as u8));
    let p = pack_ggml(WeightFormat::Q8_0, 1, 32, &bytes).unwrap();
    assert_eq!(
        p.words[0],
        u32::from_le_bytes([(-64i8) as u8, (-60i8) as u8, (-56i8) as u8, (-52i8) as u8])
    );
    let v = dequantize_packed(&p);
    for (j, got) in v.iter().enumerate() {
        assert_eq!(*got, 0.125 * f32::from(j as i8 * 4 - 64), "element {j}");
    }
}

#[test]
fn kquant_packing_keeps_the_file_size_and_ggml_values() {
    use lamina_model::checkpoint::{HostDType, ggml};
    for f in WeightFormat::ALL
        .into_iter()
        .filter(|&f| weight::kquant::is_kquant(f))
    {
        let (rows, cols) = (2u32, 512u32);
        let bytes = random_ggml(f, rows, cols, 21);
        let p = pack_ggml(f, rows, cols, &bytes).unwrap();
        assert_eq!(p.planes, Planes::layout(f, rows, cols), "{}", f.name());
        // The planes without their padding hold exactly the file's bytes.
        let bits = weight::kquant::code_bits(f).unwrap();
        let (sw, mw) = weight::kquant::plane_words(f, rows, cols);
        let used = 4 * (u64::from(rows * cols / 32 * bits) + sw + mw);
        assert_eq!(used, bytes.len() as u64, "{}", f.name());
        let dt: HostDType = f.name().parse().unwrap();
        let want = ggml::dequantize(dt, &bytes, (rows * cols) as usize).unwrap();
        let got = dequantize_packed(&p);
        let diff = got
            .iter()
            .zip(&want)
            .position(|(a, b)| a.to_bits() != b.to_bits());
        assert_eq!(diff, None, "{}: first difference at {diff:?}", f.name());
    }
    let e = pack_ggml(WeightFormat::Q4_K, 1, 128, &[0; 72]);
    assert!(matches!(e, Err(EngineError::Shape { .. })), "{e:?}");
}

#[test]
fn pack_f32_and_f16_roundtrip() {
    let (rows, cols) = (3u32, 5u32);
    let v = rand_vec((rows * cols) as usize, 5, 2.0);
    let p = pack_f32(WeightFormat::F32, rows, cols, &v).unwrap();
    assert_eq!(dequantize_packed(&p), v);
    let p = pack_f32(WeightFormat::F16, rows, cols, &v).unwrap();
    assert_eq!(p.words[2] >> 16, 0, "odd row end padded with zero");
    let want: Vec<f32> = v.iter().map(|x| f16::from_f32(*x).to_f32()).collect();
    assert_eq!(dequantize_packed(&p), want);
    // The same values as raw GGUF f16 bytes pack identically.
    let raw: Vec<u8> = v.iter().flat_map(|x| h(*x)).collect();
    assert_eq!(pack_ggml(WeightFormat::F16, rows, cols, &raw).unwrap(), p);
}

#[test]
fn pack_row_ranges_concatenate() {
    // Packing rows separately (as shards are) gives the same values.
    let (rows, cols) = (10u32, 64u32);
    let bytes = random_ggml(WeightFormat::Q4_1, rows, cols, 3);
    let host = HostWeight {
        format: WeightFormat::Q4_1,
        rows,
        cols,
        data: HostData::Ggml(&bytes),
    };
    let whole = dequantize_packed(&host.pack_rows(0, rows).unwrap());
    let a: PackedWeight = host.pack_rows(0, 3).unwrap();
    let b = host.pack_rows(3, 7).unwrap();
    let mut parts = dequantize_packed(&a);
    parts.extend(dequantize_packed(&b));
    assert_eq!(parts, whole);
    assert!(host.pack_rows(8, 3).is_err());
}
