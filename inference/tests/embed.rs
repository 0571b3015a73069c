//! Tests of the embedding engine against reference vectors made by sentence-transformers
//! (`tests/reference/make_minilm_reference.py`). They need the all-MiniLM-L6-v2 files in
//! `$AIGW_MODEL_DIR/all-minilm-l6-v2` (default `~/.cache/aigw/models/all-minilm-l6-v2`); without
//! them each test prints "skipping: …" and passes, unless `AIGW_REQUIRE_MODELS=1`.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use aigw_inference::embed::{EmbedError, EmbedInput, EmbeddingModel};
use candle_core::Device;
use serde::Deserialize;

#[derive(Deserialize)]
struct Reference {
    dimensions: usize,
    max_seq_length: usize,
    items: Vec<Item>,
}

#[derive(Deserialize)]
struct Item {
    text: String,
    tokens: u64,
    vector: Vec<f32>,
}

fn reference() -> Reference {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/reference/minilm_reference.json"
    );
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn model_dir() -> PathBuf {
    let root = std::env::var_os("AIGW_MODEL_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").unwrap_or_default();
            PathBuf::from(home).join(".cache/aigw/models")
        });
    root.join("all-minilm-l6-v2")
}

/// The model, loaded once for all tests; `None` (after printing "skipping: …") when its files
/// are absent, or a panic then if `AIGW_REQUIRE_MODELS=1`.
fn model() -> Option<Arc<EmbeddingModel>> {
    static MODEL: OnceLock<Result<Arc<EmbeddingModel>, String>> = OnceLock::new();
    let loaded = MODEL.get_or_init(|| {
        let dir = model_dir();
        let needed = ["config.json", "tokenizer.json", "model.safetensors"];
        if let Some(missing) = needed.iter().map(|f| dir.join(f)).find(|p| !p.exists()) {
            return Err(format!(
                "{} is missing (run `aigw models fetch`)",
                missing.display()
            ));
        }
        let started = std::time::Instant::now();
        let model = EmbeddingModel::load(&dir, &Device::Cpu)
            .unwrap_or_else(|e| panic!("loading {}: {e}", dir.display()));
        eprintln!("loaded {} in {:?}", dir.display(), started.elapsed());
        Ok(Arc::new(model))
    });
    match loaded {
        Ok(model) => Some(Arc::clone(model)),
        Err(why) if std::env::var("AIGW_REQUIRE_MODELS").is_ok_and(|v| v == "1") => {
            panic!("AIGW_REQUIRE_MODELS=1 but {why}")
        }
        Err(why) => {
            eprintln!("skipping: {why}");
            None
        }
    }
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

fn texts(items: &[Item]) -> Vec<EmbedInput> {
    items
        .iter()
        .map(|i| EmbedInput::from(i.text.as_str()))
        .collect()
}

#[test]
fn matches_sentence_transformers_reference() {
    let Some(model) = model() else { return };
    let reference = reference();
    assert_eq!(model.dimensions(), reference.dimensions);
    assert_eq!(model.max_tokens(), reference.max_seq_length);

    let out = model.embed(&texts(&reference.items)).unwrap();
    assert_eq!(out.vectors.len(), reference.items.len());
    assert_eq!(
        out.prompt_tokens,
        reference.items.iter().map(|i| i.tokens).sum::<u64>()
    );
    let mut worst: f64 = 0.0;
    for (item, vector) in reference.items.iter().zip(&out.vectors) {
        assert_eq!(vector.len(), 384);
        let norm = vector
            .iter()
            .map(|x| f64::from(*x).powi(2))
            .sum::<f64>()
            .sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "norm {norm} for {:?}", item.text);
        let cos = cosine(vector, &item.vector);
        worst = worst.max(1.0 - cos);
        assert!(cos >= 1.0 - 1e-4, "cosine {cos} for {:?}", item.text);
    }
    eprintln!("largest 1 - cosine against the reference: {worst:e}");
}

