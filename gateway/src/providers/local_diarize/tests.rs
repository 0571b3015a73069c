//! Form parsing and the response formats, without a model.

use super::*;

fn request(fields: &[(&str, &str)]) -> AudioRequest {
    AudioRequest {
        task: AudioTask::Diarization,
        model: "diarization".into(),
        file_name: "my meeting.wav".into(),
        file_content_type: None,
        file: Bytes::new(),
        fields: fields
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    }
}

fn turn(speaker: &str, start: f64, end: f64) -> SpeakerTurn {
    SpeakerTurn {
        speaker: speaker.into(),
        start,
        end,
        final_: true,
    }
}

fn rejected_param(e: ProviderError) -> Option<String> {
    match e {
        ProviderError::Rejected { param, .. } => param,
        other => panic!("{other:?}"),
    }
}

#[test]
fn settings_come_from_the_form_and_are_validated() {
    let (format, config) = parse_form(&request(&[])).unwrap();
    assert_eq!(format, Format::Json);
    assert_eq!(config, DiarizationConfig::default());
    let (format, config) = parse_form(&request(&[
        ("response_format", "rttm"),
        ("latency_s", "5"),
        ("max_speakers", "4"),
        ("delta_new", " 0.8 "),
        ("language", "en"),
        ("step_s", ""),
    ]))
    .unwrap();
    assert_eq!(format, Format::Rttm);
    assert_eq!(
        (
            config.latency_s,
            config.max_speakers,
            config.delta_new,
            config.step_s
        ),
        (5.0, 4, 0.8, 0.5)
    );
    for (field, value) in [
        ("latency_s", "9"),
        ("latency_s", "soon"),
        ("tau_active", "2"),
        ("max_speakers", "0"),
        ("max_speakers", "2.5"),
        ("response_format", "srt"),
    ] {
        let e = parse_form(&request(&[(field, value)])).unwrap_err();
        assert_eq!(rejected_param(e).as_deref(), Some(field), "{field}={value}");
    }
}

#[test]
fn json_and_rttm() {
    let turns = [
        turn("speaker_0", 0.0312, 4.1),
        turn("speaker_1", 4.5, 8.25),
        turn("speaker_0", 9.0, 10.0),
    ];
    let resp = render(Format::Json, "a.wav", 10.2345, &turns).unwrap();
    assert_eq!(resp.content_type, "application/json");
    assert_eq!(resp.audio_secs, Some(10.2345));
    let json: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "duration": 10.235,
            "speakers": ["speaker_0", "speaker_1"],
            "segments": [
                {"speaker": "speaker_0", "start": 0.031, "end": 4.1},
                {"speaker": "speaker_1", "start": 4.5, "end": 8.25},
                {"speaker": "speaker_0", "start": 9.0, "end": 10.0},
            ]
        })
    );
    let resp = render(Format::Rttm, "my meeting.wav", 10.0, &turns[..2]).unwrap();
    assert!(resp.content_type.starts_with("text/plain"));
    assert_eq!(
        std::str::from_utf8(&resp.body).unwrap(),
        "SPEAKER my_meeting 1 0.031 4.069 <NA> <NA> speaker_0 <NA> <NA>\n\
         SPEAKER my_meeting 1 4.500 3.750 <NA> <NA> speaker_1 <NA> <NA>\n"
    );
    assert_eq!(rttm_uri(""), "audio");
}
