//! Parity of the diarisation models with independent reference implementations, on real speech.
//!
//! The fixtures in `tests/reference/` were made once by `make_fixtures.py` (onnxruntime on the
//! official segmentation-3.0 ONNX export, kaldi-native-fbank and torchaudio, PyTorch running
//! modelscope's CAM++ definition); see that script. The model tests need the weights in
//! `$AIGW_MODEL_DIR` (default `~/.cache/aigw/models`, installed by `aigw models fetch
//! pyannote-segmentation-3.0 campplus-sv`); without them they print "skipping: …" and pass,
//! unless `AIGW_REQUIRE_MODELS=1`.

#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests"
)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use aigw_audio::campplus::{CamPlusPlus, EMBEDDING_DIM};
use aigw_audio::fbank::{self, Fbank};
use aigw_audio::segmentation::{self, Decoding, Segmentation};
use candle_core::{Device, Tensor};

fn reference_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference")
}

/// The tensors of one fixture file.
fn fixture(name: &str) -> HashMap<String, Tensor> {
    let path = reference_dir().join(name);
    candle_core::safetensors::load(&path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn fixture_vec(tensors: &HashMap<String, Tensor>, name: &str) -> (Vec<usize>, Vec<f32>) {
    let tensor = &tensors[name];
    (
        tensor.dims().to_vec(),
        tensor.flatten_all().unwrap().to_vec1().unwrap(),
    )
}

/// The 10 s cut of pyannote's sample (16 kHz mono PCM16) as floats in [-1, 1].
fn sample() -> &'static [f32] {
    static SAMPLES: OnceLock<Vec<f32>> = OnceLock::new();
    SAMPLES.get_or_init(|| {
        let bytes = std::fs::read(reference_dir().join("sample_10s.wav")).unwrap();
        read_pcm16_wav(&bytes)
    })
}

/// A minimal reader for the fixture's format: RIFF/WAVE, PCM, 16 bits, mono, 16 kHz.
fn read_pcm16_wav(bytes: &[u8]) -> Vec<f32> {
    assert_eq!(&bytes[0..4], b"RIFF");
    assert_eq!(&bytes[8..12], b"WAVE");
    let mut at = 12;
    let mut format_ok = false;
    while at + 8 <= bytes.len() {
        let id = &bytes[at..at + 4];
        let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
        let body = &bytes[at + 8..at + 8 + len];
        if id == b"fmt " {
            let format = u16::from_le_bytes([body[0], body[1]]);
            let channels = u16::from_le_bytes([body[2], body[3]]);
            let rate = u32::from_le_bytes(body[4..8].try_into().unwrap());
            let bits = u16::from_le_bytes([body[14], body[15]]);
            assert_eq!((format, channels, rate, bits), (1, 1, 16_000, 16));
            format_ok = true;
        } else if id == b"data" {
            assert!(format_ok, "data before fmt");
            return body
                .chunks_exact(2)
                .map(|s| f32::from(i16::from_le_bytes([s[0], s[1]])) / 32768.0)
                .collect();
        }
        at += 8 + len + (len & 1);
    }
    panic!("no data chunk");
}

/// The file `file` of catalog model `id`, or `None` (after saying why) when it is absent, or a
/// panic then if `AIGW_REQUIRE_MODELS=1`.
fn model_file(id: &str, file: &str) -> Option<PathBuf> {
    let root = std::env::var_os("AIGW_MODEL_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").unwrap_or_default();
            PathBuf::from(home).join(".cache/aigw/models")
        });
    let path = root.join(id).join(file);
    if path.exists() {
        return Some(path);
    }
    let why = format!(
        "{} is missing (run `aigw models fetch {id}`)",
        path.display()
    );
    if std::env::var("AIGW_REQUIRE_MODELS").is_ok_and(|v| v == "1") {
        panic!("AIGW_REQUIRE_MODELS=1 but {why}");
    }
    eprintln!("skipping: {why}");
    None
}

fn segmentation_model() -> Option<&'static Segmentation> {
    static MODEL: OnceLock<Option<Segmentation>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            let path = model_file("pyannote-segmentation-3.0", "pytorch_model.bin")?;
            Some(Segmentation::load(&path).unwrap_or_else(|e| panic!("{e}")))
        })
        .as_ref()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn the_sinc_filters_match_the_onnx_export() {
    let Some(model) = segmentation_model() else {
        return;
    };
    let (shape, expected) = fixture_vec(&fixture("segmentation.safetensors"), "sinc_filters");
    let filters = model.sinc_filters();
    assert_eq!(filters.dims(), shape.as_slice());
    let ours: Vec<f32> = filters.flatten_all().unwrap().to_vec1().unwrap();
    let scale = expected.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = max_abs_diff(&ours, &expected);
    eprintln!("sinc filters: max |diff| {diff:.3e} (largest tap {scale:.3e})");
    // PyTorch built them in f32, we in f64.
    assert!(diff <= 1e-5 * scale.max(1.0), "max |diff| {diff}");
}

