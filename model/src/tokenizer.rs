//! Text <-> token ids, built from a model file's own tokenizer description.
//!
//! A GGUF carries its vocabulary as arrays (`tokenizer.ggml.*`), an HF
//! directory as a `tokenizer.json`. Both become a [`TokenizerSpec`], and
//! [`Tokenizer::from_spec`] turns the spec into a pipeline of the `tokenizers`
//! crate that reproduces what llama.cpp and HF do for that model:
//!
//! - `gpt2`: byte-level BPE. The pre-tokenizer follows llama.cpp's
//!   `tokenizer.ggml.pre` (src/llama-vocab.cpp): it decides how text is cut
//!   into words before merging, and a wrong choice changes ids (SmolLM2's
//!   "smollm" isolates every digit first; a plain GPT-2 regex does not).
//! - `llama`: SentencePiece BPE from tokens + scores, with `<0xXX>` byte
//!   fallback and `▁` for spaces.
//! - `hf-json`: the tokenizer.json as HF wrote it.
//!
//! Control tokens found in the text (`<|im_start|>`) encode to their single id,
//! as HF (`split_special_tokens=False`) and llama.cpp (`parse_special`) do.

use std::sync::Arc;

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{BPE, Merges, Vocab};
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, PreTokenizerWrapper, SplitDelimiterBehavior,
};

use crate::checkpoint::TokenizerSpec;
use crate::{ModelError, Result};

/// GGUF `tokenizer.ggml.token_type` values (llama.cpp `llama_token_type`).
pub mod token_type {
    pub const NORMAL: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const CONTROL: i32 = 3;
    pub const USER_DEFINED: i32 = 4;
    pub const UNUSED: i32 = 5;
    pub const BYTE: i32 = 6;
}

/// GPT-2's word regex, as in the `tokenizers` ByteLevel pre-tokenizer and
/// llama.cpp's default BPE split.
const GPT2_REGEX: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
/// Llama 3's word regex (llama.cpp `LLAMA_VOCAB_PRE_TYPE_LLAMA3`): digits in
/// groups of at most three, case-insensitive contractions.
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's word regex: Llama 3's with every digit on its own.
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Token texts that end a turn when the vocabulary has them as special tokens,
/// besides the declared EOS (the list llama.cpp scans for its EOG set).
const EOG_TEXTS: &[&str] = &[
    "<|im_end|>",
    "<|endoftext|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end_of_text|>",
    "<|end|>",
    "<end_of_turn>",
    "<EOT>",
    "</s>",
    "<｜end▁of▁sentence｜>",
];

/// The SentencePiece space marker.
const SPM_SPACE: char = '▁';

/// How a token id turns back into bytes, and what the streaming decoder must
/// do with them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PieceKind {
    /// GPT-2 byte-to-unicode alphabet.
    ByteLevel,
    /// `▁` for space, `<0xXX>` for raw bytes; the first space of the output is
    /// dropped (it was prepended on encode).
    SentencePiece,
    /// Anything else from a tokenizer.json: each token decoded on its own.
    Other,
}

/// Every token's bytes, flattened: token `i` is `data[offsets[i]..offsets[i + 1]]`.
/// Shared by all [`StreamDecoder`]s so that streaming allocates nothing per token.
#[derive(Debug)]
struct Pieces {
    data: Vec<u8>,
    offsets: Vec<usize>,
    strip_leading_space: bool,
}

impl Pieces {
    fn build(
        tokens: &[String],
        kind: PieceKind,
        other: impl Fn(u32) -> Result<Vec<u8>>,
    ) -> Result<Self> {
        let table = (kind == PieceKind::ByteLevel).then(byte_level_decode_table);
        let mut data = Vec::new();
        let mut offsets = Vec::with_capacity(tokens.len() + 1);
        offsets.push(0);
        for (id, tok) in tokens.iter().enumerate() {
            match kind {
                PieceKind::ByteLevel => {
                    // Like the HF ByteLevel decoder: a token with a char outside
                    // the alphabet (an added token) is taken as plain UTF-8.
                    let mapped: Option<Vec<u8>> = tok
                        .chars()
                        .map(|c| {
                            table
                                .as_ref()
                                .and_then(|t| t.get(c as usize).copied().flatten())
                        })
                        .collect();
                    data.extend(mapped.unwrap_or_else(|| tok.as_bytes().to_vec()));
                }
                PieceKind::SentencePiece => match parse_byte_token(tok) {
                    Some(b) => data.push(b),
                    None => data.extend(tok.replace(SPM_SPACE, " ").into_bytes()),
                },
                PieceKind::Other => data.extend(other(id as u32)?),
            }
            offsets.push(data.len());
        }
        Ok(Pieces {
            data,
            offsets,
            strip_leading_space: kind == PieceKind::SentencePiece,
        })
    }

