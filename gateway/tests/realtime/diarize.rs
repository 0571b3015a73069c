//! A diarised session: a two-voice espeak-ng conversation (A, B, A) streamed in real time on
//! the default track with `aigw_diarization` on, producing `diarization.speaker_turn` events
//! and transcripts labelled with the speaker who said them.

use std::time::Duration;

use serde_json::{Value, json};

use crate::{Client, pcm, required, serve, speech_in};

/// (voice, words).
const SCRIPT: [(&str, &str); 3] = [
    ("en+m3", "The quick brown fox jumps over the lazy dog."),
    ("en+f3", "A game master rolls the dice for the party."),
    ("en+m3", "The dragon sleeps under the mountain."),
];

fn diarization_models_present() -> bool {
    let dir = aigw_models::store::model_dir();
    let present = ["pyannote-segmentation-3.0", "campplus-sv"]
        .iter()
        .all(|id| {
            aigw_models::catalog::lookup(id)
                .is_some_and(|e| aigw_models::store::resolve(e, &dir).is_ok_and(|r| r.is_present()))
        });
    if !present {
        assert!(
            !required(),
            "the diarisation models are missing (scripts/test fetches them)"
        );
        eprintln!("skipping: the diarisation models are missing");
    }
    present
}

#[tokio::test]
async fn two_voices_streamed_in_real_time_get_turns_and_speakers() {
    if !diarization_models_present() {
        return;
    }
    let mut audio = Vec::new();
    for (voice, words) in SCRIPT {
        let Some(clip) = speech_in(voice, words) else {
            return;
        };
        audio.extend(clip);
        audio.extend(std::iter::repeat_n(0.0, 12_800));
    }
    let addr = serve(
        "[[local.models]]\nname = \"diar\"\nkind = \"diarization\"\nmodel = \"pyannote-segmentation-3.0\"\nembedding_model = \"campplus-sv\"\n",
    )
    .await;
    let mut c = Client::connect(&addr).await;
    let s = c
        .update(json!({"aigw_diarization": {"enabled": true, "step_s": 0.5, "latency_s": 0.5}}))
        .await;
    assert_eq!(s["session"]["aigw_diarization"]["latency_s"], 0.5);
    let bytes = pcm(&audio, 24_000, 1, 1.0);
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    for chunk in bytes.chunks(960) {
        tick.tick().await;
        c.append(chunk, None).await;
    }
    while c.of("input_audio_buffer.committed").len() < 3 {
        c.next().await;
    }
    let committed = c.of("input_audio_buffer.committed").len();
    let completed = c.transcripts(committed).await;
    let turns = c.of("diarization.speaker_turn");
    let speakers: std::collections::BTreeSet<&str> =
        turns.iter().filter_map(|t| t["speaker"].as_str()).collect();
    assert!(speakers.len() >= 2, "{turns:?}");
    assert!(turns.iter().any(|t| t["final"] == true), "{turns:?}");
    for t in &turns {
        assert!(
            t["end"].as_f64().unwrap() >= t["start"].as_f64().unwrap(),
            "{t}"
        );
    }
    let said = |word: &str| -> Value {
        completed
            .iter()
            .find(|e| {
                e["transcript"]
                    .as_str()
                    .unwrap()
                    .to_lowercase()
                    .contains(word)
            })
            .unwrap_or_else(|| panic!("nobody said {word:?}: {completed:?}"))["speaker"]
            .clone()
    };
    let (a, b, a2) = (said("fox"), said("master"), said("mountain"));
    assert!(a.is_string() && b.is_string(), "{completed:?}");
    assert_ne!(a, b, "{completed:?}");
    assert_eq!(a, a2, "{completed:?}");
    let segments = c.of("conversation.item.input_audio_transcription.segment");
    assert!(
        segments.iter().all(|s| s["speaker"].is_string()),
        "{segments:?}"
    );
}
