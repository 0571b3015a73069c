//! Loading weights: GGUF files (quantized, tokenizer and template inside) and HF safetensors
//! directories (`config.json`, `tokenizer.json`, `tokenizer_config.json`, `*.safetensors`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::{QMatMul, gguf_file};
use candle_core::{DType, Device, Tensor};

use super::LlmError;
use super::config::{HfConfig, LlamaConfig};
use super::model::{Block, Linear, LlamaModel};
use super::packed::PackedMatrix;
use super::q4::Q4Matrix;
use super::text::TextCodec;

/// A model and the codec that turns conversations into its tokens and back.
pub struct LoadedModel {
    /// The network.
    pub model: LlamaModel,
    /// Tokenizer, chat template and stop tokens.
    pub codec: TextCodec,
}

/// Loads a GGUF file (llama, mistral or qwen2 architecture).
pub fn load_gguf(path: &Path, device: &Device) -> Result<LoadedModel, LlmError> {
    load_gguf_as(path, device, false)
}

/// Loads a GGUF file with every weight dequantized to f32: a reference for checking the
/// quantized kernels (several times the memory and much slower; not for serving).
pub fn load_gguf_dense(path: &Path, device: &Device) -> Result<LoadedModel, LlmError> {
    load_gguf_as(path, device, true)
}

fn load_gguf_as(path: &Path, device: &Device, dense: bool) -> Result<LoadedModel, LlmError> {
    let mut file =
        std::fs::File::open(path).map_err(|e| LlmError::Io(format!("{}: {e}", path.display())))?;
    let ct = gguf_file::Content::read(&mut file)
        .map_err(|e| LlmError::Format(format!("{}: {e}", path.display())))?;
    let mut config = LlamaConfig::from_gguf(&ct)?;
    let codec = TextCodec::from_gguf(&ct)?;
    if config.vocab_size == 0 {
        config.vocab_size = codec.vocab_size();
    }
    let mut get = |name: &str| -> Result<Arc<candle_core::quantized::QTensor>, LlmError> {
        ct.tensor(&mut file, name, device)
            .map(Arc::new)
            .map_err(|e| LlmError::Format(format!("tensor {name}: {e}")))
    };
    let cpu = device.is_cpu();
    let q = |t: Arc<candle_core::quantized::QTensor>| -> Result<QMatMul, LlmError> {
        Ok(QMatMul::from_arc(fast_layout(t)?)?)
    };
    let lin = |t: Arc<candle_core::quantized::QTensor>,
               bias: Option<Tensor>|
     -> Result<Linear, LlmError> {
        if dense {
            return Ok(Linear::new(QMatMul::Tensor(t.dequantize(device)?), bias));
        }
        if cpu && t.dtype() == candle_core::quantized::GgmlDType::Q4_1 {
            let (rows, cols) = t.shape().dims2()?;
            let data = t.data()?;
            if let Some(m) = PackedMatrix::from_q4_1(&data, rows, cols) {
                return Ok(Linear::packed(m, bias));
            }
            if let Some(m) = Q4Matrix::from_ggml_bytes(&data, rows, cols) {
                return Ok(Linear::q4(m, bias));
            }
        }
        if cpu && t.dtype() == candle_core::quantized::GgmlDType::Q8_0 {
            let (rows, cols) = t.shape().dims2()?;
            let data = t.data()?;
            if let Some(m) = PackedMatrix::from_q8_0(&data, rows, cols) {
                return Ok(Linear::packed(m, bias));
            }
            if let Some((lo, hi)) = Q4Matrix::split_q8_0(&data, rows, cols) {
                return Ok(Linear::q8_split(lo, hi, bias));
            }
        }
        Ok(Linear::new(q(t)?, bias))
    };
    let token_embd = get("token_embd.weight")?;
    let embed = token_embd.dequantize(device)?;
    let output = match get("output.weight") {
        Ok(t) => t,
        Err(_) => token_embd.clone(),
    };
    let mut blocks = Vec::with_capacity(config.num_layers);
    for i in 0..config.num_layers {
        let p = format!("blk.{i}");
        let mut bias = |name: &str| -> Option<Tensor> {
            get(&format!("{p}.{name}.bias"))
                .ok()
                .and_then(|t| t.dequantize(device).ok())
        };
        let (bq, bk, bv) = (bias("attn_q"), bias("attn_k"), bias("attn_v"));
        blocks.push(Block {
            attn_norm: get(&format!("{p}.attn_norm.weight"))?.dequantize(device)?,
            wq: lin(get(&format!("{p}.attn_q.weight"))?, bq)?,
            wk: lin(get(&format!("{p}.attn_k.weight"))?, bk)?,
            wv: lin(get(&format!("{p}.attn_v.weight"))?, bv)?,
            wo: lin(get(&format!("{p}.attn_output.weight"))?, None)?,
            ffn_norm: get(&format!("{p}.ffn_norm.weight"))?.dequantize(device)?,
            w_gate: lin(get(&format!("{p}.ffn_gate.weight"))?, None)?,
            w_up: lin(get(&format!("{p}.ffn_up.weight"))?, None)?,
            w_down: lin(get(&format!("{p}.ffn_down.weight"))?, None)?,
        });
    }
    let norm = get("output_norm.weight")?.dequantize(device)?;
    let model = LlamaModel::new(config, embed, blocks, norm, lin(output, None)?, device)?;
    Ok(LoadedModel { model, codec })
}

