//! The session state machine without a socket: VAD utterances, settings changed mid-stream,
//! manual commits and clears, the track cap.

use super::*;

fn pcm(secs: f64, amp: f32) -> Vec<u8> {
    (0..(secs * 16_000.0) as usize)
        .flat_map(|i| ((amp * (i as f32 * 0.3).sin() * 32767.0) as i16).to_le_bytes())
        .collect()
}

fn kinds(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .map(|a| match a {
            Action::Send(v) => v["type"].as_str().unwrap_or_default().to_owned(),
            Action::Transcribe(u) => format!("transcribe {}", u.samples.len()),
            Action::Audio { .. } => "audio".into(),
        })
        .collect()
}

fn session_16k() -> Session {
    let mut s = Session::new();
    s.update(&json!({"aigw_input": {"sample_rate": 16000}}))
        .unwrap();
    s
}

#[test]
fn vad_utterance_with_padding_and_hangover() {
    let mut s = session_16k();
    let mut actions = s.append(None, &pcm(1.0, 0.0)).unwrap();
    actions.extend(s.append(None, &pcm(1.0, 0.3)).unwrap());
    actions.extend(s.append(None, &pcm(1.0, 0.0)).unwrap());
    // 300 ms of padding + 1 s of speech + the 500 ms hangover.
    assert_eq!(
        kinds(&actions),
        [
            "input_audio_buffer.speech_started",
            "input_audio_buffer.speech_stopped",
            "input_audio_buffer.committed",
            "transcribe 28800",
        ]
    );
    let Action::Send(started) = &actions[0] else {
        panic!()
    };
    assert_eq!(started["audio_start_ms"], 700);
}

#[test]
fn settings_changes_commits_and_clears_mid_stream_keep_the_track_consistent() {
    let mut s = session_16k();
    s.append(None, &pcm(0.5, 0.0)).unwrap();
    s.append(None, &pcm(0.3, 0.3)).unwrap();
    // A new detector mid-speech: it has heard no speech yet.
    s.update(&json!({"turn_detection": {"silence_duration_ms": 300}}))
        .unwrap();
    assert_eq!(
        s.commit(None).unwrap_err().code,
        "input_audio_buffer_commit_empty"
    );
    let mut actions = s.append(None, &pcm(0.8, 0.3)).unwrap();
    // A manual commit while speaking ends the item.
    actions.extend(s.commit(None).unwrap());
    actions.extend(s.append(None, &pcm(0.25, 0.3)).unwrap());
    actions.extend(s.clear(None).unwrap());
    actions.extend(s.append(None, &pcm(1.0, 0.0)).unwrap());
    let k = kinds(&actions);
    assert_eq!(k[0], "input_audio_buffer.speech_started");
    assert_eq!(k[1], "input_audio_buffer.committed");
    assert!(k[2].starts_with("transcribe"));
    assert!(
        k.contains(&"input_audio_buffer.cleared".to_owned()),
        "{k:?}"
    );
    // Manual mode and back: 16 kHz → 48 kHz stereo on the way.
    s.update(&json!({"turn_detection": null, "aigw_input": {"sample_rate": 48000, "channels": 2}}))
        .unwrap();
    let stereo: Vec<u8> = pcm(0.6, 0.3)
        .chunks(2)
        .flat_map(|s| [s, s, s, s, s, s].concat())
        .collect();
    assert!(s.append(None, &stereo).unwrap().is_empty());
    let committed = s.commit(None).unwrap();
    // The 0.6 s, after what the detector kept as padding (0.36 s and part of a frame).
    let Some(Action::Transcribe(u)) = committed.get(1) else {
        panic!("{:?}", kinds(&committed))
    };
    assert!(
        (9600 + 5760..9600 + 6080).contains(&u.samples.len()),
        "{}",
        u.samples.len()
    );
    s.update(&json!({"turn_detection": {}, "aigw_input": {"sample_rate": 16000, "channels": 1}}))
        .unwrap();
    let mut actions = s.append(None, &pcm(0.5, 0.0)).unwrap();
    actions.extend(s.append(None, &pcm(0.5, 0.3)).unwrap());
    actions.extend(s.append(None, &pcm(1.0, 0.0)).unwrap());
    let k = kinds(&actions);
    assert_eq!(k.len(), 4, "{k:?}");
    assert_eq!(k[3], "transcribe 20800", "{k:?}");
}

#[test]
fn named_tracks_are_capped() {
    let mut s = session_16k();
    for i in 0..MAX_TRACKS {
        s.append(Some(format!("t{i}")), &pcm(0.02, 0.0)).unwrap();
    }
    s.append(None, &pcm(0.02, 0.0)).unwrap();
    let e = s
        .append(Some("one more".into()), &pcm(0.02, 0.0))
        .unwrap_err();
    assert_eq!(e.code, "too_many_tracks");
}