    fn get(&self, id: u32) -> Option<&[u8]> {
        let i = id as usize;
        let (start, end) = (*self.offsets.get(i)?, *self.offsets.get(i + 1)?);
        self.data.get(start..end)
    }
}

/// GPT-2's byte <-> unicode map, inverted: index = char code, value = byte.
/// Printable Latin-1 bytes stand for themselves; the other 68 bytes were moved
/// to U+0100.. so that every byte has a visible, non-space char.
fn byte_level_decode_table() -> Vec<Option<u8>> {
    let mut table = vec![None; 256 + 68];
    let mut shifted = 0usize;
    for b in 0u8..=255 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        let code = if printable {
            b as usize
        } else {
            shifted += 1;
            255 + shifted
        };
        table[code] = Some(b);
    }
    table
}

/// `<0xAB>` -> 0xAB: SentencePiece's byte-fallback tokens.
fn parse_byte_token(tok: &str) -> Option<u8> {
    let hex = tok.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

fn tok_err(e: impl std::fmt::Display) -> ModelError {
    ModelError::Tokenizer(e.to_string())
}

/// A model's tokenizer: encode, decode, special ids, streaming detokenizer.
/// Cheap to clone (the vocabulary tables are shared).
#[derive(Clone)]
pub struct Tokenizer {
    hf: Arc<tokenizers::Tokenizer>,
    pieces: Arc<Pieces>,
    /// Token text by id (GGUF form, e.g. `Ġworld`); empty for unused ids.
    tokens: Arc<Vec<String>>,
    special: Arc<Vec<bool>>,
    /// End-of-generation ids, sorted.
    eog: Vec<u32>,
    bos_id: Option<u32>,
    eos_id: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    chat_template: Option<String>,
}

impl std::fmt::Debug for Tokenizer {
    // The derived form would print the whole vocabulary.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.tokens.len())
            .field("bos_id", &self.bos_id)
            .field("eos_id", &self.eos_id)
            .field("eog", &self.eog)
            .field("add_bos", &self.add_bos)
            .finish_non_exhaustive()
    }
}

impl Tokenizer {
    /// Builds the tokenizer a model file describes. Fails on an unknown model
    /// type, a merge that names a token not in the vocabulary, or a bad tokenizer.json.
    pub fn from_spec(spec: &TokenizerSpec) -> Result<Tokenizer> {
        if spec.hf_json.is_some() || spec.model == "hf-json" {
            return Self::from_hf_json(spec);
        }
        if spec.tokens.is_empty() {
            return Err(ModelError::Tokenizer("the vocabulary is empty".into()));
        }
        let types = effective_token_types(spec);
        let (hf, kind) = match spec.model.as_str() {
            "gpt2" => (build_gpt2(spec, &types)?, PieceKind::ByteLevel),
            "llama" => (build_spm(spec, &types)?, PieceKind::SentencePiece),
            other => {
                return Err(ModelError::Unsupported(format!(
                    "tokenizer model {other:?} (Lamina reads \"gpt2\", \"llama\" and tokenizer.json)"
                )));
            }
        };
        let special: Vec<bool> = types
            .iter()
            .map(|&t| {
                matches!(
                    t,
                    token_type::CONTROL | token_type::UNKNOWN | token_type::USER_DEFINED
                )
            })
            .collect();
        let pieces = Pieces::build(&spec.tokens, kind, |_| Ok(Vec::new()))?;
        Ok(Self::assemble(
            hf,
            pieces,
            spec.tokens.clone(),
            special,
            spec,
        ))
    }

