//! The safetensors loading path, on tiny random-weight llama and qwen2 models written by the
//! test itself (config.json, tokenizer.json, tokenizer_config.json, model.safetensors).

#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests"
)]

use std::collections::HashMap;
use std::path::Path;

use aigw_inference::llm::engine::{EngineConfig, GenEvent, GenerationRequest, LlmEngine};
use aigw_inference::llm::load::load_path;
use aigw_inference::llm::sampling::SamplingParams;
use aigw_models::openai::{ChatMessage, Role};
use candle_core::{DType, Device, Tensor};

const HIDDEN: usize = 32;
const FFN: usize = 64;
const LAYERS: usize = 2;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const HEAD_DIM: usize = HIDDEN / HEADS;

const WORDS: &[&str] = &[
    "the",
    "dragon",
    "sleeps",
    "under",
    "mountain",
    "gold",
    "knight",
    "rides",
    "north",
    "a",
    "sword",
    "and",
    "shield",
    "system",
    "user",
    "assistant",
    "hello",
    "tavern",
    "ale",
    "song",
];

fn write_model(dir: &Path, model_type: &str) {
    std::fs::create_dir_all(dir).unwrap();
    // A word-level tokenizer whose vocabulary is the specials then the words.
    let specials = ["<unk>", "<|im_start|>", "<|im_end|>"];
    let vocab: HashMap<String, u32> = specials
        .iter()
        .chain(WORDS)
        .enumerate()
        .map(|(i, w)| (w.to_string(), i as u32))
        .collect();
    let vocab_size = vocab.len();
    let model = tokenizers::models::wordlevel::WordLevel::builder()
        .vocab(vocab.into_iter().collect())
        .unk_token("<unk>".into())
        .build()
        .unwrap();
    let mut tok = tokenizers::Tokenizer::new(model);
    tok.with_pre_tokenizer(Some(tokenizers::pre_tokenizers::whitespace::Whitespace {}));
    tok.with_decoder(Some(tokenizers::decoders::wordpiece::WordPiece::default()));
    tok.add_special_tokens([
        tokenizers::AddedToken::from("<|im_start|>", true),
        tokenizers::AddedToken::from("<|im_end|>", true),
    ])
    .unwrap();
    tok.save(dir.join("tokenizer.json"), false).unwrap();
    let template = "{% for m in messages %}<|im_start|>{{ m.role }} {{ m.content }}<|im_end|>{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant {% endif %}";
    std::fs::write(
        dir.join("tokenizer_config.json"),
        serde_json::json!({"chat_template": template, "eos_token": "<|im_end|>", "bos_token": null}).to_string(),
    )
    .unwrap();
    std::fs::write(
        dir.join("config.json"),
        serde_json::json!({
            "model_type": model_type, "vocab_size": vocab_size, "hidden_size": HIDDEN,
            "intermediate_size": FFN, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
            "num_key_value_heads": KV_HEADS, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
            "max_position_embeddings": 128, "tie_word_embeddings": false, "eos_token_id": 2
        })
        .to_string(),
    )
    .unwrap();
    let dev = Device::Cpu;
    let rand = |shape: &[usize]| (Tensor::randn(0f32, 1.0, shape, &dev).unwrap() * 0.2).unwrap();
    let ones = |n: usize| Tensor::ones(n, DType::F32, &dev).unwrap();
    let mut w: HashMap<String, Tensor> = HashMap::new();
    w.insert(
        "model.embed_tokens.weight".into(),
        rand(&[vocab_size, HIDDEN]),
    );
    w.insert("lm_head.weight".into(), rand(&[vocab_size, HIDDEN]));
    w.insert("model.norm.weight".into(), ones(HIDDEN));
    for l in 0..LAYERS {
        let p = format!("model.layers.{l}");
        w.insert(format!("{p}.input_layernorm.weight"), ones(HIDDEN));
        w.insert(format!("{p}.post_attention_layernorm.weight"), ones(HIDDEN));
        w.insert(
            format!("{p}.self_attn.q_proj.weight"),
            rand(&[HEADS * HEAD_DIM, HIDDEN]),
        );
        w.insert(
            format!("{p}.self_attn.k_proj.weight"),
            rand(&[KV_HEADS * HEAD_DIM, HIDDEN]),
        );
        w.insert(
            format!("{p}.self_attn.v_proj.weight"),
            rand(&[KV_HEADS * HEAD_DIM, HIDDEN]),
        );
        w.insert(
            format!("{p}.self_attn.o_proj.weight"),
            rand(&[HIDDEN, HEADS * HEAD_DIM]),
        );
        w.insert(format!("{p}.mlp.gate_proj.weight"), rand(&[FFN, HIDDEN]));
        w.insert(format!("{p}.mlp.up_proj.weight"), rand(&[FFN, HIDDEN]));
        w.insert(format!("{p}.mlp.down_proj.weight"), rand(&[HIDDEN, FFN]));
        if model_type == "qwen2" {
            w.insert(
                format!("{p}.self_attn.q_proj.bias"),
                rand(&[HEADS * HEAD_DIM]),
            );
            w.insert(
                format!("{p}.self_attn.k_proj.bias"),
                rand(&[KV_HEADS * HEAD_DIM]),
            );
            w.insert(
                format!("{p}.self_attn.v_proj.bias"),
                rand(&[KV_HEADS * HEAD_DIM]),
            );
        }
    }
    candle_core::safetensors::save(&w, dir.join("model.safetensors")).unwrap();
}

