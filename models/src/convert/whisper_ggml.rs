//! CTranslate2 whisper → whisper.cpp's ggml file (what whisper-rs loads).
//!
//! The ggml file, little endian: magic `0x67676d6c`; eleven `i32` hyperparameters (n_vocab,
//! n_audio_ctx, n_audio_state, n_audio_head, n_audio_layer, n_text_ctx, n_text_state,
//! n_text_head, n_text_layer, n_mels, ftype = 1 for f16); the mel filterbank (`i32` n_mel,
//! `i32` n_fft / 2 + 1, then f32 weights, computed by [`super::mel`]); the vocabulary (`i32`
//! count, then per token an `u32` length and its bytes) holding the ordinary BPE tokens only,
//! whisper.cpp naming the special ones itself; then each tensor as `i32` rank, `i32` name
//! length, `i32` type (0 f32, 1 f16), the dims innermost first, the name and the data.
//!
//! Tensors take whisper.cpp's (PyTorch whisper's) names. CTranslate2 fuses some projections,
//! which are split here: self-attention `linear_0` holds the query, key and value rows, and
//! cross-attention `linear_1` the key and value rows; whisper has no key bias, so those bias
//! rows must be zero. Weight matrices and convolution kernels are stored in f16; biases, layer
//! norms, positional embeddings (and the convolution biases, shaped `[1, d]`) in f32, as
//! whisper.cpp expects.

use std::io::{self, Write};

use super::ConvertError;
use super::ct2::{Ct2Model, Variable};
use super::mel::slaney_filters;

/// `ggml` in ASCII, as whisper.cpp reads it (little-endian u32).
const GGML_MAGIC: u32 = 0x6767_6d6c;
/// whisper's front end: 16 kHz audio, 400-sample FFT windows.
const SAMPLE_RATE: u32 = 16_000;
const N_FFT: usize = 400;

/// What a conversion found and wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WhisperGgmlSummary {
    /// Vocabulary size (embedding rows).
    pub n_vocab: usize,
    /// Encoder layers.
    pub n_audio_layer: usize,
    /// Decoder layers.
    pub n_text_layer: usize,
    /// Model width.
    pub n_state: usize,
    /// Mel bins.
    pub n_mels: usize,
    /// Whether the vocabulary is multilingual (whisper.cpp's rule: ≥ 51865 tokens).
    pub multilingual: bool,
    /// Tensors written.
    pub tensors: usize,
}