    /// HF `tokenizer.json`: the pipeline is taken as written; only the
    /// streaming table is derived here, from the decoder it declares.
    fn from_hf_json(spec: &TokenizerSpec) -> Result<Tokenizer> {
        let json = spec.hf_json.as_deref().ok_or_else(|| {
            ModelError::Tokenizer("model \"hf-json\" without tokenizer.json contents".into())
        })?;
        let hf = tokenizers::Tokenizer::from_bytes(json.as_bytes()).map_err(tok_err)?;
        let parsed: serde_json::Value = serde_json::from_str(json)
            .map_err(|e| ModelError::Tokenizer(format!("tokenizer.json: {e}")))?;

        let vocab = hf.get_vocab(true);
        let size = vocab.values().copied().max().map_or(0, |m| m as usize + 1);
        let mut tokens = vec![String::new(); size];
        for (text, id) in vocab {
            tokens[id as usize] = text;
        }
        let mut special = vec![false; size];
        for (id, added) in hf.get_added_tokens_decoder() {
            if let Some(s) = special.get_mut(id as usize) {
                *s = added.special;
            }
        }

        let kind = hf_piece_kind(&parsed["decoder"]);
        let mut pieces = Pieces::build(&tokens, kind, |id| {
            hf.decode(&[id], false)
                .map(String::into_bytes)
                .map_err(tok_err)
        })?;
        if kind == PieceKind::SentencePiece {
            pieces.strip_leading_space = json_has_type(&parsed["decoder"], "Strip")
                || json_has_type(&parsed["decoder"], "Metaspace");
        }
        Ok(Self::assemble(hf, pieces, tokens, special, spec))
    }

    fn assemble(
        hf: tokenizers::Tokenizer,
        pieces: Pieces,
        tokens: Vec<String>,
        special: Vec<bool>,
        spec: &TokenizerSpec,
    ) -> Tokenizer {
        let mut eog: Vec<u32> = spec.eos_id.into_iter().collect();
        for (id, text) in tokens.iter().enumerate() {
            if special.get(id).copied().unwrap_or(false) && EOG_TEXTS.contains(&text.as_str()) {
                eog.push(id as u32);
            }
        }
        eog.sort_unstable();
        eog.dedup();
        Tokenizer {
            hf: Arc::new(hf),
            pieces: Arc::new(pieces),
            tokens: Arc::new(tokens),
            special: Arc::new(special),
            eog,
            bos_id: spec.bos_id,
            eos_id: spec.eos_id,
            add_bos: spec.add_bos,
            add_eos: spec.add_eos,
            chat_template: spec.chat_template.clone(),
        }
    }

    /// Text -> ids. Special-token strings in `text` become their ids.
    /// `add_special` adds BOS/EOS only where the model asks for them
    /// (`tokenizer.ggml.add_bos_token`; SmolLM2 asks for neither), and not a
    /// second time when the text already starts with BOS, as a rendered chat
    /// template that writes `{{ bos_token }}` does. For a tokenizer.json the
    /// spec's flags decide too (the HF loader derives them from
    /// `tokenizer_config.json` or the post-processor), so its post-processor
    /// is not run.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        let enc = self.hf.encode(text, false).map_err(tok_err)?;
        let mut ids = enc.get_ids().to_vec();
        if add_special
            && self.add_bos
            && let Some(bos) = self.bos_id
            && ids.first() != Some(&bos)
        {
            ids.insert(0, bos);
        }
        if add_special
            && self.add_eos
            && let Some(eos) = self.eos_id
            && ids.last() != Some(&eos)
        {
            ids.push(eos);
        }
        Ok(ids)
    }

    /// Ids -> text, special tokens included (`<|im_end|>` is printed).
    /// Byte sequences that are not UTF-8 come out as U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= self.tokens.len()) {
            return Err(ModelError::Tokenizer(format!(
                "token id {bad} is outside the vocabulary ({} tokens)",
                self.tokens.len()
            )));
        }
        self.hf.decode(ids, false).map_err(tok_err)
    }

    /// A detokenizer for generated text that continues a prompt; see
    /// [`StreamDecoder`]. A SentencePiece `▁Paris` right after the prompt
    /// prints as " Paris".
    pub fn stream_decoder(&self) -> StreamDecoder {
        StreamDecoder {
            pieces: Arc::clone(&self.pieces),
            pending: Vec::new(),
            strip_space: false,
        }
    }

    /// A detokenizer for a whole sequence from its first token: output equals
    /// [`Tokenizer::decode`], including SentencePiece dropping the space it
    /// prepended on encode.
    pub fn stream_decoder_at_start(&self) -> StreamDecoder {
        StreamDecoder {
            pieces: Arc::clone(&self.pieces),
            pending: Vec::new(),
            strip_space: self.pieces.strip_leading_space,
        }
    }

    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.eos_id
    }

    /// Whether generation should stop at `id`: the EOS, or a turn/document end
    /// token the vocabulary marks special (`<|im_end|>`, `<|endoftext|>`, `<|eot_id|>`...).
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.binary_search(&id).is_ok()
    }

    /// All end-of-generation ids, sorted.
    pub fn eog_ids(&self) -> &[u32] {
        &self.eog
    }

    /// Whether `id` is a control / added token rather than text.
    pub fn is_special(&self, id: u32) -> bool {
        self.special.get(id as usize).copied().unwrap_or(false)
    }

    /// The token's vocabulary entry, as stored (`Ġworld`, `▁hello`, `<|im_end|>`).
    pub fn token_str(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    /// The id of a vocabulary entry, e.g. `"<|im_end|>"`.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.hf.token_to_id(token)
    }

    /// The raw chat template from the model file, if it has one.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }
}

