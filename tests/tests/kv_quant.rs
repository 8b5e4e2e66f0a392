//! The quantized KV cache (KvQuantStore + KvQuantAttention) against CPU references on
//! the test GPU, over several steps so the store, the window ring and the
//! pivot all hold keys: q8 / q4 / q2 / f16 / QJL keys with integer values,
//! GQA groups 1, 3, 4 and 16, head_dim 40, 64 and 128, pivots of 0-3
//! tokens, recent windows of 0-64, and lengths from 1 token (nothing
//! quantized) through partial groups to 5000; and static scales
//! (PrefixQuant's KV4: per head, or per channel for keys), where every
//! token enters the store on its own.
//!
//! Two checks per step:
//! - the store the GPU wrote against the CPU quantizers (`kv::
//!   quantize_row`, `lamina_model::kv_cache::qjl`) on the same f16 inputs:
//!   integer codes may differ by one step where GPU and CPU division round
//!   a tie differently, QJL sign bits where a projection is within rounding
//!   of zero; both are counted and bounded;
//! - attention against `kv_quant_attention::reference` reading the store the GPU
//!   wrote (decoded on the CPU), the f16 pivot and window: only arithmetic
//!   order differs, so the tolerance is tight, while a key read from the
//!   wrong segment (a whole quantization error) fails.

use half::f16;
use lamina_engine::Executor;
use lamina_engine::graph::{Graph, Op, Step};
use lamina_engine::kv::{
    self, GROUP, KvLayout, KvQuant, QjlShape, affine_word, decode_row, dequantize_channels,
    dequantize_row, encode_row, f16_row, round_f16, static_word, unpack_f16x2,
};
use lamina_engine::ops::kv_quant_attention::{self, KvQuantAttention};
use lamina_engine::ops::kv_quant_store::KvQuantStore;
use lamina_model::kv_cache::qjl::{QjlKey, QjlSketch};
use lamina_tests::{assert_close, f32_bytes, gpu, rand_vec, u32_bytes};

const ATOL: f32 = 1e-5;
const RTOL: f32 = 1e-4;

#[derive(Debug, Clone)]
struct Case {
    k: KvQuant,
    v: KvQuant,
    qgroup: u32,
    k_channel: bool,
    qjl: QjlShape,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    pivot: usize,
    /// Front rows after the pivot that the steps fill (attention sinks).
    sink: usize,
    recent: u32,
    max_rows: usize,
    max_ctx: usize,
    /// Tokens per step.
    steps: Vec<usize>,
    /// Steps (by index) to check; all when empty.
    check: Vec<usize>,
    /// Prompt steps read their own tokens in f16 (`--kv-exact-prompt`).
    exact_prompt: bool,
    /// Static per-head scales (keys' and values' of KV head h:
    /// [`static_scale`]).
    static_scales: bool,
}

/// The static words of KV head `h`: per head, keys clip their largest
/// channels (up to ~27 against 7 codes of 1.5), values hardly any; keys per
/// channel (`channel`) get ranges of 15 steps of 0.2-0.5 from -1..-2,
/// which clip the large channels too.
fn static_words(is_k: bool, h: usize, bits: u32, channel: bool, hd: usize) -> Vec<u32> {
    if is_k && channel {
        return (0..hd)
            .map(|c| {
                let s = 0.2 + 0.05 * (c % 7) as f32 + 0.02 * h as f32;
                affine_word(s, -1.0 - 0.5 * (c % 3) as f32)
            })
            .collect();
    }
    let s = if is_k {
        1.5 + 0.25 * h as f32
    } else {
        0.15 + 0.05 * h as f32
    };
    vec![static_word(s, bits)]
}

const NO_QJL: QjlShape = QjlShape {
    m: 0,
    m_out: 0,
    outliers: 0,
    outlier_q8: false,
};

