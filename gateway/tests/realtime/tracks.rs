//! Named tracks, malformed events, auth, concurrent sessions, budgets and metrics.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::{Client, KEY, assert_heard, dice, fox, joined, pcm, serve};

#[tokio::test]
async fn two_named_tracks_on_one_connection() {
    let (Some(fox), Some(dice)) = (fox(), dice()) else {
        return;
    };
    let addr = serve("").await;
    let mut c = Client::connect(&addr).await;
    c.update(
        json!({"aigw_binary_track_header": true, "turn_detection": {"silence_duration_ms": 500}}),
    )
    .await;
    // Alice in JSON appends, Bob in binary frames behind a track header, interleaved.
    let (alice, bob) = (pcm(fox, 24_000, 1, 1.0), pcm(dice, 24_000, 1, 1.0));
    let (mut a, mut b) = (alice.chunks(960), bob.chunks(960));
    loop {
        let (ca, cb) = (a.next(), b.next());
        if ca.is_none() && cb.is_none() {
            break;
        }
        if let Some(chunk) = ca {
            c.append(chunk, Some("alice")).await;
        }
        if let Some(chunk) = cb {
            let mut frame = vec![3u8];
            frame.extend_from_slice(b"bob");
            frame.extend_from_slice(chunk);
            c.ws.send(Message::Binary(frame.into())).await.unwrap();
        }
    }
    // Both tracks' speech ends; every committed item is transcribed.
    while c.of("input_audio_buffer.speech_stopped").len() < 2
        || c.of("input_audio_buffer.committed").len() < 2
    {
        c.next().await;
    }
    let committed = c.of("input_audio_buffer.committed");
    let completed = c.transcripts(committed.len()).await;

    let said = |who: &str| -> Vec<Value> {
        completed
            .iter()
            .filter(|e| e["speaker"] == who)
            .cloned()
            .collect()
    };
    for e in &completed {
        assert_eq!(e["aigw_track"], e["speaker"], "{e}");
    }
    assert_heard(&joined(&said("alice")), &["quick", "fox", "lazy", "dog"]);
    assert_heard(&joined(&said("bob")), &["master", "dice"]);
    let segments = c.of("conversation.item.input_audio_transcription.segment");
    assert!(segments.iter().any(|s| s["speaker"] == "alice"));
    assert!(segments.iter().any(|s| s["speaker"] == "bob"));
    for s in &segments {
        assert!(
            s["end"].as_f64().unwrap() >= s["start"].as_f64().unwrap(),
            "{s}"
        );
    }
}

/// The error event answering the last event sent.
async fn error_for(c: &mut Client, sent: Value) -> Value {
    c.send(sent).await;
    c.until("error").await["error"].clone()
}

#[tokio::test]
async fn malformed_events_get_error_events_and_the_connection_survives() {
    if fox().is_none() {
        return;
    }
    let addr = serve("").await;
    let mut c = Client::connect(&addr).await;
    c.ws.send(Message::Text("{not json".into())).await.unwrap();
    let e = c.until("error").await;
    assert_eq!(e["error"]["type"], "invalid_request_error");
    assert_eq!(e["error"]["code"], "invalid_json");
    let e = error_for(&mut c, json!([1, 2])).await;
    assert_eq!(e["code"], "invalid_json");
    let e = error_for(
        &mut c,
        json!({"type": "response.create", "event_id": "evt_7"}),
    )
    .await;
    assert_eq!(
        (e["param"].as_str(), e["event_id"].as_str()),
        (Some("type"), Some("evt_7"))
    );
    let e = error_for(
        &mut c,
        json!({"type": "input_audio_buffer.append", "audio": "%%%"}),
    )
    .await;
    assert_eq!(e["param"], "audio");
    let e = error_for(&mut c, json!({"type": "input_audio_buffer.append"})).await;
    assert_eq!(e["code"], "missing_required_parameter");
    let e = error_for(
        &mut c,
        json!({"type": "session.update", "session": {"input_audio_format": "g711_ulaw"}}),
    )
    .await;
    assert_eq!(e["param"], "session.input_audio_format");
    let e = error_for(&mut c, json!({"type": "session.update", "session": {"input_audio_transcription": {"model": "nope"}}})).await;
    assert_eq!(e["code"], "model_not_found");
    let e = error_for(
        &mut c,
        json!({"type": "input_audio_buffer.append", "audio": "AAAA", "aigw_track": 7}),
    )
    .await;
    assert_eq!(e["param"], "aigw_track");
    let e = error_for(
        &mut c,
        json!({"type": "session.update", "session": {"aigw_diarization": {"enabled": true}}}),
    )
    .await;
    assert_eq!(e["code"], "diarization_unavailable");
    // Still served, and the failed updates changed nothing.
    let s = c.update(json!({})).await;
    assert_eq!(s["session"]["input_audio_format"], "pcm16");
    assert!(
        s["session"]["input_audio_transcription"]["model"].is_null(),
        "{s}"
    );

    // Plain HTTP and other intents are refused OpenAI-style.
    let resp = reqwest::get(format!("http://{addr}/v1/realtime?intent=transcription"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("WebSocket"),
        "{body}"
    );
    let resp = reqwest::get(format!("http://{addr}/v1/realtime?intent=conversation"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
}

#[tokio::test]
async fn keys_by_header_or_subprotocol() {
    if fox().is_none() {
        return;
    }
    let addr = serve("[[auth.keys]]\nname = \"bot\"\nkey_env = \"TEST_CLIENT_KEY\"\n").await;
    let refused =
        tokio_tungstenite::connect_async(format!("ws://{addr}/v1/realtime?intent=transcription"))
            .await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 401),
        other => panic!("connected without a key: {other:?}"),
    }
    let bearer = format!("Bearer {KEY}");
    Client::connect_with(&addr, &[("authorization", &bearer)]).await;
    let protocols = format!("realtime, openai-insecure-api-key.{KEY}");
    let c = Client::connect_with(&addr, &[("sec-websocket-protocol", &protocols)]).await;
    drop(c);
}

#[tokio::test]
async fn concurrent_sessions() {
    let (Some(fox), Some(dice)) = (fox(), dice()) else {
        return;
    };
    let addr = serve("").await;
    let session = |clip: &'static [f32]| {
        let addr = addr.clone();
        async move {
            let mut c = Client::connect(&addr).await;
            c.update(json!({"turn_detection": null})).await;
            for chunk in pcm(clip, 24_000, 1, 0.2).chunks(9600) {
                c.append(chunk, None).await;
            }
            c.send(json!({"type": "input_audio_buffer.commit"})).await;
            joined(&c.transcripts(1).await)
        }
    };
    let texts = futures::future::join_all([session(fox), session(dice), session(fox)]).await;
    assert_heard(&texts[0], &["quick", "fox", "lazy", "dog"]);
    assert_heard(&texts[1], &["master", "dice", "party"]);
    assert_heard(&texts[2], &["quick", "fox", "lazy", "dog"]);
}

