//! Tokenizer and chat template vs the golden outputs of HF transformers
//! (/work/shared/golden: tokenize.json, greedy.json, tokenizer_crosscheck.json).
//!
//! The tokenizer under test is always built from GGUF metadata, never from
//! golden/tokenizer.json's pipeline:
//! - `gguf_*` tests read the real GGUF ($LAMINA_MODEL or the cache path) and
//!   skip with a notice when it is absent;
//! - `golden_*` tests always run. golden/config.json holds the GGUF metadata
//!   (model "gpt2", pre "smollm", special ids, add_bos, template) but elides
//!   the three big arrays. The tokens and merges are taken from
//!   golden/tokenizer.json's `model.vocab` / `model.merges`, which hold the
//!   same arrays (the GGUF test asserts that); the token types are CONTROL
//!   for the special tokens config.json lists. Nothing else of tokenizer.json
//!   (its pre-tokenizer, added tokens, decoder) is used.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use lamina_model::chat::{ChatMessage, ChatTemplate};
use lamina_model::checkpoint::TokenizerSpec;
use lamina_model::tokenizer::{Tokenizer, token_type};
use serde_json::Value;

const GOLDEN: &str = "/work/shared/golden";
const WIKITEXT_TEST: &str = "/work/shared/data/wikitext-2-raw/wiki.test.raw";
const DEFAULT_GGUF: &str = "/root/.cache/lamina/models/SmolLM2-135M-Instruct.Q4_1.gguf";

fn golden_json(name: &str) -> Result<Value> {
    let path = Path::new(GOLDEN).join(name);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

fn ids_of(v: &Value) -> Result<Vec<u32>> {
    v.as_array()
        .context("expected an array of ids")?
        .iter()
        .map(|x| x.as_u64().map(|n| n as u32).context("expected an id"))
        .collect()
}

fn str_of<'a>(v: &'a Value, key: &str) -> Result<&'a str> {
    v[key]
        .as_str()
        .with_context(|| format!("missing string {key:?}"))
}

/// The SmolLM2 GGUF's tokenizer metadata, rebuilt from golden files (see the module doc).
fn golden_spec() -> Result<TokenizerSpec> {
    let config = golden_json("config.json")?;
    let meta = &config["gguf_metadata"];
    let hf = golden_json("tokenizer.json")?;

    let vocab = hf["model"]["vocab"]
        .as_object()
        .context("tokenizer.json model.vocab")?;
    let mut tokens = vec![String::new(); vocab.len()];
    for (text, id) in vocab {
        let id = id.as_u64().context("vocab id")? as usize;
        *tokens.get_mut(id).context("vocab id out of range")? = text.clone();
    }
    let merges = hf["model"]["merges"]
        .as_array()
        .context("tokenizer.json model.merges")?
        .iter()
        .map(|m| match m {
            Value::String(s) => Ok(s.clone()),
            Value::Array(pair) if pair.len() == 2 => Ok(format!(
                "{} {}",
                pair[0].as_str().context("merge")?,
                pair[1].as_str().context("merge")?
            )),
            other => bail!("unexpected merge {other}"),
        })
        .collect::<Result<Vec<_>>>()?;

    let mut token_types = vec![token_type::NORMAL; tokens.len()];
    for id in config["tokenizer"]["special_tokens"]
        .as_object()
        .context("special_tokens")?
        .values()
    {
        token_types[id.as_u64().context("special id")? as usize] = token_type::CONTROL;
    }
    let id = |key: &str| meta[key].as_u64().map(|n| n as u32);
    Ok(TokenizerSpec {
        model: str_of(meta, "tokenizer.ggml.model")?.to_owned(),
        pre: meta["tokenizer.ggml.pre"].as_str().map(str::to_owned),
        tokens,
        merges,
        token_types,
        scores: Vec::new(),
        bos_id: id("tokenizer.ggml.bos_token_id"),
        eos_id: id("tokenizer.ggml.eos_token_id"),
        unk_id: id("tokenizer.ggml.unknown_token_id"),
        pad_id: id("tokenizer.ggml.padding_token_id"),
        add_bos: meta["tokenizer.ggml.add_bos_token"]
            .as_bool()
            .unwrap_or(false),
        add_eos: false,
        chat_template: meta["tokenizer.chat_template"].as_str().map(str::to_owned),
        hf_json: None,
    })
}

/// Built once: 49,152 tokens and 48,900 merges take a moment in a debug build.
fn golden_tokenizer() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        let spec = golden_spec().expect("golden spec");
        Tokenizer::from_spec(&spec).expect("tokenizer from golden spec")
    })
}

