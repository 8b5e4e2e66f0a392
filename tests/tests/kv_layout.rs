//! The quantized KV cache's layouts (`lamina_engine::kv::KvLayout`): every
//! byte a stored token costs, the store's boundary, the window ring, the
//! static scales' words, and the layouts `check` refuses.

use lamina_engine::kv::{KvLayout, KvQuant, QjlShape};

#[test]
fn layouts_count_every_byte() {
    let l = KvLayout {
        n_kv_heads: 3,
        head_dim: 64,
        max_ctx: 512,
        pivot: 1,
        recent: 32,
        ring: KvLayout::ring_for(32, 512),
        k: KvQuant::Qjl,
        v: KvQuant::Q2,
        qgroup: 32,
        k_channel: false,
        qjl: QjlShape {
            m: 128,
            m_out: 64,
            outliers: 4,
            outlier_q8: false,
        },
        exact_prompt: false,
        static_scales: false,
    };
    // Keys: 4 + 2 sign words + 1 norm word; values: 4 code words + 2 scale words.
    assert_eq!((l.k_words(), l.v_words()), (7, 6));
    // Per KV head: 28 + 24 bytes + one aux word per 32 tokens.
    assert!((l.store_bytes_per_token() - 3.0 * (52.0 + 4.0 / 32.0)).abs() < 1e-9);
    // B(len): at least 32 recent tokens, groups of 32 from the pivot.
    assert_eq!(l.boundary(1), 1);
    assert_eq!(l.boundary(64), 1);
    assert_eq!(l.boundary(65), 33);
    assert_eq!(l.boundary(97), 65);
    assert_eq!(l.window_row(0), 0);
    assert_eq!(l.window_row(1 + l.ring), 1);
    // The model-level count: QJL's initial layers at twice m cost their extra
    // sign words (m 256: 8 + 4 + 1 words instead of 4 + 2 + 1).
    let cfg = lamina_model::synthetic::synthetic_config("L4-d192-h3-kv3-f256-v100").unwrap();
    let mut f: lamina_model::kv_cache::KvFormat = "qjl".parse().unwrap();
    let base = f.bytes_per_token(&cfg);
    f.qjl_initial_layers = 2;
    assert_eq!(f.layer_layout(&cfg, 1, 512, 0).qjl.m, 256);
    assert_eq!(f.layer_layout(&cfg, 2, 512, 0).qjl.m, 128);
    assert!((f.bytes_per_token(&cfg) - base - 2.0 * 3.0 * 4.0 * 6.0).abs() < 1e-9);
    // Per-channel keys: q2 codes alone (4 words) and 64 scale words per group.
    let kivi = KvLayout {
        k: KvQuant::Q2,
        k_channel: true,
        ..l
    };
    assert_eq!((kivi.k_words(), kivi.aux_words()), (4, 64));
    assert!((kivi.store_bytes_per_token() - 3.0 * (16.0 + 24.0 + 64.0 * 4.0 / 32.0)).abs() < 1e-9);
    assert_eq!(
        kivi.aux_at(1, 2),
        kivi.aux_base() + (kivi.groups() + 2) * 64
    );
    // 8-bit outliers: 4 sign words, a code word and the norm word per row;
    // the index word and 4 outlier scales per group.
    let q8 = KvLayout {
        qjl: QjlShape {
            m: 128,
            m_out: 0,
            outliers: 4,
            outlier_q8: true,
        },
        ..l
    };
    assert_eq!((q8.k_words(), q8.aux_words()), (6, 5));
    assert!((q8.store_bytes_per_token() - 3.0 * (48.0 + 5.0 * 4.0 / 32.0)).abs() < 1e-9);
    // Per-channel scales are for integer keys only.
    let mut bad = KvLayout {
        k_channel: true,
        ..l
    };
    assert!(bad.check("t", 512).is_err());
    bad.k = KvQuant::F16;
    assert!(bad.check("t", 512).is_err());
    bad = l;
    bad.v = KvQuant::Qjl;
    assert!(bad.check("t", 512).is_err());
    bad = l;
    bad.ring = 100;
    assert!(bad.check("t", 512).is_err());
    // Static scales: codes only (q4: 8 words a row), one word per KV head
    // after each store's rows (and after the keys' aux words, none here);
    // every token past the pivot and the recent window is stored.
    let st = KvLayout {
        k: KvQuant::Q4,
        v: KvQuant::Q4,
        static_scales: true,
        ..l
    };
    st.check("t", 512).expect("static q4 layout");
    assert_eq!((st.k_words(), st.v_words(), st.aux_words()), (8, 8, 0));
    assert!((st.store_bytes_per_token() - 3.0 * 64.0).abs() < 1e-9);
    assert_eq!(st.k_static_at(2), 3 * 512 * 8 + 2);
    assert_eq!(st.v_store_bytes(), 4 * (3 * 512 * 8 + 3));
    assert_eq!(st.k_store_bytes(), st.v_store_bytes());
    assert_eq!((st.boundary(33), st.boundary(34)), (1, 2));
    // Keys per channel: 64 words per head after the (absent) aux words.
    let stc = KvLayout {
        k_channel: true,
        ..st
    };
    stc.check("t", 512).expect("static per-channel keys");
    assert_eq!((stc.k_words(), stc.aux_words()), (8, 0));
    assert_eq!(stc.k_static_at(2), 3 * 512 * 8 + 2 * 64);
    assert_eq!(stc.k_store_bytes(), 4 * (3 * 512 * 8 + 3 * 64));
    // ... with integer keys and values only.
    for bad in [
        KvLayout {
            k: KvQuant::Qjl,
            ..st
        },
        KvLayout {
            v: KvQuant::F16,
            ..st
        },
    ] {
        assert!(bad.check("t", 512).is_err(), "{bad:?}");
    }
}