/// Converts a CTranslate2 whisper `model.bin` and its `vocabulary.txt` into a ggml file.
pub fn convert(
    model_bin: &[u8],
    vocabulary: &str,
    out: &mut impl Write,
) -> Result<WhisperGgmlSummary, ConvertError> {
    let model = Ct2Model::parse(model_bin)?;
    if model.spec != "WhisperSpec" {
        return Err(ConvertError::Invalid(format!(
            "model.bin holds a {} model, not whisper (WhisperSpec)",
            model.spec
        )));
    }
    let hp = Hparams::read(&model)?;
    let tokens = ordinary_tokens(vocabulary, hp.n_vocab)?;

    let mut w = GgmlWriter { out, tensors: 0 };
    w.u32(GGML_MAGIC)?;
    for v in [
        hp.n_vocab,
        hp.n_audio_ctx,
        hp.n_state,
        hp.n_audio_head,
        hp.n_audio_layer,
        hp.n_text_ctx,
        hp.n_state,
        hp.n_text_head,
        hp.n_text_layer,
        hp.n_mels,
        1,
    ] {
        w.dim(v)?;
    }
    let filters = slaney_filters(SAMPLE_RATE, N_FFT, hp.n_mels);
    w.dim(hp.n_mels)?;
    w.dim(N_FFT / 2 + 1)?;
    for x in filters {
        w.bytes(&x.to_le_bytes())?;
    }
    w.dim(tokens.len())?;
    for token in &tokens {
        w.bytes(&(token.len() as u32).to_le_bytes())?;
        w.bytes(token)?;
    }

    let d = hp.n_state;
    let v = |name: &str| model.require(name);

    w.tensor(
        "encoder.positional_embedding",
        f32_of(v("encoder/position_encodings/encodings")?)?,
    )?;
    for conv in ["conv1", "conv2"] {
        let weight = v(&format!("encoder/{conv}/weight"))?;
        w.tensor(&format!("encoder.{conv}.weight"), f16_of(weight)?)?;
        let mut bias = f32_of(v(&format!("encoder/{conv}/bias"))?)?;
        bias.shape = vec![d, 1];
        w.tensor(&format!("encoder.{conv}.bias"), bias)?;
    }
    layer_norm(&mut w, &model, "encoder/layer_norm", "encoder.ln_post")?;
    for i in 0..hp.n_audio_layer {
        let (src, dst) = (format!("encoder/layer_{i}"), format!("encoder.blocks.{i}"));
        self_attention(&mut w, &model, &src, &dst, d)?;
        ffn(&mut w, &model, &src, &dst)?;
    }

    w.tensor(
        "decoder.positional_embedding",
        f32_of(v("decoder/position_encodings/encodings")?)?,
    )?;
    w.tensor(
        "decoder.token_embedding.weight",
        f16_of(v("decoder/embeddings/weight")?)?,
    )?;
    layer_norm(&mut w, &model, "decoder/layer_norm", "decoder.ln")?;
    for i in 0..hp.n_text_layer {
        let (src, dst) = (format!("decoder/layer_{i}"), format!("decoder.blocks.{i}"));
        self_attention(&mut w, &model, &src, &dst, d)?;
        let cross = format!("{src}/attention");
        layer_norm(
            &mut w,
            &model,
            &format!("{cross}/layer_norm"),
            &format!("{dst}.cross_attn_ln"),
        )?;
        linear(
            &mut w,
            &model,
            &format!("{cross}/linear_0"),
            &format!("{dst}.cross_attn.query"),
            0..d,
            true,
        )?;
        let kv = format!("{cross}/linear_1");
        key_bias_is_zero(&model, &kv, 0..d)?;
        linear(
            &mut w,
            &model,
            &kv,
            &format!("{dst}.cross_attn.key"),
            0..d,
            false,
        )?;
        linear(
            &mut w,
            &model,
            &kv,
            &format!("{dst}.cross_attn.value"),
            d..2 * d,
            true,
        )?;
        linear(
            &mut w,
            &model,
            &format!("{cross}/linear_2"),
            &format!("{dst}.cross_attn.out"),
            0..d,
            true,
        )?;
        ffn(&mut w, &model, &src, &dst)?;
    }
    w.out.flush()?;
    Ok(WhisperGgmlSummary {
        n_vocab: hp.n_vocab,
        n_audio_layer: hp.n_audio_layer,
        n_text_layer: hp.n_text_layer,
        n_state: d,
        n_mels: hp.n_mels,
        multilingual: hp.n_vocab >= 51_865,
        tensors: w.tensors,
    })
}

/// The hyperparameters, read off the tensors' shapes and the head-count scalars.
struct Hparams {
    n_vocab: usize,
    n_audio_ctx: usize,
    n_state: usize,
    n_audio_head: usize,
    n_audio_layer: usize,
    n_text_ctx: usize,
    n_text_head: usize,
    n_text_layer: usize,
    n_mels: usize,
}