fn gguf_path() -> Option<PathBuf> {
    let path =
        std::env::var_os("LAMINA_MODEL").map_or_else(|| PathBuf::from(DEFAULT_GGUF), PathBuf::from);
    if path.exists() {
        Some(path)
    } else {
        eprintln!("SKIP: no GGUF at {} (set LAMINA_MODEL)", path.display());
        None
    }
}

/// Every tokenize.json case: ids (with and without special handling), token
/// texts, decode, and streaming decode. Returns the mismatches.
fn check_tokenize_cases(tok: &Tokenizer) -> Result<Vec<String>> {
    let golden = golden_json("tokenize.json")?;
    let cases = golden["cases"].as_array().context("cases")?;
    ensure!(
        cases.len() == 37,
        "expected 37 cases, found {}",
        cases.len()
    );
    let mut failures = Vec::new();
    for case in cases {
        let name = str_of(case, "name")?;
        let text = str_of(case, "text")?;
        let want = ids_of(&case["ids_no_special"])?;
        let want_special = ids_of(&case["ids_with_special"])?;
        let got = tok.encode(text, false)?;
        let got_special = tok.encode(text, true)?;
        if got != want {
            let at = got
                .iter()
                .zip(&want)
                .position(|(a, b)| a != b)
                .unwrap_or(got.len().min(want.len()));
            failures.push(format!(
                "{name}: ids differ at {at}\n  text {text:?}\n  want {want:?}\n  got  {got:?}\n  got tokens {:?}",
                got.iter().map(|&i| tok.token_str(i).unwrap_or("?")).collect::<Vec<_>>()
            ));
            continue;
        }
        if got_special != want_special {
            failures.push(format!(
                "{name}: add_special ids {got_special:?}, want {want_special:?}"
            ));
        }
        let want_tokens: Vec<&str> = case["tokens"]
            .as_array()
            .context("tokens")?
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let got_tokens: Vec<&str> = got
            .iter()
            .map(|&i| tok.token_str(i).unwrap_or("?"))
            .collect();
        if got_tokens != want_tokens {
            failures.push(format!(
                "{name}: token texts {got_tokens:?}, want {want_tokens:?}"
            ));
        }
        let decoded = str_of(case, "decoded")?;
        let got_decoded = tok.decode(&want)?;
        if got_decoded != decoded {
            failures.push(format!("{name}: decode {got_decoded:?}, want {decoded:?}"));
        }
        let mut stream = tok.stream_decoder_at_start();
        let mut streamed = String::new();
        for &id in &want {
            let piece = stream.push(id)?;
            if piece.contains(char::REPLACEMENT_CHARACTER) {
                failures.push(format!("{name}: stream emitted U+FFFD for id {id}"));
            }
            streamed.push_str(&piece);
        }
        streamed.push_str(&stream.flush());
        if streamed != decoded {
            failures.push(format!(
                "{name}: stream decode {streamed:?}, want {decoded:?}"
            ));
        }
    }
    println!(
        "tokenize.json: {}/{} cases match",
        cases.len() - failures.len(),
        cases.len()
    );
    Ok(failures)
}

/// Chat cases of tokenize.json and the chat prompts of greedy.json: render the
/// template from the model's metadata, encode, compare text and ids.
fn check_chat(tok: &Tokenizer) -> Result<usize> {
    let template = ChatTemplate::from_tokenizer(tok)?;
    let messages =
        |v: &Value| -> Result<Vec<ChatMessage>> { Ok(serde_json::from_value(v.clone())?) };
    let mut checked = 0;

    let golden = golden_json("tokenize.json")?;
    let by_name = |name: &str| {
        golden["cases"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["name"] == name))
    };
    for (case, conv, gen_prompt) in [
        ("chat_template_short", "short", true),
        ("chat_template_short_no_gen_prompt", "short", false),
        ("chat_template_multi_turn", "multi_turn", true),
    ] {
        let case = by_name(case).with_context(|| format!("case {case}"))?;
        let msgs = messages(&golden["chat_messages"][conv])?;
        let text = template.render_for(tok, &msgs, gen_prompt)?;
        assert_eq!(
            text,
            str_of(case, "text")?,
            "rendered text of {}",
            case["name"]
        );
        assert_eq!(
            tok.encode(&text, true)?,
            ids_of(&case["ids_with_special"])?,
            "ids of {}",
            case["name"]
        );
        checked += 1;
    }

    let greedy = golden_json("greedy.json")?;
    for p in greedy["prompts"].as_array().context("prompts")? {
        let name = str_of(p, "name")?;
        let prompt_text = str_of(p, "prompt_text")?;
        if p["kind"] == "chat" {
            let text = template.render_for(tok, &messages(&p["messages"])?, true)?;
            assert_eq!(text, prompt_text, "rendered text of {name}");
        }
        assert_eq!(
            tok.encode(prompt_text, true)?,
            ids_of(&p["prompt_ids"])?,
            "prompt ids of {name}"
        );
        // The generated ids decode to the golden text, and the first EOG is where HF stopped.
        let new_ids = ids_of(&p["new_ids"])?;
        assert_eq!(
            tok.decode(&new_ids)?,
            str_of(p, "text")?,
            "decoded text of {name}"
        );
        let until = ids_of(&p["new_ids_until_eos"])?;
        assert_eq!(
            tok.decode(&until)?,
            str_of(p, "text_until_eos")?,
            "text until EOS of {name}"
        );
        let first_eog = new_ids.iter().position(|&id| tok.is_eog(id));
        assert_eq!(
            first_eog.map(|i| i as u64),
            p["eos_index"].as_u64(),
            "eos_index of {name}"
        );
        checked += 1;
    }
    println!("chat: {checked} prompts match");
    Ok(checked)
}

