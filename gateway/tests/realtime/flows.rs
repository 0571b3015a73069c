//! Single-track sessions: server VAD in real time and faster, binary frames, manual commits.

use std::time::Duration;

use futures::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::{Client, assert_heard, dice, fox, joined, pcm, serve, vad_transcript};

#[tokio::test]
async fn streamed_in_real_time_with_server_vad() {
    let Some(clip) = fox() else { return };
    let addr = serve("").await;
    let mut c = Client::connect(&addr).await;
    let updated = c
        .update(json!({
            "input_audio_format": "pcm16",
            "input_audio_transcription": {"model": "whisper"},
            "turn_detection": {"type": "server_vad", "threshold": 0.5, "silence_duration_ms": 500},
        }))
        .await;
    assert_eq!(
        updated["session"]["input_audio_transcription"]["model"],
        "whisper"
    );
    // 24 kHz mono, 20 ms (960-byte) chunks, paced in real time.
    let bytes = pcm(clip, 24_000, 1, 1.0);
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    for chunk in bytes.chunks(960) {
        tick.tick().await;
        c.append(chunk, None).await;
    }
    let text = vad_transcript(&mut c).await;
    assert_heard(&text, &["quick", "fox", "lazy", "dog"]);
}

#[tokio::test]
async fn binary_frames_at_48_khz_stereo_faster_than_real_time() {
    let Some(clip) = fox() else { return };
    let addr = serve("").await;
    let mut c = Client::connect(&addr).await;
    let updated = c
        .update(json!({"aigw_input": {"sample_rate": 48000, "channels": 2}}))
        .await;
    assert_eq!(updated["session"]["aigw_input"]["channels"], 2);
    let bytes = pcm(clip, 48_000, 2, 1.0);
    // 20 ms of 48 kHz stereo per frame, sent as fast as the socket takes them.
    for chunk in bytes.chunks(3840) {
        c.ws.send(Message::Binary(chunk.to_vec().into()))
            .await
            .unwrap();
    }
    let text = vad_transcript(&mut c).await;
    assert_heard(&text, &["quick", "fox", "lazy", "dog"]);
}

#[tokio::test]
async fn manual_commit_without_turn_detection() {
    let Some(clip) = dice() else { return };
    let addr = serve("").await;
    let mut c = Client::connect(&addr).await;
    c.send(
        json!({"type": "session.update", "session": {"type": "transcription", "audio": {"input": {
            "format": {"type": "audio/pcm", "rate": 24000},
            "transcription": {"model": "whisper", "language": "en"},
            "turn_detection": null,
        }}}}),
    )
    .await;
    let updated = c.until("session.updated").await;
    assert!(updated["session"]["turn_detection"].is_null(), "{updated}");
    // An empty buffer cannot be committed.
    c.send(json!({"type": "input_audio_buffer.commit", "event_id": "evt_empty"}))
        .await;
    let err = c.until("error").await;
    assert_eq!(err["error"]["code"], "input_audio_buffer_commit_empty");
    assert_eq!(err["error"]["event_id"], "evt_empty");
    // Audio then a clear: nothing is transcribed.
    c.append(&pcm(clip, 24_000, 1, 0.0)[..48_000], None).await;
    c.send(json!({"type": "input_audio_buffer.clear"})).await;
    c.until("input_audio_buffer.cleared").await;
    for chunk in pcm(clip, 24_000, 1, 0.3).chunks(24_000) {
        c.append(chunk, None).await;
    }
    c.send(json!({"type": "input_audio_buffer.commit"})).await;
    let committed = c.until("input_audio_buffer.committed").await;
    let completed = c.transcripts(1).await;
    assert_eq!(completed.len(), 1);
    assert_eq!(completed[0]["item_id"], committed["item_id"]);
    assert!(c.of("input_audio_buffer.speech_started").is_empty());
    assert!(
        !c.of("conversation.item.input_audio_transcription.delta")
            .is_empty()
    );
    let secs = completed[0]["usage"]["seconds"].as_f64().unwrap();
    let expected = clip.len() as f64 / 16_000.0 + 0.3;
    assert!((secs - expected).abs() < 0.05, "{secs} vs {expected}");
    assert_heard(&joined(&completed), &["master", "dice", "party"]);
}