#[test]
fn batching_does_not_change_results() {
    let Some(model) = model() else { return };
    let reference = reference();
    let together = model.embed(&texts(&reference.items)).unwrap();
    let mut worst: f64 = 0.0;
    for (item, batched) in reference.items.iter().zip(&together.vectors) {
        let alone = model
            .embed(&[EmbedInput::from(item.text.as_str())])
            .unwrap();
        assert_eq!(
            alone.prompt_tokens, item.tokens,
            "token count of {:?}",
            item.text
        );
        let cos = cosine(&alone.vectors[0], batched);
        worst = worst.max(1.0 - cos);
        assert!(cos >= 1.0 - 1e-5, "cosine {cos} for {:?}", item.text);
        assert!(cosine(&alone.vectors[0], &item.vector) >= 1.0 - 1e-4);
    }
    eprintln!("largest 1 - cosine, one at a time vs batched: {worst:e}");

    // More inputs than one chunk (32), in an order that differs from length order.
    let short = &reference.items[..4];
    let many: Vec<EmbedInput> = (0..37)
        .map(|i| short[i % short.len()].text.as_str().into())
        .collect();
    let out = model.embed(&many).unwrap();
    assert_eq!(out.vectors.len(), 37);
    for (i, vector) in out.vectors.iter().enumerate() {
        let cos = cosine(vector, &short[i % short.len()].vector);
        assert!(cos >= 1.0 - 1e-4, "input {i}: cosine {cos}");
    }
    let per_round: u64 = short.iter().map(|i| i.tokens).sum();
    assert_eq!(out.prompt_tokens, per_round * 9 + short[0].tokens);

    let empty = model.embed(&[]).unwrap();
    assert!(empty.vectors.is_empty());
    assert_eq!(empty.prompt_tokens, 0);
}

#[test]
fn paraphrases_are_closer_than_unrelated_text() {
    let Some(model) = model() else { return };
    let out = model
        .embed(&[
            "A man is playing a guitar on stage.".into(),
            "Someone performs music with a guitar in front of an audience.".into(),
            "The stock market fell sharply after the interest rate announcement.".into(),
        ])
        .unwrap();
    let (a, b, c) = (&out.vectors[0], &out.vectors[1], &out.vectors[2]);
    let (close, far) = (cosine(a, b), cosine(a, c));
    eprintln!("paraphrase cosine {close:.3}, unrelated {far:.3}");
    assert!(close > far + 0.2, "paraphrase {close} vs unrelated {far}");
}

