//! Form parsing, error mapping and the response formats, without a model.

use super::*;
use aigw_audio::whisper::{Segment, Transcript, Word};
use bytes::Bytes;
use std::time::Duration;

fn transcript() -> Transcript {
    let seg = |id, start, end, text: &str| Segment {
        id,
        start,
        end,
        text: text.into(),
        tokens: vec![1, 2],
        avg_logprob: -0.25,
        compression_ratio: 1.1,
        no_speech_prob: 0.01,
        temperature: 0.0,
    };
    Transcript {
        text: "Hello there. General Kenobi --> now.".into(),
        language: "en".into(),
        language_name: "english".into(),
        duration: 3723.456,
        segments: vec![
            seg(0, 0.0, 1.5, " Hello there."),
            seg(1, 3722.0, 3723.45, " General Kenobi --> now."),
        ],
        words: vec![Word {
            word: "Hello".into(),
            start: 0.004,
            end: 0.5,
        }],
        queued: Duration::ZERO,
        elapsed: Duration::ZERO,
    }
}

fn request(fields: &[(&str, &str)]) -> AudioRequest {
    AudioRequest {
        task: AudioTask::Transcription,
        model: "whisper".into(),
        file_name: "a.wav".into(),
        file_content_type: None,
        file: Bytes::new(),
        fields: fields
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    }
}

fn body(form: &[(&str, &str)]) -> String {
    let form = parse_form(&request(form)).unwrap();
    let resp = render(&form, AudioTask::Transcription, &transcript(), &[]).unwrap();
    String::from_utf8(resp.body.to_vec()).unwrap()
}

#[test]
fn subtitles_follow_srt_and_webvtt() {
    assert_eq!(
        body(&[("response_format", "srt")]),
        "1\n00:00:00,000 --> 00:00:01,500\nHello there.\n\n\
         2\n01:02:02,000 --> 01:02:03,450\nGeneral Kenobi -> now.\n\n"
    );
    assert_eq!(
        body(&[("response_format", "vtt")]),
        "WEBVTT\n\n00:00:00.000 --> 00:00:01.500\nHello there.\n\n\
         01:02:02.000 --> 01:02:03.450\nGeneral Kenobi -> now.\n\n"
    );
    assert_eq!(
        body(&[("response_format", "text")]),
        "Hello there. General Kenobi --> now.\n"
    );
}

#[test]
fn json_shapes_are_openai_s() {
    let json: serde_json::Value = serde_json::from_str(&body(&[])).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"text": "Hello there. General Kenobi --> now.",
                           "usage": {"type": "duration", "seconds": 3724.0}})
    );
    let verbose: serde_json::Value =
        serde_json::from_str(&body(&[("response_format", "verbose_json")])).unwrap();
    assert_eq!(verbose["task"], "transcribe");
    assert_eq!(verbose["language"], "english");
    assert_eq!(verbose["duration"], 3723.46);
    assert_eq!(verbose["segments"][1]["seek"], 372_200);
    assert_eq!(verbose["segments"][0]["text"], " Hello there.");
    assert!(verbose.get("words").is_none());
    let both: serde_json::Value = serde_json::from_str(&body(&[
        ("response_format", "verbose_json"),
        ("timestamp_granularities[]", "word"),
        ("timestamp_granularities[]", "segment"),
    ]))
    .unwrap();
    assert_eq!(
        both["words"][0],
        serde_json::json!({"word": "Hello", "start": 0.0, "end": 0.5})
    );
    assert_eq!(both["segments"].as_array().unwrap().len(), 2);
    let words_only: serde_json::Value = serde_json::from_str(&body(&[
        ("response_format", "verbose_json"),
        ("timestamp_granularities[]", "word"),
    ]))
    .unwrap();
    assert!(words_only.get("segments").is_none() && words_only["words"].is_array());
}

#[test]
fn bad_fields_are_named() {
    let param = |fields: &[(&str, &str)]| match parse_form(&request(fields)).unwrap_err() {
        ProviderError::Rejected { param, .. } => param.unwrap(),
        other => panic!("{other:?}"),
    };
    assert_eq!(param(&[("response_format", "xml")]), "response_format");
    assert_eq!(
        param(&[
            ("response_format", "diarized_json"),
            ("timestamp_granularities[]", "word")
        ]),
        "timestamp_granularities"
    );
    assert_eq!(param(&[("temperature", "hot")]), "temperature");
    assert_eq!(param(&[("temperature", "1.5")]), "temperature");
    assert_eq!(
        param(&[("timestamp_granularities[]", "word")]),
        "timestamp_granularities"
    );
    assert_eq!(
        param(&[
            ("response_format", "verbose_json"),
            ("timestamp_granularities[]", "char")
        ]),
        "timestamp_granularities"
    );
    let form = parse_form(&request(&[
        ("language", "EN"),
        ("prompt", "Kenobi"),
        ("temperature", "0.4"),
        ("stream", "false"),
    ]))
    .unwrap();
    assert_eq!(form.options.language.as_deref(), Some("en"));
    assert_eq!(form.options.prompt.as_deref(), Some("Kenobi"));
    assert!((form.options.temperature - 0.4).abs() < 1e-6);
}

#[test]
fn too_long_audio_is_a_413_and_bad_audio_a_400() {
    match decode_error(DecodeError::TooLong { limit_secs: 5.0 }) {
        ProviderError::Status { status, body, .. } => {
            assert_eq!(status, http::StatusCode::PAYLOAD_TOO_LARGE);
            assert_eq!(body.unwrap().error.code.as_deref(), Some("audio_too_long"));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        decode_error(DecodeError::Corrupt("x".into())),
        ProviderError::Rejected {
            code: "invalid_value",
            ..
        }
    ));
}

#[test]
fn diarized_json_labels_segments_by_overlap() {
    let turn = |speaker: &str, start, end| aigw_audio::diarize::SpeakerTurn {
        speaker: speaker.into(),
        start,
        end,
        final_: true,
    };
    let form = parse_form(&request(&[("response_format", "diarized_json")])).unwrap();
    let mut t = transcript();
    t.segments[1].start = 2.0;
    t.segments[1].end = 4.0;
    let turns = [turn("speaker_0", 0.2, 2.5), turn("speaker_1", 2.6, 3.9)];
    let resp = render(&form, AudioTask::Transcription, &t, &turns).unwrap();
    let json: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(json["task"], "transcribe");
    assert_eq!(json["usage"]["type"], "duration");
    assert_eq!(
        json["segments"][0],
        serde_json::json!({"type": "transcript.text.segment", "id": "seg_0", "start": 0.0,
            "end": 1.5, "text": "Hello there.", "speaker": "speaker_0"})
    );
    // 0.5 s of speaker_0, 1.3 s of speaker_1.
    assert_eq!(json["segments"][1]["speaker"], "speaker_1");
    // No overlap: the nearest turn; no turns: speaker_0.
    assert_eq!(render::speaker_of(5.0, 6.0, &turns), "speaker_1");
    assert_eq!(render::speaker_of(5.0, 6.0, &[]), "speaker_0");
}
