//! KvF16Write + KvF16Attention (the f16 KV cache) against their CPU references on the test GPU, at
//! awkward sizes: both the prefill kernel and the split-KV decode kernel
//! (one range written directly, a few ranges, more ranges than one
//! workgroup holds, a short last range), GQA groups 1, 3, 4 and 16 (more
//! heads than one decode invocation or prefill workgroup holds), head_dim
//! 40, 64, 96, 128, 256.

use half::f16;
use lamina_engine::graph::{Graph, Op, Step};
use lamina_engine::kv;
use lamina_engine::ops::{kv_f16_attention, kv_f16_write};
use lamina_engine::{EngineError, Executor};
use lamina_tests::{assert_close, f32_bytes, gpu, rand_vec};

/// The caches are f16 on both sides (the reference reads the f16-rounded
/// values), so what is left is f32 arithmetic in a different order: dot
/// products of <= 256 terms, exp, and sums over up to ~8000 keys. Outputs are
/// O(0.01..1); observed errors are around 1e-7, these leave a wide margin
/// while a dropped or extra key (an O(1/kv_len) change) still fails.
const ATOL: f32 = 2e-6;
const RTOL: f32 = 1e-4;

#[derive(Debug, Clone, Copy)]
struct Case {
    n_tokens: usize,
    pos: usize,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    max_ctx: usize,
    /// Whether the graph gets a decode scratch tensor (else one-token steps
    /// run on the prefill kernel).
    scratch: bool,
}

fn f16_words(v: &[f32]) -> Vec<u8> {
    v.iter()
        .flat_map(|x| f16::from_f32(*x).to_bits().to_le_bytes())
        .collect()
}