fn check_special_ids(tok: &Tokenizer) {
    assert_eq!(tok.vocab_size(), 49152);
    assert_eq!(tok.bos_id(), Some(1));
    assert_eq!(tok.eos_id(), Some(2));
    assert_eq!(tok.token_str(1), Some("<|im_start|>"));
    assert_eq!(tok.token_id("<|im_end|>"), Some(2));
    for (id, eog) in [(0, true), (1, false), (2, true), (3, false), (198, false)] {
        assert_eq!(tok.is_eog(id), eog, "is_eog({id})");
    }
    assert_eq!(tok.eog_ids(), &[0, 2]);
    assert!(tok.is_special(0) && !tok.is_special(17));
    assert!(tok.decode(&[49152]).is_err());
    assert!(tok.stream_decoder().push(u32::MAX).is_err());
}

/// The real GGUF through the model loader: same golden results, and its
/// arrays are the ones the `golden_*` tests rebuild from golden files.
#[test]
fn gguf_tokenizer_matches_golden() -> Result<()> {
    let Some(path) = gguf_path() else {
        return Ok(());
    };
    let model =
        lamina_model::loader::load(&path).with_context(|| format!("loading {}", path.display()))?;
    let spec = &model.tokenizer_spec;
    let golden = golden_spec()?;
    assert_eq!(
        (spec.model.as_str(), spec.pre.as_deref()),
        ("gpt2", Some("smollm"))
    );
    assert!(
        spec.tokens == golden.tokens,
        "GGUF tokens differ from golden/tokenizer.json's vocab"
    );
    assert!(
        spec.merges == golden.merges,
        "GGUF merges differ from golden/tokenizer.json's merges"
    );
    assert!(
        spec.token_types == golden.token_types,
        "GGUF token types differ from config.json's special tokens"
    );
    assert_eq!(spec.chat_template, golden.chat_template);
    assert!(!spec.add_bos && !spec.add_eos);

    let tok = Tokenizer::from_spec(spec)?;
    check_special_ids(&tok);
    let failures = check_tokenize_cases(&tok)?;
    ensure!(
        failures.is_empty(),
        "{} case(s) differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(check_chat(&tok)?, 3 + 8);
    Ok(())
}

#[test]
fn golden_tokenize_cases_match() -> Result<()> {
    let failures = check_tokenize_cases(golden_tokenizer())?;
    ensure!(
        failures.is_empty(),
        "{} case(s) differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
    Ok(())
}

#[test]
fn golden_chat_prompts_match() -> Result<()> {
    assert_eq!(check_chat(golden_tokenizer())?, 3 + 8);
    Ok(())
}

#[test]
fn golden_special_ids() {
    check_special_ids(golden_tokenizer());
}

#[test]
fn stream_decoder_holds_back_split_characters() -> Result<()> {
    let tok = golden_tokenizer();
    let text = "👨\u{200d}👩\u{200d}👧\u{200d}👦 family, ❤️ 🦀 日本語";
    let ids = tok.encode(text, false)?;
    let mut stream = tok.stream_decoder();
    let pieces: Vec<String> = ids
        .iter()
        .map(|&id| stream.push(id))
        .collect::<lamina_model::Result<_>>()?;
    // At least one token ends mid-character, so some pushes print nothing yet.
    assert!(pieces.iter().any(String::is_empty), "{pieces:?}");
    assert!(
        pieces
            .iter()
            .all(|p| !p.contains(char::REPLACEMENT_CHARACTER)),
        "{pieces:?}"
    );
    assert_eq!(pieces.concat() + &stream.flush(), text);

    // A character that never completes is flushed as U+FFFD, as decode does.
    let emoji = tok.encode("🦀", false)?;
    assert!(emoji.len() > 1, "{emoji:?}");
    let mut stream = tok.stream_decoder();
    assert_eq!(stream.push(emoji[0])?, "");
    assert_eq!(stream.flush(), tok.decode(&emoji[..1])?);
    Ok(())
}

#[test]
fn model_without_template_is_an_error() -> Result<()> {
    let mut spec = golden_spec()?;
    spec.chat_template = None;
    let tok = Tokenizer::from_spec(&spec)?;
    let err = ChatTemplate::from_tokenizer(&tok).expect_err("no template");
    assert!(
        err.to_string().contains("model has no chat template"),
        "{err}"
    );
    Ok(())
}

/// WikiText-2 test split in one call, as llama-perplexity tokenizes it:
/// 303,415 tokens (golden/tokenizer_crosscheck.json), and around token 238,941
/// (" 4 ½ months", where a plain ByteLevel pre-tokenizer differs) the golden tokens.
#[test]
fn golden_wikitext_test_tokens() -> Result<()> {
    let crosscheck = golden_json("tokenizer_crosscheck.json")?;
    let wiki = &crosscheck["wikitext"];
    let text = std::fs::read_to_string(WIKITEXT_TEST).with_context(|| WIKITEXT_TEST.to_owned())?;
    let tok = golden_tokenizer();
    let start = Instant::now();
    let ids = tok.encode(&text, true)?;
    println!("wikitext: {} tokens in {:.2?}", ids.len(), start.elapsed());
    assert_eq!(
        ids.len() as u64,
        wiki["n_tokens_golden"]
            .as_u64()
            .context("n_tokens_golden")?
    );

    let diff = wiki["gguf_converted_first_diff"]
        .as_u64()
        .context("first diff")? as usize;
    let context: Vec<&str> = wiki["gguf_converted_first_diff_context"]["golden"]
        .as_array()
        .context("context")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    // The context starts 3 tokens before the first difference (" 4" then " ½").
    let got: Vec<&str> = ids[diff - 3..diff - 3 + context.len()]
        .iter()
        .map(|&i| tok.token_str(i).unwrap_or("?"))
        .collect();
    assert_eq!(got, context);
    assert_eq!(tok.decode(&ids)?, text, "round trip of the whole file");
    Ok(())
}

/// HF's own tokenizer.json through the "hf-json" path gives the same results.
#[test]
fn golden_hf_json_matches() -> Result<()> {
    let json = std::fs::read_to_string(Path::new(GOLDEN).join("tokenizer.json"))?;
    let golden = golden_spec()?;
    let spec = TokenizerSpec {
        model: "hf-json".into(),
        hf_json: Some(json),
        bos_id: golden.bos_id,
        eos_id: golden.eos_id,
        chat_template: golden.chat_template,
        ..TokenizerSpec::default()
    };
    let tok = Tokenizer::from_spec(&spec)?;
    check_special_ids(&tok);
    let failures = check_tokenize_cases(&tok)?;
    ensure!(
        failures.is_empty(),
        "{} case(s) differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
    Ok(())
}

/// A hand-made SentencePiece vocabulary: merges follow the scores, spaces
/// become `▁` with one prepended, unknown characters fall back to bytes.
fn tiny_spm() -> Result<Tokenizer> {
    use token_type::{BYTE, CONTROL, NORMAL, UNKNOWN};
    #[rustfmt::skip]
    let vocab: &[(&str, f32, i32)] = &[
        ("<unk>", 0.0, UNKNOWN), ("<s>", 0.0, CONTROL), ("</s>", 0.0, CONTROL),
        ("<0x0A>", 0.0, BYTE), ("<0xC3>", 0.0, BYTE), ("<0xA9>", 0.0, BYTE),
        ("▁", -1.0, NORMAL), ("h", -2.0, NORMAL), ("e", -2.0, NORMAL), ("l", -2.0, NORMAL),
        ("o", -2.0, NORMAL), ("w", -2.0, NORMAL), ("r", -2.0, NORMAL), ("d", -2.0, NORMAL),
        ("ll", -3.0, NORMAL), ("he", -4.0, NORMAL), ("llo", -5.0, NORMAL), ("hello", -6.0, NORMAL),
        ("▁hello", -7.0, NORMAL), ("▁w", -8.0, NORMAL), ("or", -9.0, NORMAL),
        ("▁wor", -10.0, NORMAL), ("ld", -11.0, NORMAL), ("▁world", -12.0, NORMAL),
    ];
    Ok(Tokenizer::from_spec(&TokenizerSpec {
        model: "llama".into(),
        tokens: vocab.iter().map(|v| v.0.to_owned()).collect(),
        scores: vocab.iter().map(|v| v.1).collect(),
        token_types: vocab.iter().map(|v| v.2).collect(),
        bos_id: Some(1),
        eos_id: Some(2),
        unk_id: Some(0),
        add_bos: true,
        ..TokenizerSpec::default()
    })?)
}

#[test]
fn sentencepiece_tiny_vocab() -> Result<()> {
    let tok = tiny_spm()?;
    assert_eq!(tok.encode("hello world", false)?, [18, 23]);
    assert_eq!(tok.encode("hello world", true)?, [1, 18, 23]);
    assert_eq!(tok.decode(&[18, 23])?, "hello world");
    assert_eq!(tok.decode(&[1, 18, 23])?, "<s> hello world");
    // é is not in the vocabulary: its UTF-8 bytes; ☃ has no byte tokens: <unk>.
    let ids = tok.encode("héllo\n☃", false)?;
    assert_eq!(ids, [6, 7, 4, 5, 16, 3, 0]);
    assert_eq!(tok.decode(&ids[..6])?, "héllo\n");
    // Like llama.cpp, text after a special token gets its own ▁.
    assert_eq!(tok.encode("<s>hello</s>", false)?, [1, 18, 2]);
    assert!(tok.is_eog(2) && !tok.is_eog(1));

    let mut stream = tok.stream_decoder_at_start();
    let out: Vec<String> = ids[..6]
        .iter()
        .map(|&id| stream.push(id))
        .collect::<lamina_model::Result<_>>()?;
    assert_eq!(out, ["", "h", "", "é", "llo", "\n"]);
    // Continuing a prompt, the ▁ of the first new token is a real space.
    let mut stream = tok.stream_decoder();
    assert_eq!(stream.push(23)?, " world");
    Ok(())
}

/// A hand-made byte-level vocabulary: the `pre` name picks how digits and
/// whole words are cut, as llama.cpp does.
#[test]
fn gpt2_pre_tokenizers_differ_as_in_llama_cpp() -> Result<()> {
    let tokens = [
        "<|endoftext|>",
        "1",
        "2",
        "3",
        "4",
        "12",
        "34",
        "a",
        "b",
        "c",
        "abc",
        "Ġ",
    ];
    let tok = |pre: &str| {
        Tokenizer::from_spec(&TokenizerSpec {
            model: "gpt2".into(),
            pre: Some(pre.into()),
            tokens: tokens.map(String::from).to_vec(),
            merges: vec!["3 4".into(), "1 2".into()],
            token_types: [3].into_iter().chain([1; 11]).collect(),
            eos_id: Some(0),
            ..TokenizerSpec::default()
        })
    };
    // GPT-2 keeps digit runs whole, Llama 3 cuts them in threes, SmolLM in ones.
    assert_eq!(tok("gpt2")?.encode("1234", true)?, [5, 6]);
    assert_eq!(tok("llama-bpe")?.encode("1234", true)?, [5, 3, 4]);
    assert_eq!(
        tok("smollm")?.encode("1234<|endoftext|>", true)?,
        [1, 2, 3, 4, 0]
    );
    // Llama 3 takes a whole word found in the vocabulary without merging.
    assert_eq!(tok("llama-bpe")?.encode("abc", false)?, [10]);
    assert_eq!(tok("gpt2")?.encode("abc", false)?, [7, 8, 9]);
    assert_eq!(
        tok("some-new-pre")?.decode(&[11, 5, 0])?,
        " 12<|endoftext|>"
    );
    let bad = Tokenizer::from_spec(&TokenizerSpec {
        model: "gpt2".into(),
        tokens: vec!["a".into()],
        merges: vec!["a b".into()],
        ..TokenizerSpec::default()
    });
    assert!(bad.is_err(), "a merge naming an unknown token must fail");
    let unknown = TokenizerSpec {
        model: "rwkv".into(),
        tokens: vec!["a".into()],
        ..TokenizerSpec::default()
    };
    assert!(Tokenizer::from_spec(&unknown).is_err());
    Ok(())
}