#[test]
fn token_id_inputs_match_text_inputs() {
    let Some(model) = model() else { return };
    let mut tokenizer =
        tokenizers::Tokenizer::from_file(model_dir().join("tokenizer.json")).unwrap();
    // The file pads and truncates to 128; the client-side ids must be the bare sequence.
    tokenizer.with_padding(None).with_truncation(None).unwrap();
    let reference = reference();
    let item = &reference.items[1];
    let bare = tokenizer
        .encode(item.text.as_str(), false)
        .unwrap()
        .get_ids()
        .to_vec();
    let wrapped = tokenizer
        .encode(item.text.as_str(), true)
        .unwrap()
        .get_ids()
        .to_vec();
    assert_eq!(wrapped.len() as u64, item.tokens);

    let out = model
        .embed(&[
            bare.clone().into(),
            wrapped.into(),
            item.text.as_str().into(),
        ])
        .unwrap();
    assert_eq!(out.prompt_tokens, 3 * item.tokens);
    for vector in &out.vectors {
        assert!(cosine(vector, &item.vector) >= 1.0 - 1e-4);
    }

    let mut bad = bare;
    bad.push(30_522);
    let err = model.embed(&["fine".into(), bad.into()]).unwrap_err();
    assert!(
        matches!(
            err,
            EmbedError::InvalidTokenId {
                index: 1,
                id: 30_522,
                vocab_size: 30_522
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.kind(), "invalid_token_id");
    assert!(err.is_input_error());
}

#[test]
fn too_long_inputs_are_rejected_not_truncated() {
    let Some(model) = model() else { return };
    let max = model.max_tokens();
    assert_eq!(max, 256);

    // "hello" is one word piece: 300 of them plus [CLS] and [SEP].
    let long = "hello ".repeat(300);
    let err = model.embed(&["short".into(), long.into()]).unwrap_err();
    assert!(
        matches!(
            err,
            EmbedError::InputTooLong {
                index: 1,
                tokens: 302,
                max: 256
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.kind(), "input_too_long");
    assert!(err.is_input_error());

    // Token ids: the limit counts the special tokens the engine adds.
    let hello = 7592; // "hello" in the all-MiniLM-L6-v2 vocabulary
    let err = model.embed(&[vec![hello; max - 1].into()]).unwrap_err();
    assert!(
        matches!(
            err,
            EmbedError::InputTooLong {
                index: 0,
                tokens: 257,
                ..
            }
        ),
        "{err:?}"
    );
    let fits = model.embed(&[vec![hello; max - 2].into()]).unwrap();
    assert_eq!(fits.prompt_tokens, max as u64);
}

#[test]
fn model_can_be_shared_across_threads() {
    let Some(model) = model() else { return };
    let handles: Vec<_> = ["first thread", "second thread"]
        .into_iter()
        .map(|text| {
            let model = Arc::clone(&model);
            std::thread::spawn(move || model.embed(&[text.into()]).unwrap())
        })
        .collect();
    for handle in handles {
        assert_eq!(handle.join().unwrap().vectors[0].len(), 384);
    }
}

// Tests below need no model files.

#[test]
fn error_kinds_are_stable() {
    let too_long = EmbedError::InputTooLong {
        index: 2,
        tokens: 300,
        max: 256,
    };
    assert_eq!(too_long.kind(), "input_too_long");
    assert!(too_long.is_input_error());
    let message = "input 2 has 300 tokens, but this model accepts at most 256";
    assert_eq!(too_long.to_string(), message);
    let missing = EmbedError::MissingFile {
        path: PathBuf::from("/nope/config.json"),
    };
    assert_eq!(missing.kind(), "missing_file");
    assert!(!missing.is_input_error());
}

#[test]
fn missing_directory_is_reported() {
    let err = EmbeddingModel::load(std::path::Path::new("/nonexistent/aigw"), &Device::Cpu);
    assert!(
        matches!(err, Err(EmbedError::MissingFile { .. })),
        "{err:?}"
    );
}

#[test]
fn pooling_other_than_mean_is_refused() {
    let dir = std::env::temp_dir().join(format!("aigw-embed-pool-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("1_Pooling")).unwrap();
    let config = r#"{"vocab_size": 30522, "hidden_size": 384, "num_hidden_layers": 6,
        "num_attention_heads": 12, "intermediate_size": 1536, "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1, "max_position_embeddings": 512, "type_vocab_size": 2,
        "initializer_range": 0.02, "layer_norm_eps": 1e-12, "pad_token_id": 0}"#;
    std::fs::write(dir.join("config.json"), config).unwrap();
    let load_with_pooling = |pooling: &str| {
        std::fs::write(dir.join("1_Pooling/config.json"), pooling).unwrap();
        EmbeddingModel::load(&dir, &Device::Cpu).unwrap_err()
    };
    let cls = r#"{"word_embedding_dimension": 384, "pooling_mode_cls_token": true,
        "pooling_mode_mean_tokens": false}"#;
    assert_eq!(load_with_pooling(cls).kind(), "unsupported_pooling");
    let both = r#"{"pooling_mode_max_tokens": true, "pooling_mode_mean_tokens": true}"#;
    assert_eq!(load_with_pooling(both).kind(), "unsupported_pooling");
    let wide = r#"{"word_embedding_dimension": 768, "pooling_mode_mean_tokens": true}"#;
    assert_eq!(load_with_pooling(wide).kind(), "invalid_config");
    // Mean pooling passes; loading then stops at the absent tokenizer.
    let mean = r#"{"word_embedding_dimension": 384, "pooling_mode_mean_tokens": true}"#;
    let err = load_with_pooling(mean);
    assert!(
        matches!(&err, EmbedError::MissingFile { path } if path.ends_with("tokenizer.json")),
        "{err:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