/// Compares our segmentation of `samples` with onnxruntime's log-probabilities.
fn check_segmentation(model: &Segmentation, samples: &[f32], reference: &str) {
    let (shape, expected) = fixture_vec(&fixture("segmentation.safetensors"), reference);
    let started = std::time::Instant::now();
    let log_probs = model.segment(samples).unwrap();
    let elapsed = started.elapsed();
    assert_eq!(log_probs.dims(), shape.as_slice());
    assert_eq!(shape[0], segmentation::num_frames(samples.len()));
    let ours: Vec<f32> = log_probs.flatten_all().unwrap().to_vec1().unwrap();
    let probs = |v: &[f32]| v.iter().map(|x| x.exp()).collect::<Vec<f32>>();
    let prob_diff = max_abs_diff(&probs(&ours), &probs(&expected));
    // Log-probabilities are compared where the class is not negligible (p > 1e-4).
    let log_diff = ours
        .iter()
        .zip(&expected)
        .filter(|(_, e)| **e > -9.2)
        .map(|(o, e)| (o - e).abs())
        .fold(0.0, f32::max);

    let speakers = |v: Vec<f32>| {
        let t = Tensor::from_vec(v, (shape[0], shape[1]), &Device::Cpu).unwrap();
        segmentation::speaker_activity(&t, Decoding::Hard)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap()
    };
    let (ours_hard, expected_hard) = (speakers(ours), speakers(expected));
    let agree = ours_hard
        .iter()
        .zip(&expected_hard)
        .filter(|(a, b)| a == b)
        .count();
    eprintln!(
        "{reference}: {} frames in {elapsed:?}; max |Δp| {prob_diff:.2e}, max |Δlog p| \
         {log_diff:.2e} (p > 1e-4), hard decisions equal on {agree}/{} frames",
        shape[0], shape[0]
    );
    assert!(prob_diff <= 1e-3, "max |Δp| {prob_diff}");
    assert!(log_diff <= 1e-2, "max |Δlog p| {log_diff}");
    assert!(
        agree * 1000 >= ours_hard.len() * 995,
        "{agree}/{}",
        ours_hard.len()
    );
}

#[test]
fn segmentation_of_a_10_s_window_matches_onnxruntime() {
    let Some(model) = segmentation_model() else {
        return;
    };
    check_segmentation(model, sample(), "log_probs_10s");
}

#[test]
fn segmentation_of_a_5_s_window_matches_onnxruntime() {
    let Some(model) = segmentation_model() else {
        return;
    };
    let samples = sample();
    check_segmentation(model, &samples[samples.len() / 2..], "log_probs_5s");
}

#[test]
fn segmentation_finds_both_speakers_and_their_overlaps() {
    let Some(model) = segmentation_model() else {
        return;
    };
    // sample.rttm, relative to the cut: speaker91 0-1.03, 4.49-7.92 and 8.15-8.59,
    // speaker90 0.57-4.70 and 8.05-10, so two overlaps: 0.57-1.03 and 4.49-4.70 (the model,
    // like onnxruntime's run of it, does not hear the third, 8.15-8.59).
    let log_probs = model.segment(sample()).unwrap();
    let active = segmentation::speaker_activity(&log_probs, Decoding::Hard)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let at = |seconds: f64| -> &[f32] {
        let frame = (0..active.len())
            .min_by(|&a, &b| {
                let da = (segmentation::frame_center_seconds(a) - seconds).abs();
                let db = (segmentation::frame_center_seconds(b) - seconds).abs();
                da.total_cmp(&db)
            })
            .unwrap();
        &active[frame]
    };
    let who = |seconds: f64| -> Vec<usize> { (0..3).filter(|&s| at(seconds)[s] > 0.5).collect() };
    let speaker90 = who(2.0);
    let speaker91 = who(6.0);
    assert_eq!(speaker90.len(), 1, "one speaker at 2 s: {speaker90:?}");
    assert_eq!(speaker91.len(), 1, "one speaker at 6 s: {speaker91:?}");
    assert_ne!(speaker90, speaker91, "two different local speakers");
    assert_eq!(
        who(0.3),
        speaker91,
        "the same local speaker before the first turn"
    );
    let both: Vec<usize> = [speaker90[0], speaker91[0]]
        .into_iter()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(who(0.8), both, "the overlap at 0.57-1.03 s");
    assert_eq!(who(4.6), both, "the overlap at 4.49-4.70 s");
}

#[test]
fn segmentation_rejects_too_short_input_and_batches() {
    let Some(model) = segmentation_model() else {
        return;
    };
    assert!(model.segment(&[0.0; 500]).is_err());
    // A batch gives the same result as its items one by one.
    let samples = &sample()[..3 * 16_000];
    let other = &sample()[5 * 16_000..8 * 16_000];
    let batch =
        Tensor::from_vec([samples, other].concat(), (2, samples.len()), &Device::Cpu).unwrap();
    let both = model.forward(&batch).unwrap();
    for (i, item) in [samples, other].into_iter().enumerate() {
        let alone: Vec<f32> = model
            .segment(item)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let batched: Vec<f32> = both
            .get(i)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(max_abs_diff(&alone, &batched) < 1e-4);
    }
}

