//! Generates from a GGUF or safetensors model: `generate PATH "prompt" [max_tokens] [n_streams]`.

#![allow(
    clippy::print_stdout,
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs
)]

use std::time::Instant;

use aigw_inference::llm::engine::{EngineConfig, GenEvent, GenerationRequest, LlmEngine};
use aigw_inference::llm::load::{load_gguf, load_safetensors_dir};
use aigw_inference::llm::sampling::SamplingParams;
use aigw_models::openai::{ChatMessage, Role};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let path = std::path::Path::new(&args[1]);
    let prompt = args
        .get(2)
        .cloned()
        .unwrap_or_else(|| "What is the capital of France?".into());
    let max_tokens: u32 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(32);
    let streams: usize = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(1);
    let device = candle_core::Device::Cpu;
    let t0 = Instant::now();
    let loaded = if path.is_dir() {
        load_safetensors_dir(path, &device)
    } else {
        load_gguf(path, &device)
    }
    .unwrap();
    println!("loaded in {:?}: {:?}", t0.elapsed(), loaded.model.config);
    let engine = LlmEngine::start(loaded, EngineConfig::default()).unwrap();
    let text = engine
        .codec()
        .render_chat(&[ChatMessage::text(Role::User, prompt)], None)
        .unwrap();
    let ids = engine.codec().encode_prompt(&text).unwrap();
    println!("prompt: {} tokens: {text:?}", ids.len());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let t0 = Instant::now();
        let mut rxs = Vec::new();
        for _ in 0..streams {
            rxs.push(
                engine
                    .submit(GenerationRequest {
                        prompt: ids.clone(),
                        sampling: SamplingParams {
                            temperature: 0.0,
                            ..Default::default()
                        },
                        max_tokens: Some(max_tokens),
                        stop: vec![],
                    })
                    .unwrap(),
            );
        }
        let mut first = None;
        let mut total = 0;
        for (k, mut rx) in rxs.into_iter().enumerate() {
            let mut out = String::new();
            while let Some(ev) = rx.recv().await {
                match ev {
                    GenEvent::Delta(t) => {
                        first.get_or_insert(t0.elapsed());
                        out.push_str(&t)
                    }
                    GenEvent::Finished {
                        reason,
                        completion_tokens,
                        ..
                    } => {
                        total += completion_tokens;
                        if k == 0 {
                            println!("{reason:?} {completion_tokens} tokens")
                        }
                    }
                    GenEvent::Failed(e) => panic!("{e}"),
                }
            }
            if k == 0 {
                println!("{out:?}");
            }
        }
        let el = t0.elapsed();
        println!(
            "ttft {:?}, {total} tokens in {el:?} = {:.1} tok/s",
            first.unwrap(),
            total as f64 / el.as_secs_f64()
        );
    });
}