impl Hparams {
    fn read(model: &Ct2Model<'_>) -> Result<Self, ConvertError> {
        let shape2 = |name: &str| -> Result<(usize, usize), ConvertError> {
            match model.require(name)?.shape[..] {
                [a, b] => Ok((a, b)),
                ref s => Err(ConvertError::Invalid(format!(
                    "{name} has shape {s:?}, not 2-D"
                ))),
            }
        };
        let (n_vocab, n_state) = shape2("decoder/embeddings/weight")?;
        let (n_audio_ctx, audio_state) = shape2("encoder/position_encodings/encodings")?;
        let (n_text_ctx, text_state) = shape2("decoder/position_encodings/encodings")?;
        if audio_state != n_state || text_state != n_state {
            return Err(ConvertError::Invalid(format!(
                "encoder width {audio_state} and decoder width {text_state} differ from the embeddings' {n_state}"
            )));
        }
        let n_mels = match model.require("encoder/conv1/weight")?.shape[..] {
            [out, mels, 3] if out == n_state => mels,
            ref s => {
                return Err(ConvertError::Invalid(format!(
                    "encoder/conv1/weight has shape {s:?}, not [{n_state}, n_mels, 3]"
                )));
            }
        };
        let layers = |prefix: &str| {
            (0..)
                .take_while(|i| {
                    model
                        .get(&format!("{prefix}/layer_{i}/ffn/linear_0/weight"))
                        .is_some()
                })
                .count()
        };
        // Older specs have no head counts: whisper's heads are 64 wide.
        let heads = |name: &str| -> Result<usize, ConvertError> {
            match model.get(name) {
                Some(v) => usize::try_from(v.scalar_int()?)
                    .map_err(|_| ConvertError::Invalid(format!("{name} is negative"))),
                None => Ok(n_state / 64),
            }
        };
        let hp = Self {
            n_vocab,
            n_audio_ctx,
            n_state,
            n_audio_head: heads("encoder/num_heads")?,
            n_audio_layer: layers("encoder"),
            n_text_ctx,
            n_text_head: heads("decoder/num_heads")?,
            n_text_layer: layers("decoder"),
            n_mels,
        };
        if hp.n_audio_layer == 0 || hp.n_text_layer == 0 {
            return Err(ConvertError::Invalid(
                "model.bin has no encoder or decoder layers".into(),
            ));
        }
        if hp.n_audio_head == 0
            || n_state % hp.n_audio_head != 0
            || hp.n_text_head == 0
            || n_state % hp.n_text_head != 0
        {
            return Err(ConvertError::Invalid(format!(
                "head counts {} / {} do not divide the width {n_state}",
                hp.n_audio_head, hp.n_text_head
            )));
        }
        Ok(hp)
    }
}

/// The bytes of the ordinary BPE tokens: every line of `vocabulary.txt` before the first
/// special token (`<|endoftext|>`), GPT-2 byte-level characters turned back into bytes.
fn ordinary_tokens(vocabulary: &str, n_vocab: usize) -> Result<Vec<Vec<u8>>, ConvertError> {
    let lines: Vec<&str> = vocabulary.lines().collect();
    if lines.len() != n_vocab {
        return Err(ConvertError::Invalid(format!(
            "vocabulary.txt has {} tokens, the model {n_vocab}",
            lines.len()
        )));
    }
    let end = lines
        .iter()
        .position(|l| *l == "<|endoftext|>")
        .ok_or_else(|| ConvertError::Invalid("vocabulary.txt has no <|endoftext|> token".into()))?;
    let decode = byte_decoder();
    lines[..end]
        .iter()
        .enumerate()
        .map(|(i, token)| {
            token
                .chars()
                .map(|c| {
                    decode(c).ok_or_else(|| {
                        ConvertError::Invalid(format!(
                            "vocabulary.txt token {i} ({token:?}) is not GPT-2 byte-level text"
                        ))
                    })
                })
                .collect()
        })
        .collect()
}

/// GPT-2's byte-level alphabet reversed: printable Latin-1 bytes stand for themselves, the
/// other 68 bytes for the characters from U+0100 on, in byte order.
fn byte_decoder() -> impl Fn(char) -> Option<u8> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut table = std::collections::HashMap::with_capacity(256);
    let mut shifted = 0u32;
    for b in 0..=255u8 {
        let c = if printable(b) {
            char::from(b)
        } else {
            shifted += 1;
            char::from_u32(255 + shifted).unwrap_or(char::REPLACEMENT_CHARACTER)
        };
        table.insert(c, b);
    }
    move |c| table.get(&c).copied()
}

