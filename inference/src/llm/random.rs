//! Models of a real architecture's shape with random weights, for throughput benchmarks:
//! speed depends on the shapes and the dtype, not on trained values. Nothing a user can
//! request loads one.

use candle_core::quantized::QMatMul;
use candle_core::{DType, Device, Tensor};

use super::LlmError;
use super::config::LlamaConfig;
use super::model::{Block, Linear, LlamaModel};

/// Standard deviation of the random weights (the usual initialisation scale).
const STD: f64 = 0.02;

/// Builds `config`'s architecture with normally distributed weights of `dtype` on `device`,
/// the output head tied to the embedding as in small llama and qwen2 models. Qwen2 gets its
/// q/k/v biases.
pub fn random_model(
    config: LlamaConfig,
    dtype: DType,
    device: &Device,
) -> Result<LlamaModel, LlmError> {
    config.validate()?;
    let randn = |shape: (usize, usize)| -> Result<Tensor, LlmError> {
        Ok(Tensor::randn(0f32, STD as f32, shape, device)?.to_dtype(dtype)?)
    };
    let ones = |n: usize| -> Result<Tensor, LlmError> {
        Ok(Tensor::ones(n, DType::F32, device)?.to_dtype(dtype)?)
    };
    let lin = |out: usize, inp: usize, bias: bool| -> Result<Linear, LlmError> {
        let b = if bias {
            Some(Tensor::randn(0f32, STD as f32, out, device)?.to_dtype(dtype)?)
        } else {
            None
        };
        Ok(Linear::new(QMatMul::Tensor(randn((out, inp))?), b))
    };
    let (h, i) = (config.hidden_size, config.intermediate_size);
    let q_width = config.num_heads * config.head_dim;
    let kv_width = config.num_kv_heads * config.head_dim;
    let qkv_bias = config.architecture == "qwen2";
    let blocks = (0..config.num_layers)
        .map(|_| {
            Ok(Block {
                attn_norm: ones(h)?,
                wq: lin(q_width, h, qkv_bias)?,
                wk: lin(kv_width, h, qkv_bias)?,
                wv: lin(kv_width, h, qkv_bias)?,
                wo: lin(h, q_width, false)?,
                ffn_norm: ones(h)?,
                w_gate: lin(i, h, false)?,
                w_up: lin(i, h, false)?,
                w_down: lin(h, i, false)?,
            })
        })
        .collect::<Result<Vec<_>, LlmError>>()?;
    let embed = randn((config.vocab_size, h))?;
    let lm_head = Linear::new(QMatMul::Tensor(embed.clone()), None);
    let norm = ones(h)?;
    LlamaModel::new(config, embed, blocks, norm, lm_head, device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::model::StepSeq;

    fn tiny(arch: &str) -> LlamaConfig {
        LlamaConfig {
            architecture: arch.into(),
            vocab_size: 64,
            hidden_size: 32,
            intermediate_size: 64,
            num_layers: 2,
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: 8,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            rope_interleaved: false,
            context_length: 128,
        }
    }

    #[test]
    fn random_models_run_a_batched_step() {
        for arch in ["llama", "qwen2"] {
            let model = random_model(tiny(arch), DType::F32, &Device::Cpu).unwrap();
            let (mut a, mut b) = (model.new_cache(), model.new_cache());
            let logits = model
                .forward(&mut [
                    StepSeq {
                        tokens: &[1, 2, 3],
                        cache: &mut a,
                        want_logits: true,
                    },
                    StepSeq {
                        tokens: &[4],
                        cache: &mut b,
                        want_logits: true,
                    },
                ])
                .unwrap()
                .unwrap();
            assert_eq!(logits.dims(), &[2, 64]);
            assert_eq!((a.len(), b.len()), (3, 1));
            let values = logits.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(values.iter().all(|v| v.is_finite()));
        }
    }

    #[test]
    fn half_precision_runs_off_the_host_path_only_where_supported() {
        // The CPU path keeps f32 activations (host attention): a bf16 model is refused there
        // by the tensor ops rather than silently mis-computed.
        let model = random_model(tiny("llama"), DType::BF16, &Device::Cpu).unwrap();
        let mut c = model.new_cache();
        let r = model.forward(&mut [StepSeq {
            tokens: &[1],
            cache: &mut c,
            want_logits: true,
        }]);
        assert!(r.is_err());
    }
}