fn from_f16_bytes(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(2)
        .map(|c| f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
        .collect()
}

/// A cache image with positions < pos filled with f16-representable values.
fn prefilled_cache(c: &Case, seed: u64) -> Vec<f32> {
    let (hd, ctx) = (c.head_dim, c.max_ctx);
    let mut cache = vec![0.0f32; c.n_kv_heads * ctx * hd];
    let vals = rand_vec(c.n_kv_heads * c.pos * hd, seed, 1.0);
    for h in 0..c.n_kv_heads {
        for j in 0..c.pos {
            for d in 0..hd {
                cache[(h * ctx + j) * hd + d] = kv::round_f16(vals[(h * c.pos + j) * hd + d]);
            }
        }
    }
    cache
}

/// Runs KvF16Write + KvF16Attention for one step of `c`, checks both.
fn run_case(c: Case) {
    let Case {
        n_tokens: n,
        pos,
        n_heads: nh,
        n_kv_heads: nkv,
        head_dim: hd,
        max_ctx,
        scratch,
    } = c;
    let what = format!("{c:?}");
    let seed = (n * 31 + pos * 7 + hd * 3 + nh) as u64;
    // q spans [-2, 2) so the softmax is far from uniform and a wrong key shows.
    let q = rand_vec(n * nh * hd, seed, 2.0);
    let k = rand_vec(n * nkv * hd, seed + 1, 1.0);
    let v = rand_vec(n * nkv * hd, seed + 2, 1.0);
    let mut kc = prefilled_cache(&c, seed + 3);
    let mut vc = prefilled_cache(&c, seed + 4);
    let scale = 1.0 / (hd as f32).sqrt();

    let mut g = Graph::new();
    let qt = g.input("q", 4 * q.len() as u64);
    let kt = g.input("k", 4 * k.len() as u64);
    let vt = g.input("v", 4 * v.len() as u64);
    let cache_bytes = kv::cache_bytes(nkv as u32, hd as u32, max_ctx as u32);
    let kct = g.input("k_cache", cache_bytes);
    let vct = g.input("v_cache", cache_bytes);
    let out = g.output("out", 4 * q.len() as u64);
    let scratch = scratch.then(|| {
        g.intermediate(
            "scratch",
            kv_f16_attention::scratch_bytes(nh as u32, hd as u32, max_ctx as u32, n as u32),
        )
    });
    let (nkv32, hd32, ctx32, n32) = (nkv as u32, hd as u32, max_ctx as u32, n as u32);
    g.push(
        "kv_f16_write",
        Op::KvF16Write(kv_f16_write::KvF16Write {
            k: kt,
            v: vt,
            k_cache: kct,
            v_cache: vct,
            n_kv_heads: nkv32,
            head_dim: hd32,
            max_ctx: ctx32,
            max_rows: n32,
        }),
    )
    .unwrap();
    g.push(
        "attn",
        Op::KvF16Attention(kv_f16_attention::KvF16Attention {
            q: qt,
            k_cache: kct,
            v_cache: vct,
            out,
            scratch,
            n_heads: nh as u32,
            n_kv_heads: nkv32,
            head_dim: hd32,
            max_ctx: ctx32,
            max_rows: n32,
            scale,
            seqs: None,
        }),
    )
    .unwrap();
    let mut ex = Executor::new(gpu(), g).unwrap();
    ex.write(qt, 0, &f32_bytes(&q));
    ex.write(kt, 0, &f32_bytes(&k));
    ex.write(vt, 0, &f32_bytes(&v));
    ex.write(kct, 0, &f16_words(&kc));
    ex.write(vct, 0, &f16_words(&vc));
    ex.run(&Step {
        n_tokens: n as u32,
        pos: pos as u32,
        ..Default::default()
    })
    .unwrap();

    kv_f16_write::reference(&mut kc, &k, pos, nkv, hd, max_ctx);
    kv_f16_write::reference(&mut vc, &v, pos, nkv, hd, max_ctx);
    // Round to nearest even, as the reference: exact on lavapipe.
    let got_k = from_f16_bytes(&ex.read(kct, cache_bytes).unwrap());
    let got_v = from_f16_bytes(&ex.read(vct, cache_bytes).unwrap());
    assert_close(&format!("kv_f16_write k {what}"), &got_k, &kc, 0.0, 0.0);
    assert_close(&format!("kv_f16_write v {what}"), &got_v, &vc, 0.0, 0.0);

    let got = ex.read_f32(out, q.len()).unwrap();
    let want = kv_f16_attention::reference(&q, &kc, &vc, n, pos, nh, nkv, hd, max_ctx, scale);
    assert_close(&format!("kv_f16_attention {what}"), &got, &want, ATOL, RTOL);
}

fn case(
    n_tokens: usize,
    pos: usize,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    max_ctx: usize,
) -> Case {
    Case {
        n_tokens,
        pos,
        n_heads,
        n_kv_heads,
        head_dim,
        max_ctx,
        scratch: true,
    }
}

#[test]
fn decode_split_kv_matches_reference() {
    // kv_len -> (ranges, keys each), see kv::decode_split: 1 and 2 ->
    // one range; 101 -> 4 x 32, the last short; 1001 -> 32 x 32;
    // 5001 -> 157 x 32 (3 workgroups); 8192 (the last slot) -> 256 x 32.
    for c in [
        case(1, 0, 9, 3, 64, 512),
        case(1, 1, 4, 4, 40, 64),
        case(1, 100, 12, 3, 96, 1024),
        case(1, 1000, 32, 8, 128, 2048),
        case(1, 5000, 9, 3, 64, 8192),
        case(1, 5000, 8, 2, 256, 5001),
        case(1, 8191, 4, 1, 128, 8192),
        // Group of 16: four packs of 4 heads per KV head.
        case(1, 300, 32, 2, 64, 512),
        case(1, 700, 8, 2, 256, 1024),
    ] {
        run_case(c);
    }
}

#[test]
fn decode_long_context_matches_reference() {
    // Past 256 ranges of 32 the ranges grow: 9001 keys -> 141 ranges of 64
    // (two blocks each, the second rescaling the first), the last of 41.
    let (chunks, len) = kv::decode_split(9001);
    assert_eq!((chunks, len), (141, 64));
    assert!(
        u64::from(chunks) * 4 * 3 * (40 + 4) <= kv_f16_attention::scratch_bytes(3, 40, 9001, 1)
    );
    run_case(case(1, 9000, 3, 1, 40, 9001));
}

#[test]
fn prefill_matches_reference() {
    for c in [
        case(7, 0, 9, 3, 64, 64),
        case(1, 1000, 9, 3, 64, 1024).with_scratch(false),
        case(77, 0, 8, 2, 128, 128),
        case(77, 100, 9, 3, 64, 512),
        case(7, 1, 4, 4, 40, 64),
        case(77, 1000, 12, 3, 96, 2048),
        case(7, 5000, 32, 8, 128, 8192),
        case(77, 5000, 4, 1, 40, 8192),
        case(33, 20, 8, 4, 256, 64),
        // Group of 16 with head_dim 256: more heads than rows per workgroup.
        case(5, 10, 32, 2, 256, 16),
    ] {
        run_case(c);
    }
}

impl Case {
    fn with_scratch(mut self, s: bool) -> Self {
        self.scratch = s;
        self
    }
}

/// A prefill step then decode steps through the same executor: grids and
/// parameters change per step while pipelines and bind groups stay.
#[test]
fn prefill_then_decode_steps() {
    let (nh, nkv, hd, max_ctx, n_max) = (9usize, 3usize, 64usize, 700usize, 300usize);
    let scale = 1.0 / (hd as f32).sqrt();
    let mut g = Graph::new();
    let qt = g.input("q", 4 * (n_max * nh * hd) as u64);
    let kt = g.input("k", 4 * (n_max * nkv * hd) as u64);
    let vt = g.input("v", 4 * (n_max * nkv * hd) as u64);
    let cache_bytes = kv::cache_bytes(nkv as u32, hd as u32, max_ctx as u32);
    let kct = g.input("k_cache", cache_bytes);
    let vct = g.input("v_cache", cache_bytes);
    let out = g.output("out", 4 * (n_max * nh * hd) as u64);
    let scratch = g.intermediate(
        "scratch",
        kv_f16_attention::scratch_bytes(nh as u32, hd as u32, max_ctx as u32, n_max as u32),
    );
    let (nkv32, hd32, ctx32) = (nkv as u32, hd as u32, max_ctx as u32);
    g.push(
        "kv_f16_write",
        Op::KvF16Write(kv_f16_write::KvF16Write {
            k: kt,
            v: vt,
            k_cache: kct,
            v_cache: vct,
            n_kv_heads: nkv32,
            head_dim: hd32,
            max_ctx: ctx32,
            max_rows: n_max as u32,
        }),
    )
    .unwrap();
    g.push(
        "attn",
        Op::KvF16Attention(kv_f16_attention::KvF16Attention {
            q: qt,
            k_cache: kct,
            v_cache: vct,
            out,
            scratch: Some(scratch),
            n_heads: nh as u32,
            n_kv_heads: nkv32,
            head_dim: hd32,
            max_ctx: ctx32,
            max_rows: n_max as u32,
            scale,
            seqs: None,
        }),
    )
    .unwrap();
    let mut ex = Executor::new(gpu(), g).unwrap();
    let mut kc = vec![0.0f32; nkv * max_ctx * hd];
    let mut vc = kc.clone();
    let mut pos = 0;
    for (i, n) in [n_max, 1, 1, 37, 1].into_iter().enumerate() {
        let seed = 100 + 10 * i as u64;
        let q = rand_vec(n * nh * hd, seed, 2.0);
        let k = rand_vec(n * nkv * hd, seed + 1, 1.0);
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
        kv_f16_write::reference(&mut kc, &k, pos, nkv, hd, max_ctx);
        kv_f16_write::reference(&mut vc, &v, pos, nkv, hd, max_ctx);
        let got = ex.read_f32(out, n * nh * hd).unwrap();
        let want = kv_f16_attention::reference(&q, &kc, &vc, n, pos, nh, nkv, hd, max_ctx, scale);
        assert_close(
            &format!("step {i}: {n} tokens at {pos}"),
            &got,
            &want,
            ATOL,
            RTOL,
        );
        pos += n;
    }
}

#[test]
fn check_rejects_bad_shapes() {
    let mut g = Graph::new();
    let q = g.input("q", 4 * 4 * 64);
    let kc = g.input("k_cache", kv::cache_bytes(2, 64, 16));
    let vc = g.input("v_cache", kv::cache_bytes(2, 64, 16));
    let out = g.output("out", 4 * 4 * 64);
    let k = g.input("k", 4 * 2 * 64);
    let good = kv_f16_attention::KvF16Attention {
        q,
        k_cache: kc,
        v_cache: vc,
        out,
        scratch: None,
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 64,
        max_ctx: 16,
        max_rows: 1,
        scale: 0.125,
        seqs: None,
    };
    assert!(
        g.clone()
            .push("ok", Op::KvF16Attention(good.clone()))
            .is_ok()
    );
    let bad = [
        kv_f16_attention::KvF16Attention {
            n_kv_heads: 3,
            ..good.clone()
        },
        kv_f16_attention::KvF16Attention {
            head_dim: 63,
            ..good.clone()
        },
        kv_f16_attention::KvF16Attention {
            head_dim: 36,
            ..good.clone()
        },
        kv_f16_attention::KvF16Attention {
            head_dim: 512,
            ..good.clone()
        },
        kv_f16_attention::KvF16Attention {
            max_rows: 2,
            ..good.clone()
        },
        kv_f16_attention::KvF16Attention {
            max_ctx: 17,
            ..good.clone()
        },
        kv_f16_attention::KvF16Attention {
            scratch: Some(k),
            max_ctx: 16,
            ..good.clone()
        },
    ];
    for a in bad {
        let e = g
            .clone()
            .push("bad", Op::KvF16Attention(a.clone()))
            .unwrap_err();
        assert!(matches!(e, EngineError::Shape { .. }), "{a:?}: {e}");
    }
    // Several sequences in one call (decode over cache slots): pushed with
    // push_seqs for as many sequences as it serves; slots whole rows, at
    // least a cache apart, within the bound tensors, with scratch.
    let one = kv::cache_bytes(2, 64, 16);
    let kcs = g.input("k_caches", 2 * one);
    let vcs = g.input("v_caches", 2 * one);
    let q2 = g.input("q2", 4 * 2 * 4 * 64);
    let out2 = g.output("out2", 4 * 2 * 4 * 64);
    let scratch2 = g.intermediate(
        "scratch2",
        2 * kv_f16_attention::scratch_bytes(4, 64, 16, 2),
    );
    let two = kv_f16_attention::KvF16Attention {
        q: q2,
        k_cache: kcs,
        v_cache: vcs,
        out: out2,
        scratch: Some(scratch2),
        max_rows: 2,
        seqs: Some(kv_f16_attention::Seqs {
            n: 2,
            slot_bytes: one,
        }),
        ..good.clone()
    };
    assert!(
        g.clone()
            .push_seqs(2, "ok", Op::KvF16Attention(two.clone()))
            .is_ok()
    );
    // Pushed as one sequence's node, or for another count: refused.
    assert!(
        g.clone()
            .push("one", Op::KvF16Attention(two.clone()))
            .is_ok()
    );
    assert!(
        g.clone()
            .push_seqs(3, "three", Op::KvF16Attention(two.clone()))
            .is_err()
    );
    assert!(
        g.clone()
            .push_seqs(2, "plain", Op::KvF16Attention(good.clone()))
            .is_err()
    );
    let seqs = |n: u32, slot_bytes: u64| Some(kv_f16_attention::Seqs { n, slot_bytes });
    for b in [
        kv_f16_attention::KvF16Attention {
            seqs: seqs(2, one - 128),
            ..two.clone()
        },
        kv_f16_attention::KvF16Attention {
            seqs: seqs(2, one + 100),
            ..two.clone()
        },
        kv_f16_attention::KvF16Attention {
            seqs: seqs(2, 2 * one),
            ..two.clone()
        },
        kv_f16_attention::KvF16Attention {
            seqs: seqs(3, one),
            max_rows: 3,
            ..two.clone()
        },
        kv_f16_attention::KvF16Attention {
            seqs: seqs(9, one),
            max_rows: 9,
            ..two.clone()
        },
        kv_f16_attention::KvF16Attention {
            scratch: None,
            ..two.clone()
        },
    ] {
        let n = b.seqs.map_or(0, |s| s.n as usize);
        let e = g
            .clone()
            .push_seqs(n, "bad", Op::KvF16Attention(b.clone()))
            .unwrap_err();
        assert!(matches!(e, EngineError::Shape { .. }), "{b:?}: {e}");
    }
    let kw = kv_f16_write::KvF16Write {
        k,
        v: k,
        k_cache: kc,
        v_cache: vc,
        n_kv_heads: 2,
        head_dim: 64,
        max_ctx: 16,
        max_rows: 1,
    };
    assert!(g.clone().push("ok", Op::KvF16Write(kw.clone())).is_ok());
    for b in [
        kv_f16_write::KvF16Write {
            max_rows: 2,
            ..kw.clone()
        },
        kv_f16_write::KvF16Write {
            max_ctx: 17,
            ..kw.clone()
        },
        kv_f16_write::KvF16Write {
            head_dim: 63,
            ..kw.clone()
        },
    ] {
        let e = g.clone().push("bad", Op::KvF16Write(b)).unwrap_err();
        assert!(matches!(e, EngineError::Shape { .. }), "{e}");
    }
}

/// Steps past the context are clamped, not out-of-bounds writes.
#[test]
fn kv_f16_write_drops_rows_past_max_ctx() {
    let (nkv, hd, ctx, n) = (2usize, 40usize, 10usize, 4usize);
    let mut g = Graph::new();
    let kt = g.input("k", 4 * (n * nkv * hd) as u64);
    let bytes = kv::cache_bytes(nkv as u32, hd as u32, ctx as u32);
    let kct = g.input("k_cache", bytes);
    let vct = g.input("v_cache", bytes);
    g.push(
        "kv_f16_write",
        Op::KvF16Write(kv_f16_write::KvF16Write {
            k: kt,
            v: kt,
            k_cache: kct,
            v_cache: vct,
            n_kv_heads: nkv as u32,
            head_dim: hd as u32,
            max_ctx: ctx as u32,
            max_rows: n as u32,
        }),
    )
    .unwrap();
    let mut ex = Executor::new(gpu(), g).unwrap();
    // Large values check the saturation to the f16 range too.
    let k: Vec<f32> = rand_vec(n * nkv * hd, 9, 1.0)
        .iter()
        .map(|x| x * 1e5)
        .collect();
    ex.write(kt, 0, &f32_bytes(&k));
    ex.run(&Step {
        n_tokens: n as u32,
        pos: 8,
        ..Default::default()
    })
    .unwrap();
    let got = from_f16_bytes(&ex.read(kct, bytes).unwrap());
    let mut want = vec![0.0f32; nkv * ctx * hd];
    kv_f16_write::reference(&mut want, &k, 8, nkv, hd, ctx);
    assert_close("kv_f16_write past max_ctx", &got, &want, 0.0, 0.0);
}