/// A tensor ready to write: its shape (outermost first) and its data.
struct Tensor {
    shape: Vec<usize>,
    data: Data,
}

enum Data {
    F32(Vec<f32>),
    F16(Vec<u16>),
}

fn f32_of(v: &Variable<'_>) -> Result<Tensor, ConvertError> {
    Ok(Tensor {
        shape: v.shape.clone(),
        data: Data::F32(v.to_f32()?),
    })
}

fn f16_of(v: &Variable<'_>) -> Result<Tensor, ConvertError> {
    Ok(Tensor {
        shape: v.shape.clone(),
        data: Data::F16(v.to_f16_bits()?),
    })
}

/// Rows `rows` of a 2-D weight (or 1-D bias).
fn rows(v: &Variable<'_>, rows: std::ops::Range<usize>, f16: bool) -> Result<Tensor, ConvertError> {
    let (n_rows, width) = match v.shape[..] {
        [r, c] => (r, c),
        [r] => (r, 1),
        ref s => return Err(ConvertError::Invalid(format!("{} has shape {s:?}", v.name))),
    };
    if rows.end > n_rows {
        return Err(ConvertError::Invalid(format!(
            "{} has {n_rows} rows, {} wanted",
            v.name, rows.end
        )));
    }
    let mut shape = v.shape.clone();
    shape[0] = rows.len();
    let span = rows.start * width..rows.end * width;
    let data = if f16 {
        Data::F16(v.to_f16_bits()?[span].to_vec())
    } else {
        Data::F32(v.to_f32()?[span].to_vec())
    };
    Ok(Tensor { shape, data })
}

/// Fails unless the key rows `range` of a fused bias are zero (whisper has no key bias).
fn key_bias_is_zero(
    model: &Ct2Model<'_>,
    linear: &str,
    range: std::ops::Range<usize>,
) -> Result<(), ConvertError> {
    let name = format!("{linear}/bias");
    let bias = model.require(&name)?.to_f32()?;
    match bias.get(range) {
        Some(keys) if keys.iter().all(|&b| b == 0.0) => Ok(()),
        _ => Err(ConvertError::Invalid(format!(
            "{name}: the key bias is not zero, which whisper.cpp cannot represent"
        ))),
    }
}

/// Rows `range` of `src/{weight,bias}` as `dst.{weight,bias}`.
fn linear<W: Write>(
    w: &mut GgmlWriter<'_, W>,
    model: &Ct2Model<'_>,
    src: &str,
    dst: &str,
    range: std::ops::Range<usize>,
    with_bias: bool,
) -> Result<(), ConvertError> {
    let weight = model.require(&format!("{src}/weight"))?;
    let full = range.start == 0 && weight.shape.first() == Some(&range.end);
    let weight = if full {
        f16_of(weight)?
    } else {
        rows(weight, range.clone(), true)?
    };
    w.tensor(&format!("{dst}.weight"), weight)?;
    if with_bias {
        let bias = model.require(&format!("{src}/bias"))?;
        w.tensor(&format!("{dst}.bias"), rows(bias, range, false)?)?;
    }
    Ok(())
}

fn layer_norm<W: Write>(
    w: &mut GgmlWriter<'_, W>,
    model: &Ct2Model<'_>,
    src: &str,
    dst: &str,
) -> Result<(), ConvertError> {
    w.tensor(
        &format!("{dst}.weight"),
        f32_of(model.require(&format!("{src}/gamma"))?)?,
    )?;
    w.tensor(
        &format!("{dst}.bias"),
        f32_of(model.require(&format!("{src}/beta"))?)?,
    )
}