fn case(k: KvQuant, v: KvQuant, heads: (usize, usize, usize), steps: &[usize]) -> Case {
    Case {
        k,
        v,
        qgroup: 32,
        k_channel: false,
        qjl: if k == KvQuant::Qjl {
            QjlShape {
                m: 128,
                m_out: 64,
                outliers: 4,
                outlier_q8: false,
            }
        } else {
            NO_QJL
        },
        n_heads: heads.0,
        n_kv_heads: heads.1,
        head_dim: heads.2,
        pivot: 1,
        sink: 0,
        recent: 32,
        max_rows: 128,
        max_ctx: 1024,
        steps: steps.to_vec(),
        check: Vec::new(),
        exact_prompt: false,
        static_scales: false,
    }
}

/// Keys with a few channels far larger than the rest, and one with an
/// offset, as real keys have.
fn keys(n: usize, head_dim: usize, seed: u64) -> Vec<f32> {
    let mut k = rand_vec(n * head_dim, seed, 1.0);
    for row in k.chunks_exact_mut(head_dim) {
        row[5 % head_dim] += 3.0;
        row[3 % head_dim] *= 9.0;
        row[17 % head_dim] *= 6.0;
        row[head_dim - 1] *= 4.0;
    }
    k
}

/// f16 values the GPU and CPU computed alike, up to one f16 step where GPU
/// division rounds differently.
fn assert_f16_near(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!(
            (a - b).abs() <= 2e-3 * b.abs() + 1e-7,
            "{what}: [{i}] {a} vs {b}"
        );
    }
}