/// Token types, filled in when the file has none: without them the declared
/// BOS/EOS/UNK/PAD would be split into characters when they occur in text.
fn effective_token_types(spec: &TokenizerSpec) -> Vec<i32> {
    let n = spec.tokens.len();
    if spec.token_types.len() == n {
        return spec.token_types.clone();
    }
    if !spec.token_types.is_empty() {
        log::warn!(
            "tokenizer: {} token types for {n} tokens; ignoring them",
            spec.token_types.len()
        );
    }
    let mut types = vec![token_type::NORMAL; n];
    for id in [spec.bos_id, spec.eos_id, spec.pad_id]
        .into_iter()
        .flatten()
    {
        if let Some(t) = types.get_mut(id as usize) {
            *t = token_type::CONTROL;
        }
    }
    if let Some(t) = spec.unk_id.and_then(|id| types.get_mut(id as usize)) {
        *t = token_type::UNKNOWN;
    }
    types
}

/// Vocabulary map keeping the first id of a duplicated text, as llama.cpp's
/// `token_to_id` does.
fn vocab_map(tokens: &[String]) -> Vocab {
    let mut vocab = Vocab::default();
    for (id, tok) in tokens.iter().enumerate() {
        vocab.entry(tok.clone()).or_insert(id as u32);
    }
    vocab
}

/// Registers control / user-defined tokens so the text splitter matches them
/// before pre-tokenization. Their ids come from the model's vocabulary.
fn add_special_tokens(hf: &mut tokenizers::Tokenizer, tokens: &[String], types: &[i32]) {
    let added: Vec<AddedToken> = tokens
        .iter()
        .zip(types)
        .filter_map(|(tok, &ty)| {
            let special = match ty {
                token_type::CONTROL | token_type::UNKNOWN => true,
                token_type::USER_DEFINED => false,
                _ => return None,
            };
            // Not normalized: the text must match as typed, before `▁` replacement.
            (!tok.is_empty()).then(|| AddedToken::from(tok.clone(), special).normalized(false))
        })
        .collect();
    hf.add_special_tokens(&added);
}

/// Byte-level BPE (`tokenizer.ggml.model = "gpt2"`).
fn build_gpt2(spec: &TokenizerSpec, types: &[i32]) -> Result<tokenizers::Tokenizer> {
    let merges: Merges = spec
        .merges
        .iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_owned(), b.to_owned()))
                .ok_or_else(|| ModelError::Tokenizer(format!("merge {m:?} is not two tokens")))
        })
        .collect::<Result<_>>()?;
    let pre_name = spec.pre.as_deref().unwrap_or("default");
    let (pre, ignore_merges) = gpt2_pre_tokenizer(pre_name)?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab_map(&spec.tokens), merges)
        .ignore_merges(ignore_merges)
        .build()
        .map_err(tok_err)?;
    let mut hf = tokenizers::Tokenizer::new(bpe);
    hf.with_pre_tokenizer(Some(pre));
    hf.with_decoder(Some(ByteLevel::default()));
    add_special_tokens(&mut hf, &spec.tokens, types);
    Ok(hf)
}