async fn metric(addr: &str, name: &str) -> f64 {
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .map_or(0.0, |v| v.parse().unwrap())
}

#[tokio::test]
async fn audio_seconds_are_budgeted_and_metered() {
    let Some(fox) = fox() else { return };
    let addr = serve(
        "[budgets]\ndefault_policy = \"listener\"\n\n[budgets.policies.listener]\naudio_secs = 6\n",
    )
    .await;
    let mut c = Client::connect_with(&addr, &[("x-session-id", "table-9")]).await;
    assert_eq!(metric(&addr, "aigw_realtime_sessions").await, 1.0);
    c.update(json!({"turn_detection": null})).await;
    let bytes = pcm(fox, 24_000, 1, 0.2);
    let secs = bytes.len() as f64 / 48_000.0;
    assert!((3.0..6.0).contains(&secs), "{secs}");
    for _ in 0..2 {
        for chunk in bytes.chunks(9600) {
            c.append(chunk, None).await;
        }
        c.send(json!({"type": "input_audio_buffer.commit"})).await;
    }
    // The first utterance fits and is charged; the second would pass the ceiling.
    let completed = c.transcripts(2).await;
    assert_eq!(completed.len(), 1);
    let failed = c.of("conversation.item.input_audio_transcription.failed");
    assert_eq!(
        failed[0]["error"]["code"], "insufficient_quota",
        "{failed:?}"
    );
    let metered = metric(&addr, "aigw_audio_seconds_total{model=\"whisper\"}").await;
    assert!((metered - secs).abs() < 0.05, "{metered} vs {secs}");
    drop(c);
    for _ in 0..50 {
        if metric(&addr, "aigw_realtime_sessions").await == 0.0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the session gauge did not go back to 0");
}

#[tokio::test]
async fn a_client_that_does_not_read_is_not_buffered_for() {
    if fox().is_none() {
        return;
    }
    let addr = serve("").await;
    let mut c = Client::connect(&addr).await;
    // Every malformed event earns an error event; never reading them, the client soon finds
    // the server has stopped reading too (its queue and the socket buffers are full).
    let mut sent = 0u64;
    let stalled = loop {
        let send = c.ws.send(Message::Text("{".into()));
        if tokio::time::timeout(Duration::from_millis(500), send)
            .await
            .is_err()
        {
            break true;
        }
        sent += 1;
        if sent == 2_000_000 {
            break false;
        }
    };
    assert!(
        stalled,
        "the server kept reading {sent} events without being read"
    );
    // Reading again, every error comes out (the one whose send timed out may still be on
    // its way), and the session still answers.
    for _ in 0..sent {
        let e = c.next().await;
        assert_eq!(e["error"]["code"], "invalid_json", "{e}");
        // Keep the test's memory flat too.
        c.events.clear();
    }
    c.send(json!({"type": "transcription_session.update", "session": {}}))
        .await;
    loop {
        let e = c.next().await;
        if e["type"] == "transcription_session.updated" {
            break;
        }
        assert_eq!(e["error"]["code"], "invalid_json", "{e}");
    }
    eprintln!("stalled after {sent} unread events");
}

#[tokio::test(start_paused = true)]
async fn idle_connections_are_closed() {
    if fox().is_none() {
        return;
    }
    let addr = serve("").await;
    let mut c = Client::connect(&addr).await;
    // No client message for the idle timeout (60 s, on the paused clock): a close frame.
    let msg = loop {
        match c.ws.next().await {
            Some(Ok(Message::Text(_))) => continue,
            other => break other,
        }
    };
    match msg {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.reason.as_str(), "idle timeout"),
        other => panic!("expected a close frame: {other:?}"),
    }
}