/// `src/self_attention` (fused q, k, v in `linear_0`; out in `linear_1`) as `dst.attn*`.
fn self_attention<W: Write>(
    w: &mut GgmlWriter<'_, W>,
    model: &Ct2Model<'_>,
    src: &str,
    dst: &str,
    d: usize,
) -> Result<(), ConvertError> {
    let attn = format!("{src}/self_attention");
    layer_norm(
        w,
        model,
        &format!("{attn}/layer_norm"),
        &format!("{dst}.attn_ln"),
    )?;
    let qkv = format!("{attn}/linear_0");
    key_bias_is_zero(model, &qkv, d..2 * d)?;
    linear(w, model, &qkv, &format!("{dst}.attn.query"), 0..d, true)?;
    linear(w, model, &qkv, &format!("{dst}.attn.key"), d..2 * d, false)?;
    linear(
        w,
        model,
        &qkv,
        &format!("{dst}.attn.value"),
        2 * d..3 * d,
        true,
    )?;
    let out = model.require(&format!("{attn}/linear_1/weight"))?.shape[0];
    linear(
        w,
        model,
        &format!("{attn}/linear_1"),
        &format!("{dst}.attn.out"),
        0..out,
        true,
    )
}

/// `src/ffn` (layer norm, `linear_0`, `linear_1`) as `dst.mlp_ln`, `dst.mlp.0`, `dst.mlp.2`.
fn ffn<W: Write>(
    w: &mut GgmlWriter<'_, W>,
    model: &Ct2Model<'_>,
    src: &str,
    dst: &str,
) -> Result<(), ConvertError> {
    let ffn = format!("{src}/ffn");
    layer_norm(
        w,
        model,
        &format!("{ffn}/layer_norm"),
        &format!("{dst}.mlp_ln"),
    )?;
    for (i, j) in [(0, 0), (1, 2)] {
        let src = format!("{ffn}/linear_{i}");
        let n = model.require(&format!("{src}/weight"))?.shape[0];
        linear(w, model, &src, &format!("{dst}.mlp.{j}"), 0..n, true)?;
    }
    Ok(())
}

struct GgmlWriter<'a, W: Write> {
    out: &'a mut W,
    tensors: usize,
}

impl<W: Write> GgmlWriter<'_, W> {
    fn bytes(&mut self, b: &[u8]) -> io::Result<()> {
        self.out.write_all(b)
    }

    fn u32(&mut self, v: u32) -> io::Result<()> {
        self.bytes(&v.to_le_bytes())
    }

    fn dim(&mut self, v: usize) -> Result<(), ConvertError> {
        let v = i32::try_from(v)
            .map_err(|_| ConvertError::Invalid(format!("{v} does not fit ggml's 32-bit header")))?;
        Ok(self.bytes(&v.to_le_bytes())?)
    }

    fn tensor(&mut self, name: &str, t: Tensor) -> Result<(), ConvertError> {
        self.tensors += 1;
        self.dim(t.shape.len())?;
        self.dim(name.len())?;
        let ftype = match t.data {
            Data::F32(_) => 0,
            Data::F16(_) => 1,
        };
        self.dim(ftype)?;
        for &d in t.shape.iter().rev() {
            self.dim(d)?;
        }
        self.bytes(name.as_bytes())?;
        // Written in blocks: the embedding alone is tens of megabytes.
        let mut buf = Vec::with_capacity(1 << 16);
        match &t.data {
            Data::F32(v) => {
                for chunk in v.chunks(1 << 14) {
                    buf.clear();
                    chunk
                        .iter()
                        .for_each(|x| buf.extend_from_slice(&x.to_le_bytes()));
                    self.bytes(&buf)?;
                }
            }
            Data::F16(v) => {
                for chunk in v.chunks(1 << 15) {
                    buf.clear();
                    chunk
                        .iter()
                        .for_each(|x| buf.extend_from_slice(&x.to_le_bytes()));
                    self.bytes(&buf)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests;