/// The pre-tokenizer llama.cpp uses for `tokenizer.ggml.pre`, in `tokenizers`
/// terms, and whether whole words found in the vocabulary skip merging
/// (llama.cpp `ignore_merges`, Llama 3 only).
fn gpt2_pre_tokenizer(pre: &str) -> Result<(PreTokenizerWrapper, bool)> {
    let byte_level =
        |use_regex| PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, use_regex));
    let split_then_bytes = |regex: &str| -> Result<PreTokenizerWrapper> {
        let split = Split::new(
            SplitPattern::Regex(regex.to_owned()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(tok_err)?;
        Ok(PreTokenizerWrapper::Sequence(PreSequence::new(vec![
            PreTokenizerWrapper::Split(split),
            byte_level(false),
        ])))
    };
    Ok(match pre {
        // llama.cpp: regex_exprs = { "\p{N}", GPT-2 regex }.
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b" => {
            (
                PreTokenizerWrapper::Sequence(PreSequence::new(vec![
                    PreTokenizerWrapper::Digits(Digits::new(true)),
                    byte_level(true),
                ])),
                false,
            )
        }
        "llama-bpe" | "llama3" | "dbrx" | "smaug-bpe" | "falcon3" => {
            (split_then_bytes(LLAMA3_REGEX)?, true)
        }
        "qwen2" | "deepseek-r1-qwen" | "stablelm2" => (split_then_bytes(QWEN2_REGEX)?, false),
        "default" | "gpt-2" | "gpt2" | "olmo" | "mpt" | "jais" => (byte_level(true), false),
        other => {
            log::warn!(
                "tokenizer: pre-tokenizer {other:?} not known; using the GPT-2 regex ({GPT2_REGEX})"
            );
            (byte_level(true), false)
        }
    })
}

/// SentencePiece BPE (`tokenizer.ggml.model = "llama"`). SentencePiece merges
/// the adjacent pair whose joined piece has the highest score; in `tokenizers`
/// terms that is a merge list sorted by the score of the result.
fn build_spm(spec: &TokenizerSpec, types: &[i32]) -> Result<tokenizers::Tokenizer> {
    if spec.scores.len() != spec.tokens.len() {
        return Err(ModelError::Tokenizer(format!(
            "llama tokenizer needs one score per token ({} scores, {} tokens)",
            spec.scores.len(),
            spec.tokens.len()
        )));
    }
    let vocab = vocab_map(&spec.tokens);
    let mut ranked: Vec<(f32, u32, String, String)> = Vec::new();
    for (id, piece) in spec.tokens.iter().enumerate() {
        if matches!(types.get(id), Some(&token_type::BYTE)) || piece.chars().nth(1).is_none() {
            continue;
        }
        for (split, _) in piece.char_indices().skip(1) {
            let (left, right) = piece.split_at(split);
            if vocab.contains_key(left) && vocab.contains_key(right) {
                ranked.push((
                    spec.scores[id],
                    id as u32,
                    left.to_owned(),
                    right.to_owned(),
                ));
            }
        }
    }
    // Highest score first; equal scores by id so the order is deterministic.
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let merges: Merges = ranked.into_iter().map(|(_, _, l, r)| (l, r)).collect();

    let mut builder = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .byte_fallback(true)
        .fuse_unk(true);
    if let Some(unk) = spec.unk_id.and_then(|id| spec.tokens.get(id as usize)) {
        builder = builder.unk_token(unk.clone());
    }
    let bpe = builder.build().map_err(tok_err)?;
    let mut hf = tokenizers::Tokenizer::new(bpe);
    // llama.cpp prepends a space to every text fragment that starts the input
    // or follows a special token, then maps spaces to ▁. The normalizer runs
    // per fragment between special tokens, which is the same rule.
    let normalizer = NormalizerSequence::new(vec![
        NormalizerWrapper::Prepend(Prepend::new(SPM_SPACE.to_string())),
        NormalizerWrapper::Replace(Replace::new(" ", SPM_SPACE.to_string()).map_err(tok_err)?),
    ]);
    hf.with_normalizer(Some(normalizer));
    let decoder = DecoderSequence::new(vec![
        DecoderWrapper::Replace(Replace::new(SPM_SPACE.to_string(), " ").map_err(tok_err)?),
        DecoderWrapper::ByteFallback(ByteFallback::new()),
        DecoderWrapper::Fuse(Fuse::new()),
        DecoderWrapper::Strip(Strip::new(' ', 1, 0)),
    ]);
    hf.with_decoder(Some(decoder));
    add_special_tokens(&mut hf, &spec.tokens, types);
    Ok(hf)
}

/// Which byte table fits a tokenizer.json decoder.
fn hf_piece_kind(decoder: &serde_json::Value) -> PieceKind {
    if json_has_type(decoder, "ByteLevel") {
        PieceKind::ByteLevel
    } else if json_has_type(decoder, "ByteFallback") || json_has_type(decoder, "Metaspace") {
        PieceKind::SentencePiece
    } else {
        PieceKind::Other
    }
}

fn json_has_type(v: &serde_json::Value, ty: &str) -> bool {
    v["type"].as_str() == Some(ty)
        || v["decoders"]
            .as_array()
            .is_some_and(|ds| ds.iter().any(|d| json_has_type(d, ty)))
}