#[test]
fn fbank_matches_kaldi_native_fbank_and_torchaudio() {
    let samples = &sample()[..3 * 16_000];
    let ours = Fbank::default().compute(samples);
    let tensors = fixture("fbank.safetensors");
    for reference in ["kaldi_native_fbank", "torchaudio"] {
        let (shape, expected) = fixture_vec(&tensors, reference);
        assert_eq!(
            shape,
            [fbank::num_frames(samples.len()), fbank::NUM_MEL_BINS]
        );
        let diff = max_abs_diff(&ours, &expected);
        let mean = ours
            .iter()
            .zip(&expected)
            .map(|(a, b)| f64::from((a - b).abs()))
            .sum::<f64>()
            / ours.len() as f64;
        eprintln!("fbank vs {reference}: max |diff| {diff:.2e}, mean |diff| {mean:.2e} (log-mel)");
        assert!(diff <= 2e-3, "{reference}: max |diff| {diff}");
        assert!(mean <= 1e-4, "{reference}: mean |diff| {mean}");
    }
}

fn campplus_model() -> Option<&'static CamPlusPlus> {
    static MODEL: OnceLock<Option<CamPlusPlus>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            let path = model_file("campplus-sv", "campplus_cn_en_common.pt")?;
            Some(CamPlusPlus::load(&path).unwrap_or_else(|e| panic!("{e}")))
        })
        .as_ref()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

/// The fixture segments: name, start and end in seconds within the cut.
const SEGMENTS: [(&str, f64, f64); 4] = [
    ("a1", 0.8, 2.6),
    ("a2", 2.6, 4.4),
    ("b1", 4.8, 6.3),
    ("b2", 6.3, 7.8),
];

fn segment_samples(start: f64, end: f64) -> &'static [f32] {
    &sample()[(start * 16_000.0) as usize..(end * 16_000.0) as usize]
}

#[test]
fn campplus_on_reference_features_matches_pytorch() {
    let Some(model) = campplus_model() else {
        return;
    };
    let tensors = fixture("campplus.safetensors");
    let features = tensors["features_a1"].unsqueeze(0).unwrap();
    let (_, expected) = fixture_vec(&tensors, "embedding_a1");
    let ours: Vec<f32> = model
        .embed(&features)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(ours.len(), EMBEDDING_DIM);
    let diff = max_abs_diff(&ours, &expected);
    let scale = expected.iter().fold(0f32, |m, v| m.max(v.abs()));
    let cos = cosine(&ours, &expected);
    eprintln!("CAM++ (same features): max |diff| {diff:.2e} (largest {scale:.2}), cosine {cos:.8}");
    assert!(diff <= 1e-3 * scale, "max |diff| {diff}");
    assert!(cos >= 0.99999, "cosine {cos}");
}

#[test]
fn campplus_from_audio_matches_pytorch_and_separates_the_speakers() {
    let Some(model) = campplus_model() else {
        return;
    };
    let tensors = fixture("campplus.safetensors");
    let mut ours = HashMap::new();
    for (name, start, end) in SEGMENTS {
        let samples = segment_samples(start, end);
        let started = std::time::Instant::now();
        let embedding = model.embed_samples(samples).unwrap();
        let elapsed = started.elapsed();
        let (_, expected) = fixture_vec(&tensors, &format!("embedding_{name}"));
        let diff = max_abs_diff(&embedding, &expected);
        let cos = cosine(&embedding, &expected);
        eprintln!(
            "CAM++ {name} ({:.1} s, {elapsed:?}): max |diff| {diff:.2e}, cosine {cos:.8}",
            end - start
        );
        assert!(cos >= 0.9999, "{name}: cosine {cos}");
        ours.insert(name, embedding);
    }
    let same = [
        cosine(&ours["a1"], &ours["a2"]),
        cosine(&ours["b1"], &ours["b2"]),
    ];
    let across = [("a1", "b1"), ("a1", "b2"), ("a2", "b1"), ("a2", "b2")]
        .map(|(a, b)| cosine(&ours[a], &ours[b]));
    eprintln!("CAM++ cosine: same speaker {same:.3?}, different speakers {across:.3?}");
    let least_same = same.iter().copied().fold(f64::INFINITY, f64::min);
    let most_across = across.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    assert!(least_same > most_across + 0.1, "{same:?} vs {across:?}");
}

#[test]
fn campplus_rejects_too_little_audio() {
    let Some(model) = campplus_model() else {
        return;
    };
    assert!(model.embed_samples(&[0.0; 400]).is_err());
    assert_eq!(
        model.embed_samples(&sample()[..800]).unwrap().len(),
        EMBEDDING_DIM
    );
}