fn words(b: &[u8]) -> Vec<u32> {
    b.chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// The CPU's view of one layer's cache: every position's f16-rounded K and V
/// per KV head, and the GPU's store read back.
struct Cache {
    layout: KvLayout,
    /// [kvh][j] rows.
    k: Vec<Vec<Vec<f32>>>,
    v: Vec<Vec<Vec<f32>>>,
    k_store: Vec<u32>,
    v_store: Vec<u32>,
    sketch: Option<QjlSketch>,
    /// Static scales: each KV head's (scale, min) words, keys and values.
    k_static: Vec<u32>,
    v_static: Vec<u32>,
}

impl Cache {
    fn row(&self, store: &[u32], words: u32, kvh: usize, j: usize) -> Vec<u32> {
        let w = words as usize;
        let at = (kvh * self.layout.max_ctx as usize + j) * w;
        store[at..at + w].to_vec()
    }
    /// The aux words of key `j`'s token group.
    fn aux(&self, kvh: usize, j: usize) -> &[u32] {
        let l = &self.layout;
        let g = (j as u32 - l.pivot) / GROUP;
        let at = l.aux_at(kvh as u32, g) as usize;
        &self.k_store[at..at + l.aux_words() as usize]
    }
    fn outliers(&self, kvh: usize, j: usize) -> Vec<u8> {
        let aux = self.aux(kvh, j)[0];
        (0..self.layout.qjl.outliers)
            .map(|o| (aux >> (8 * o)) as u8)
            .collect()
    }
    /// A QJL key's 8-bit outliers decoded, with their channels.
    fn q8_outliers(&self, kvh: usize, j: usize) -> Vec<(usize, f32)> {
        let l = &self.layout;
        let code = self.row(&self.k_store, l.k_words(), kvh, j)[l.qjl.m as usize / 32];
        let aux = self.aux(kvh, j);
        self.outliers(kvh, j)
            .iter()
            .enumerate()
            .map(|(o, &c)| {
                let [sc, mn] = unpack_f16x2(aux[1 + o]);
                (c as usize, mn + sc * ((code >> (8 * o)) & 0xff) as f32)
            })
            .collect()
    }
    /// The f16-rounded rows of key `j`'s token group.
    fn group(&self, rows: &[Vec<Vec<f32>>], kvh: usize, j: usize) -> Vec<Vec<f32>> {
        let p = self.layout.pivot as usize;
        let g0 = p + (j - p) / GROUP as usize * GROUP as usize;
        rows[kvh][g0..g0 + GROUP as usize].to_vec()
    }
    fn qjl_key(&self, kvh: usize, j: usize) -> QjlKey {
        let l = &self.layout;
        let r = self.row(&self.k_store, l.k_words(), kvh, j);
        let (m, mo) = (l.qjl.m as usize / 32, l.qjl.m_out as usize / 32);
        let norms = r[r.len() - 1];
        QjlKey {
            signs: r[..m].to_vec(),
            outlier_signs: r[m..m + mo].to_vec(),
            norm: f16::from_bits(norms as u16).to_f32(),
            outlier_norm: f16::from_bits((norms >> 16) as u16).to_f32(),
        }
    }
    /// Decodes stored key (`is_k`) or value `j`.
    fn decode(&self, is_k: bool, kvh: usize, j: usize) -> Vec<f32> {
        let l = &self.layout;
        let (f, store, words) = if is_k {
            (l.k, &self.k_store, l.k_words())
        } else {
            (l.v, &self.v_store, l.v_words())
        };
        let r = self.row(store, words, kvh, j);
        let hd = self.layout.head_dim as usize;
        match f.bits() {
            Some(b) if l.static_scales => decode_row(&r, b, self.static_words(is_k, kvh), hd),
            Some(b) if is_k && l.k_channel => dequantize_channels(&r, self.aux(kvh, j), b),
            Some(b) => dequantize_row(&r, b, self.layout.qgroup as usize, hd),
            None => f16_row(&r),
        }
    }
    /// KV head `kvh`'s static words: one, or (keys per channel) one per channel.
    fn static_words(&self, is_k: bool, kvh: usize) -> &[u32] {
        let (words, per) = if is_k {
            (&self.k_static, self.layout.k_static_words() as usize)
        } else {
            (&self.v_static, 1)
        };
        &words[kvh * per..(kvh + 1) * per]
    }
    fn in_store(&self, len: usize, j: usize) -> bool {
        j >= self.layout.pivot as usize && j < self.layout.boundary(len as u32) as usize
    }
    fn score(&self, len: usize, kvh: usize, j: usize, q: &[f32]) -> f32 {
        if !self.in_store(len, j) {
            return q.iter().zip(&self.k[kvh][j]).map(|(a, b)| a * b).sum();
        }
        if let Some(s) = &self.sketch {
            let out = self.outliers(kvh, j);
            let mut est = s.score(&s.query(q, &out), &self.qjl_key(kvh, j));
            if self.layout.qjl.outlier_q8 {
                est += self
                    .q8_outliers(kvh, j)
                    .iter()
                    .map(|(c, v)| q[*c] * v)
                    .sum::<f32>();
            }
            return est;
        }
        let k = self.decode(true, kvh, j);
        q.iter().zip(&k).map(|(a, b)| a * b).sum()
    }
    fn value(&self, len: usize, kvh: usize, j: usize) -> Vec<f32> {
        if !self.in_store(len, j) {
            return self.v[kvh][j].clone();
        }
        self.decode(false, kvh, j)
    }

    /// The store against the CPU quantizers for positions [pivot, end).
    fn check_store(&self, end: usize, what: &str) {
        let l = &self.layout;
        let (mut codes, mut code_off, mut bits, mut bit_off) = (0usize, 0usize, 0usize, 0usize);
        for kvh in 0..l.n_kv_heads as usize {
            for j in l.pivot as usize..end {
                for (is_k, f, rows) in [(true, l.k, &self.k), (false, l.v, &self.v)] {
                    let x = &rows[kvh][j];
                    if f == KvQuant::Qjl {
                        let s = self.sketch.as_ref().expect("sketch");
                        let group: Vec<f32> = self.group(rows, kvh, j).concat();
                        let out = lamina_model::kv_cache::qjl::outlier_channels(
                            &group,
                            l.head_dim as usize,
                            l.qjl.outliers as usize,
                        );
                        assert_eq!(self.outliers(kvh, j), out, "{what}: outliers of {j}");
                        if l.qjl.outlier_q8 {
                            // Per outlier channel: min-max over the group, 8 bits.
                            let hd = l.head_dim as usize;
                            for (o, (c, got)) in self.q8_outliers(kvh, j).into_iter().enumerate() {
                                let col = group.iter().skip(c).step_by(hd);
                                let mn = col.clone().copied().fold(f32::INFINITY, f32::min);
                                let mx = col.copied().fold(f32::NEG_INFINITY, f32::max);
                                let (sc, m16) = (round_f16((mx - mn) / 255.0), round_f16(mn));
                                assert_f16_near(
                                    &unpack_f16x2(self.aux(kvh, j)[1 + o]),
                                    &[sc, m16],
                                    &format!("{what}: outlier scale {o} of {j}"),
                                );
                                let inv = if sc > 0.0 { 1.0 / sc } else { 0.0 };
                                let want = m16
                                    + sc * ((x[c] - m16) * inv).round_ties_even().clamp(0.0, 255.0);
                                codes += 1;
                                if got != want {
                                    code_off += 1;
                                    assert!(
                                        (got - want).abs() <= 1.01 * sc + 1e-3,
                                        "{what}: outlier {o} of {j}: {got} vs {want}"
                                    );
                                }
                            }
                        }
                        let want = s.encode(x, &out);
                        let got = self.qjl_key(kvh, j);
                        for (a, b) in want
                            .signs
                            .iter()
                            .chain(&want.outlier_signs)
                            .zip(got.signs.iter().chain(&got.outlier_signs))
                        {
                            bits += 32;
                            bit_off += (a ^ b).count_ones() as usize;
                        }
                        for (a, b) in [(want.norm, got.norm), (want.outlier_norm, got.outlier_norm)]
                        {
                            assert!(
                                (round_f16(a) - b).abs() <= 1e-3 * a.abs() + 1e-6,
                                "{what}: norm of {j}: {a} vs {b}"
                            );
                        }
                        continue;
                    }
                    let got = self.decode(is_k, kvh, j);
                    let chan = is_k && l.k_channel && f.bits().is_some() && !l.static_scales;
                    let group = if chan {
                        self.group(rows, kvh, j)
                    } else {
                        Vec::new()
                    };
                    let want = match f.bits() {
                        Some(b) if l.static_scales => {
                            let words = self.static_words(is_k, kvh);
                            // The static words are the host's, written once.
                            let at = if is_k {
                                l.k_static_at(kvh as u32)
                            } else {
                                l.v_static_at(kvh as u32)
                            } as usize;
                            let store = if is_k { &self.k_store } else { &self.v_store };
                            assert_eq!(
                                &store[at..at + words.len()],
                                words,
                                "{what}: static words of head {kvh}"
                            );
                            decode_row(&encode_row(x, b, words), b, words, x.len())
                        }
                        Some(b) if chan => {
                            let (codes, aux) = kv::quantize_channels(&group, b);
                            let g0 = j - (j - l.pivot as usize) % GROUP as usize;
                            assert_f16_near(
                                &f16_row(self.aux(kvh, j)),
                                &f16_row(&aux),
                                &format!("{what}: channel scales of {j}"),
                            );
                            dequantize_channels(&codes[j - g0], &aux, b)
                        }
                        Some(b) => dequantize_row(
                            &kv::quantize_row(x, b, l.qgroup as usize),
                            b,
                            l.qgroup as usize,
                            l.head_dim as usize,
                        ),
                        None => x.clone(),
                    };
                    // The values one code step spans: over the row's channel
                    // group, or (per channel) over the token group's channel.
                    let step = |c: usize| {
                        if l.static_scales {
                            let w = self.static_words(is_k, kvh);
                            return unpack_f16x2(w[c % w.len()])[0];
                        }
                        let vals: Vec<f32> = if chan {
                            group.iter().map(|r| r[c]).collect()
                        } else {
                            let q = l.qgroup as usize;
                            x[c / q * q..][..q].to_vec()
                        };
                        let (mn, mx) = vals
                            .iter()
                            .fold((f32::MAX, f32::MIN), |(a, b), v| (a.min(*v), b.max(*v)));
                        (mx - mn) / ((1u32 << f.bits().unwrap_or(16)) - 1) as f32
                    };
                    for (c, (a, b)) in got.iter().zip(&want).enumerate() {
                        codes += 1;
                        if a != b {
                            code_off += 1;
                            assert!(
                                (a - b).abs() <= 1.01 * step(c) + 1e-3,
                                "{what}: {} row {j} ch {c}: {a} vs {b}",
                                f.name()
                            );
                        }
                    }
                }
            }
        }
        assert!(
            code_off * 200 <= codes,
            "{what}: {code_off} of {codes} codes off by one step"
        );
        assert!(
            bit_off * 100 <= bits,
            "{what}: {bit_off} of {bits} QJL sign bits differ"
        );
    }
}

fn run(c: &Case) {
    let what = format!("{c:?}");
    let (nh, nkv, hd) = (c.n_heads, c.n_kv_heads, c.head_dim);
    let layout = KvLayout {
        n_kv_heads: nkv as u32,
        head_dim: hd as u32,
        max_ctx: c.max_ctx as u32,
        pivot: (c.pivot + c.sink) as u32,
        recent: c.recent,
        ring: KvLayout::ring_for(c.recent, c.max_rows as u32),
        k: c.k,
        v: c.v,
        qgroup: c.qgroup,
        k_channel: c.k_channel,
        qjl: c.qjl,
        exact_prompt: c.exact_prompt,
        static_scales: c.static_scales,
    };
    let sketch = (c.k == KvQuant::Qjl)
        .then(|| QjlSketch::new(hd, c.qjl.m as usize, c.qjl.m_out as usize, 7).expect("sketch"));
    let rows = c.max_rows as u64;
    let mut g = Graph::new();
    let qt = g.input("q", 4 * rows * (nh * hd) as u64);
    let kt = g.input("k", 4 * rows * (nkv * hd) as u64);
    let vt = g.input("v", 4 * rows * (nkv * hd) as u64);
    let k_win = g.input("k_win", layout.k_win_bytes());
    let v_win = g.input("v_win", layout.window_bytes());
    let k_store = g.input("k_store", layout.k_store_bytes());
    let v_store = g.input("v_store", layout.v_store_bytes());
    let out = g.output("out", 4 * rows * (nh * hd) as u64);
    let scratch = g.intermediate(
        "scratch",
        kv_quant_attention::scratch_bytes(&layout, nh as u32, rows as u32),
    );
    g.push(
        "kv_quant_store",
        Op::KvQuantStore(KvQuantStore {
            k: kt,
            v: vt,
            k_win,
            v_win,
            k_store,
            v_store,
            layout,
            max_rows: rows as u32,
        }),
    )
    .unwrap();
    g.push(
        "kv_quant_attention",
        Op::KvQuantAttention(KvQuantAttention {
            q: qt,
            k_win,
            v_win,
            k_store,
            v_store,
            out,
            scratch,
            layout,
            n_heads: nh as u32,
            max_rows: rows as u32,
            scale: 1.0 / (hd as f32).sqrt(),
        }),
    )
    .unwrap();
    let mut ex = Executor::new(gpu(), g).unwrap();

    let mut cache = Cache {
        layout,
        k: vec![Vec::new(); nkv],
        v: vec![Vec::new(); nkv],
        k_store: Vec::new(),
        v_store: Vec::new(),
        sketch,
        k_static: Vec::new(),
        v_static: Vec::new(),
    };
    if c.static_scales {
        for (is_k, buf, words) in [
            (true, k_store, &mut cache.k_static),
            (false, v_store, &mut cache.v_static),
        ] {
            let bits = if is_k { c.k } else { c.v }.bits().expect("integer format");
            *words = (0..nkv)
                .flat_map(|h| static_words(is_k, h, bits, c.k_channel, hd))
                .collect();
            let at = if is_k {
                layout.k_static_at(0)
            } else {
                layout.v_static_at(0)
            };
            ex.write(buf, 4 * u64::from(at), &u32_bytes(words));
        }
    }
    // Pivot rows go straight into the window, as the model uploads them.
    let slots = (layout.pivot + layout.ring) as usize;
    for (win, rows, seed) in [(k_win, &mut cache.k, 1u64), (v_win, &mut cache.v, 2)] {
        let vals = keys(nkv * c.pivot, hd, seed);
        for h in 0..nkv {
            let mut img = Vec::new();
            for j in 0..c.pivot {
                let r: Vec<f32> = vals[(h * c.pivot + j) * hd..][..hd]
                    .iter()
                    .map(|x| round_f16(*x))
                    .collect();
                img.extend(kv::f16_words(&r));
                rows[h].push(r);
            }
            ex.write(win, (h * slots * hd * 2) as u64, &u32_bytes(&img));
        }
    }
    if let Some(s) = &cache.sketch {
        ex.write(k_win, 4 * u64::from(layout.sketch_base()), &f32_bytes(&s.s));
    }

    let mut pos = c.pivot;
    for (si, &n) in c.steps.iter().enumerate() {
        let seed = 100 + si as u64;
        let q = rand_vec(n * nh * hd, seed, 2.0);
        let k = keys(n * nkv, hd, seed + 1);
        let v = rand_vec(n * nkv * hd, seed + 2, 1.0);
        ex.write(qt, 0, &f32_bytes(&q));
        ex.write(kt, 0, &f32_bytes(&k));
        ex.write(vt, 0, &f32_bytes(&v));
        ex.run(&Step {
            n_tokens: n as u32,
            pos: pos as u32,
            ..Default::default()
        })
        .unwrap();
        for t in 0..n {
            for h in 0..nkv {
                let at = (t * nkv + h) * hd;
                cache.k[h].push(k[at..at + hd].iter().map(|x| round_f16(*x)).collect());
                cache.v[h].push(v[at..at + hd].iter().map(|x| round_f16(*x)).collect());
            }
        }
        if !c.check.is_empty() && !c.check.contains(&si) {
            pos += n;
            continue;
        }
        let step_what = format!("{what} step {si} ({n} tokens at {pos})");
        cache.k_store = words(&ex.read(k_store, layout.k_store_bytes()).unwrap());
        cache.v_store = words(&ex.read(v_store, layout.v_store_bytes()).unwrap());
        cache.check_store(layout.boundary((pos + n) as u32) as usize, &step_what);
        let got = ex.read_f32(out, q.len()).unwrap();
        // An exact prompt step finds the store as it stood before the step.
        let seen = |len: usize| {
            if c.exact_prompt && n > 1 {
                len.min(pos)
            } else {
                len
            }
        };
        let want = kv_quant_attention::reference(
            &q,
            n,
            pos,
            nh,
            nkv,
            hd,
            1.0 / (hd as f32).sqrt(),
            |len, kvh, j, q| cache.score(seen(len), kvh, j, q),
            |len, kvh, j| cache.value(seen(len), kvh, j),
        );
        assert_close(&step_what, &got, &want, ATOL, RTOL);
        pos += n;
    }
}

#[test]
fn integer_formats_match_reference() {
    use KvQuant::*;
    // 1 token (nothing quantized), a prompt that leaves a partial group in
    // the window, decode steps across a flush, a second prompt step.
    run(&case(Q4, Q4, (9, 3, 64), &[1, 40, 1, 1, 100, 1, 1]));
    run(&Case {
        qgroup: 8,
        pivot: 0,
        recent: 0,
        max_rows: 64,
        ..case(Q8, Q2, (4, 4, 40), &[5, 1, 33, 1, 1, 64, 1])
    });
    // f16 keys with 2-bit values; 16 heads per KV head (4 packs of 4).
    run(&Case {
        pivot: 3,
        ..case(F16, Q4, (32, 2, 64), &[70, 1, 1, 50, 1])
    });
}

#[test]
fn static_scales_match_reference() {
    use KvQuant::*;
    // Every position past the pivot quantized as it is written (no recent
    // window): prompt steps of awkward lengths, decode steps, GQA 3.
    run(&Case {
        static_scales: true,
        recent: 0,
        ..case(Q4, Q4, (9, 3, 64), &[7, 1, 1, 40, 1, 100, 1])
    });
    // 8 bits, head_dim 40, no pivot, a recent window of 5 tokens.
    run(&Case {
        static_scales: true,
        recent: 5,
        pivot: 0,
        max_rows: 64,
        ..case(Q8, Q8, (4, 4, 40), &[5, 1, 33, 1, 1, 64, 1])
    });
    // head_dim 128, 16 heads on one KV head, a pivot of 2.
    run(&Case {
        static_scales: true,
        recent: 0,
        pivot: 2,
        ..case(Q4, Q4, (16, 1, 128), &[3, 1, 90, 1, 1])
    });
    // Keys per channel: q4 keys with 8-bit values, and 2-bit keys at head_dim 40.
    run(&Case {
        static_scales: true,
        k_channel: true,
        recent: 0,
        ..case(Q4, Q8, (9, 3, 64), &[7, 1, 1, 40, 1, 100, 1])
    });
    run(&Case {
        static_scales: true,
        k_channel: true,
        recent: 3,
        pivot: 0,
        max_rows: 64,
        ..case(Q2, Q4, (4, 2, 40), &[5, 1, 33, 1, 1, 64, 1])
    });
}

#[test]
fn qjl_keys_match_reference() {
    use KvQuant::*;
    run(&Case {
        pivot: 2,
        recent: 16,
        ..case(Qjl, Q2, (9, 3, 64), &[128, 1, 1, 70, 1])
    });
    // No outlier channels; head_dim 128 with GQA 4.
    run(&Case {
        qjl: QjlShape {
            m: 64,
            m_out: 0,
            outliers: 0,
            outlier_q8: false,
        },
        pivot: 0,
        ..case(Qjl, Q4, (8, 2, 128), &[3, 1, 90, 1, 1])
    });
}

#[test]
fn per_channel_keys_match_reference() {
    use KvQuant::*;
    // Integer keys with per-channel scales (KIVI).
    run(&Case {
        k_channel: true,
        ..case(Q2, Q4, (9, 3, 64), &[1, 40, 1, 1, 100, 1, 1])
    });
    run(&Case {
        k_channel: true,
        qgroup: 8,
        pivot: 0,
        recent: 0,
        max_rows: 64,
        ..case(Q8, Q2, (4, 4, 40), &[5, 1, 33, 1, 1, 64, 1])
    });
    // head_dim 128, GQA 4, no recent window.
    run(&Case {
        k_channel: true,
        pivot: 0,
        recent: 0,
        ..case(Q4, Q2, (8, 2, 128), &[3, 1, 90, 1, 1])
    });
}

#[test]
fn sink_rows_stay_f16_and_causal() {
    use KvQuant::*;
    // The first tokens fill front rows past the pivot and are never
    // quantized; a prompt step attends to them causally.
    run(&Case {
        sink: 3,
        ..case(Q2, Q2, (9, 3, 64), &[2, 1, 40, 1, 100, 1])
    });
    run(&Case {
        pivot: 0,
        sink: 4,
        recent: 0,
        ..case(Qjl, Q4, (8, 2, 64), &[70, 1, 1, 33, 1])
    });
}

#[test]
fn exact_prompt_reads_its_own_tokens_in_f16() {
    use KvQuant::*;
    // Prompt steps that flush groups of their own tokens still see them in
    // f16; decode steps, and later prompt steps, see the store.
    run(&Case {
        exact_prompt: true,
        ..case(Qjl, Q2, (9, 3, 64), &[100, 1, 1, 70, 1, 128, 1])
    });
    run(&Case {
        exact_prompt: true,
        sink: 2,
        recent: 0,
        ..case(Q2, Q4, (8, 2, 64), &[33, 1, 64, 1, 1, 5])
    });
}

#[test]
fn qjl_q8_outliers_match_reference() {
    use KvQuant::*;
    let q8 = |outliers| QjlShape {
        m: 128,
        m_out: 0,
        outliers,
        outlier_q8: true,
    };
    run(&Case {
        qjl: q8(4),
        pivot: 2,
        recent: 16,
        ..case(Qjl, Q2, (9, 3, 64), &[128, 1, 1, 70, 1])
    });
    // Two outliers (unused code bytes), head_dim 40.
    run(&Case {
        qjl: q8(2),
        qgroup: 8,
        pivot: 0,
        recent: 0,
        max_rows: 64,
        ..case(Qjl, Q4, (8, 2, 40), &[5, 1, 33, 1, 1, 64, 1])
    });
}

#[test]
fn long_context_qjl() {
    // 5000 tokens in prompt steps of 500 (unchecked), then a short prompt
    // step and decode steps, checked.
    let mut steps = vec![500; 10];
    steps.extend([3, 1, 1]);
    run(&Case {
        max_rows: 500,
        max_ctx: 5200,
        recent: 64,
        check: vec![10, 11, 12],
        ..case(KvQuant::Qjl, KvQuant::Q2, (9, 3, 64), &steps)
    });
}