/// Streaming detokenizer: feed generated ids one at a time, get back the text
/// that is complete so far. A character split across byte-level tokens (an
/// emoji is often 2-4 tokens) is held back until its last byte arrives, so the
/// printed text never shows a transient U+FFFD. From
/// [`Tokenizer::stream_decoder_at_start`], the concatenated output (with
/// [`StreamDecoder::flush`]) equals [`Tokenizer::decode`] of all ids.
#[derive(Debug, Clone)]
pub struct StreamDecoder {
    pieces: Arc<Pieces>,
    /// Bytes of an incomplete UTF-8 character (at most 3).
    pending: Vec<u8>,
    /// Drop the first space of the output (SentencePiece, sequence start only).
    strip_space: bool,
}

impl StreamDecoder {
    /// Adds one token; returns the newly completed text (possibly empty).
    pub fn push(&mut self, id: u32) -> Result<String> {
        let bytes = self.pieces.get(id).ok_or_else(|| {
            ModelError::Tokenizer(format!(
                "token id {id} is outside the vocabulary ({} tokens)",
                self.pieces.offsets.len().saturating_sub(1)
            ))
        })?;
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // The prefix is valid, so this copies it unchanged.
                    out.push_str(&String::from_utf8_lossy(&self.pending[..valid]));
                    match e.error_len() {
                        // Incomplete tail: wait for the next token.
                        None => {
                            self.pending.drain(..valid);
                            break;
                        }
                        // Truly invalid bytes: replace, as lossy decoding does.
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..valid + bad);
                        }
                    }
                }
            }
        }
        Ok(self.start_strip(out))
    }

    /// Ends the sequence: bytes of a character that never completed come out as U+FFFD.
    pub fn flush(&mut self) -> String {
        if self.pending.is_empty() {
            return String::new();
        }
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        self.start_strip(out)
    }

    fn start_strip(&mut self, mut out: String) -> String {
        if self.strip_space && !out.is_empty() {
            self.strip_space = false;
            if out.starts_with(' ') {
                out.remove(0);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_table_covers_every_byte_once() {
        let table = byte_level_decode_table();
        let mut seen = [false; 256];
        for b in table.iter().flatten() {
            assert!(!seen[*b as usize], "byte {b} twice");
            seen[*b as usize] = true;
        }
        assert!(seen.iter().all(|&s| s));
        // GPT-2's visible stand-ins: Ġ = space, Ċ = newline, ĉ = tab.
        for (c, b) in [
            ('Ġ', b' '),
            ('Ċ', b'\n'),
            ('ĉ', b'\t'),
            ('A', b'A'),
            ('Ã', 0xC3),
        ] {
            assert_eq!(table[c as usize], Some(b), "{c}");
        }
    }

    #[test]
    fn byte_tokens_parse() {
        assert_eq!(parse_byte_token("<0x0A>"), Some(b'\n'));
        assert_eq!(parse_byte_token("<0xff>"), Some(0xFF));
        for bad in ["<0x1>", "<0x123>", "0x0A", "<0xZZ>", "<s>"] {
            assert_eq!(parse_byte_token(bad), None, "{bad}");
        }
    }

    /// Invalid bytes become U+FFFD as in `String::from_utf8_lossy`, and the
    /// SentencePiece start space is dropped once.
    #[test]
    fn stream_matches_lossy_decoding() {
        let tokens: Vec<String> = ["<0xE2>", "<0x82>", "<0xAC>", "<0xFF>", "▁a", "<0xC3>"]
            .map(String::from)
            .to_vec();
        let pieces = Pieces::build(&tokens, PieceKind::SentencePiece, |_| Ok(Vec::new()));
        let pieces = Arc::new(pieces.unwrap());
        let new = |strip_space| StreamDecoder {
            pieces: pieces.clone(),
            pending: Vec::new(),
            strip_space,
        };
        let mut s = new(true);
        let out: Vec<String> = [4, 0, 1, 2, 3, 4, 5]
            .iter()
            .map(|&id| s.push(id).unwrap())
            .collect();
        assert_eq!(out, ["a", "", "", "€", "\u{FFFD}", " a", ""]);
        assert_eq!(s.flush(), "\u{FFFD}");
        let mut s = new(false);
        assert_eq!(s.push(0).unwrap() + &s.push(4).unwrap(), "\u{FFFD} a");
        assert!(s.push(6).is_err());
    }
}