async fn generate(engine: &LlmEngine, prompt: &[u32], max_tokens: u32) -> (String, u64) {
    let mut rx = engine
        .submit(GenerationRequest {
            prompt: prompt.to_vec(),
            sampling: SamplingParams {
                temperature: 0.0,
                ..Default::default()
            },
            max_tokens: Some(max_tokens),
            stop: Vec::new(),
        })
        .unwrap();
    let mut text = String::new();
    while let Some(ev) = rx.recv().await {
        match ev {
            GenEvent::Delta(t) => text.push_str(&t),
            GenEvent::Finished {
                completion_tokens, ..
            } => return (text, completion_tokens),
            GenEvent::Failed(e) => panic!("{e}"),
        }
    }
    panic!("no end")
}

async fn check(model_type: &str) {
    let dir = std::env::temp_dir().join(format!("aigw-tiny-{model_type}-{}", std::process::id()));
    write_model(&dir, model_type);
    let loaded = load_path(&dir, &Device::Cpu).unwrap();
    assert_eq!(loaded.model.config.architecture, model_type);
    assert_eq!(loaded.model.config.num_kv_heads, KV_HEADS);
    let engine = LlmEngine::start(loaded, EngineConfig::default()).unwrap();
    let text = engine
        .codec()
        .render_chat(&[ChatMessage::text(Role::User, "hello dragon")], None)
        .unwrap();
    assert_eq!(
        text,
        "<|im_start|>user hello dragon<|im_end|><|im_start|>assistant "
    );
    let prompt = engine.codec().encode_prompt(&text).unwrap();
    assert_eq!(
        prompt.len(),
        7,
        "specials and words are single tokens: {prompt:?}"
    );
    let (a, n) = generate(&engine, &prompt, 12).await;
    let (b, _) = generate(&engine, &prompt, 12).await;
    assert_eq!(a, b, "greedy decoding is deterministic");
    assert!(n <= 12);
    // Concurrent sequences decode the same as one alone.
    let together = futures::future::join_all((0..4).map(|_| generate(&engine, &prompt, 12))).await;
    assert!(together.iter().all(|(t, _)| *t == a));
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn tiny_llama_from_safetensors() {
    check("llama").await;
}

#[tokio::test]
async fn tiny_qwen2_with_attention_biases() {
    check("qwen2").await;
}

#[test]
fn unsupported_architectures_are_refused() {
    let dir = std::env::temp_dir().join(format!("aigw-tiny-gpt-{}", std::process::id()));
    write_model(&dir, "llama");
    let cfg = std::fs::read_to_string(dir.join("config.json"))
        .unwrap()
        .replace("\"llama\"", "\"gpt_neox\"");
    std::fs::write(dir.join("config.json"), cfg).unwrap();
    let err = load_path(&dir, &Device::Cpu).err().expect("refused");
    assert!(err.to_string().contains("gpt_neox"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}