/// Loads an HF directory with `config.json`, `tokenizer.json` and safetensors weights.
pub fn load_safetensors_dir(dir: &Path, device: &Device) -> Result<LoadedModel, LlmError> {
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name))
            .map_err(|e| LlmError::Io(format!("{}: {e}", dir.join(name).display())))
    };
    let config_text = read("config.json")?;
    let config = LlamaConfig::from_hf_json(&config_text)?;
    let hf: HfConfig = serde_json::from_str(&config_text)
        .map_err(|e| LlmError::Format(format!("config.json: {e}")))?;
    let tokenizer_config = read("tokenizer_config.json").ok();
    let codec = TextCodec::from_hf_files(
        &dir.join("tokenizer.json"),
        tokenizer_config.as_deref(),
        &hf,
    )?;

    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| LlmError::Io(format!("{}: {e}", dir.display())))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(LlmError::Format(format!(
            "no *.safetensors in {}",
            dir.display()
        )));
    }
    for f in &files {
        let loaded = candle_core::safetensors::load(f, device)
            .map_err(|e| LlmError::Format(format!("{}: {e}", f.display())))?;
        tensors.extend(loaded);
    }
    let mut take = |name: &str| -> Result<Tensor, LlmError> {
        let t = tensors
            .remove(name)
            .ok_or_else(|| LlmError::Format(format!("missing tensor {name}")))?;
        Ok(t.to_dtype(DType::F32)?)
    };
    let dense = |t: Tensor| QMatMul::Tensor(t);
    let embed = take("model.embed_tokens.weight")?;
    let mut blocks = Vec::with_capacity(config.num_layers);
    for i in 0..config.num_layers {
        let p = format!("model.layers.{i}");
        let mut proj = |name: &str, with_bias: bool| -> Result<Linear, LlmError> {
            let w = take(&format!("{p}.{name}.weight"))?;
            let b = if with_bias {
                take(&format!("{p}.{name}.bias")).ok()
            } else {
                None
            };
            Ok(Linear::new(dense(w), b))
        };
        let qkv_bias = config.architecture == "qwen2";
        let wq = proj("self_attn.q_proj", qkv_bias)?;
        let wk = proj("self_attn.k_proj", qkv_bias)?;
        let wv = proj("self_attn.v_proj", qkv_bias)?;
        let wo = proj("self_attn.o_proj", false)?;
        let w_gate = proj("mlp.gate_proj", false)?;
        let w_up = proj("mlp.up_proj", false)?;
        let w_down = proj("mlp.down_proj", false)?;
        blocks.push(Block {
            attn_norm: take(&format!("{p}.input_layernorm.weight"))?,
            wq,
            wk,
            wv,
            wo,
            ffn_norm: take(&format!("{p}.post_attention_layernorm.weight"))?,
            w_gate,
            w_up,
            w_down,
        });
    }
    let norm = take("model.norm.weight")?;
    let lm_head = match take("lm_head.weight") {
        Ok(w) => w,
        Err(_) if hf.tie_word_embeddings || !tensors.contains_key("lm_head.weight") => {
            embed.clone()
        }
        Err(e) => return Err(e),
    };
    let model = LlamaModel::new(
        config,
        embed,
        blocks,
        norm,
        Linear::new(dense(lm_head), None),
        device,
    )?;
    Ok(LoadedModel { model, codec })
}

/// On the CPU, candle has SIMD kernels for some GGML block types only; others (those this
/// crate has no kernel for either) run a scalar loop many times slower. Those weights are
/// re-quantized at load time to Q8_0, which keeps their values (8-bit blocks of 32 hold every
/// 4/5-bit level with room to spare) and runs on candle's AVX2 kernel. Accelerators keep
/// the file's types.
fn fast_layout(
    t: Arc<candle_core::quantized::QTensor>,
) -> Result<Arc<candle_core::quantized::QTensor>, LlmError> {
    use candle_core::quantized::{GgmlDType, QTensor};
    let slow = matches!(
        t.dtype(),
        GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1 | GgmlDType::Q8_1
    );
    if !slow || !t.device().is_cpu() {
        return Ok(t);
    }
    let dense = t.dequantize(&t.device())?;
    Ok(Arc::new(QTensor::quantize(&dense, GgmlDType::Q8_0)?))
}

/// Loads whatever `path` holds: a `.gguf` file, or a directory with `config.json` and
/// safetensors weights.
pub fn load_path(path: &Path, device: &Device) -> Result<LoadedModel, LlmError> {
    if path.is_dir() {
        load_safetensors_dir(path, device)
    } else if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
    {
        load_gguf(path, device)
    } else {
        Err(LlmError::Format(format!(
            "{}: expected a .gguf file or a directory with config.json and *.safetensors",
            path.display()
        )))
    }
}
