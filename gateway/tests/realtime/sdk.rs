//! The openai Python SDK's realtime clients (openai[realtime]) against the server: the GA
//! async client (`client.realtime.connect`, a `session.update`, audio appended and committed
//! by hand) and the beta sync client (`client.beta.realtime.connect`, a
//! `transcription_session.update` with server VAD, audio streamed in 20 ms chunks); the
//! transcript read from their typed events. Needs `AIGW_TEST_PYTHON` (set by `scripts/test`).

use serde_json::Value;

use crate::{KEY, assert_heard, fox, pcm, serve};

const SCRIPT: &str = r#"
import asyncio, base64, json, os, sys
from openai import AsyncOpenAI

async def main():
    client = AsyncOpenAI(base_url=os.environ["AIGW_BASE_URL"], api_key=os.environ["AIGW_KEY"])
    audio = open(os.environ["AIGW_AUDIO"], "rb").read()
    seen = []
    async with client.realtime.connect(extra_query={"intent": "transcription"}) as conn:
        await conn.session.update(session={
            "type": "transcription",
            "audio": {"input": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "transcription": {"model": "whisper", "language": "en"},
                "turn_detection": None,
            }},
        })
        for i in range(0, len(audio), 9600):
            await conn.input_audio_buffer.append(audio=base64.b64encode(audio[i:i + 9600]).decode())
        await conn.input_audio_buffer.commit()
        async for event in conn:
            seen.append(event.type)
            if event.type == "error":
                sys.exit(f"error event: {event}")
            if event.type == "conversation.item.input_audio_transcription.completed":
                print(json.dumps({"transcript": event.transcript, "item_id": event.item_id, "seen": seen}))
                return

asyncio.run(asyncio.wait_for(main(), 60))
"#;

const BETA_SCRIPT: &str = r#"
import base64, json, os, sys, time
from openai import OpenAI

# The beta client always dials wss:// unless given the WebSocket base URL.
ws_url = os.environ["AIGW_BASE_URL"].replace("http://", "ws://", 1)
client = OpenAI(base_url=os.environ["AIGW_BASE_URL"], api_key=os.environ["AIGW_KEY"], websocket_base_url=ws_url)
audio = open(os.environ["AIGW_AUDIO"], "rb").read()
seen = []
with client.beta.realtime.connect(model="whisper", extra_query={"intent": "transcription"}) as conn:
    conn.transcription_session.update(session={
        "input_audio_format": "pcm16",
        "input_audio_transcription": {"model": "whisper"},
        "turn_detection": {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 500},
    })
    for i in range(0, len(audio), 960):
        conn.input_audio_buffer.append(audio=base64.b64encode(audio[i:i + 960]).decode())
    deadline = time.monotonic() + 60
    for event in conn:
        seen.append(event.type)
        if event.type == "error":
            sys.exit(f"error event: {event}")
        if event.type == "conversation.item.input_audio_transcription.completed":
            print(json.dumps({"transcript": event.transcript, "item_id": event.item_id, "seen": seen}))
            break
        if time.monotonic() > deadline:
            sys.exit(f"no transcript; seen {seen}")
"#;

/// Runs `script` against a fresh server with the fox clip (plus `pad_s` of silence) as
/// 24 kHz PCM16; returns its JSON line.
async fn run_sdk(script: &str, pad_s: f64) -> Option<Value> {
    let clip = fox()?;
    let python = locate("AIGW_TEST_PYTHON")?;
    let addr = serve("[[auth.keys]]\nname = \"sdk\"\nkey_env = \"TEST_CLIENT_KEY\"\n").await;
    let dir = tempfile::tempdir().unwrap();
    let audio = dir.path().join("clip.pcm");
    std::fs::write(&audio, pcm(clip, 24_000, 1, pad_s)).unwrap();
    let output = tokio::process::Command::new(python)
        .arg("-c")
        .arg(script)
        .env("AIGW_BASE_URL", format!("http://{addr}/v1"))
        .env("AIGW_KEY", KEY)
        .env("AIGW_AUDIO", &audio)
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    Some(serde_json::from_str(stdout.trim()).unwrap())
}

#[tokio::test]
async fn openai_python_sdk_beta_realtime_client_with_server_vad() {
    let Some(out) = run_sdk(BETA_SCRIPT, 1.0).await else {
        return;
    };
    let seen = out["seen"].to_string();
    for kind in [
        "transcription_session.updated",
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
    ] {
        assert!(seen.contains(kind), "{kind} not in {seen}");
    }
    assert_heard(
        out["transcript"].as_str().unwrap(),
        &["quick", "fox", "lazy", "dog"],
    );
}

#[tokio::test]
async fn openai_python_sdk_realtime_client() {
    let Some(out) = run_sdk(SCRIPT, 0.3).await else {
        return;
    };
    assert!(
        out["item_id"].as_str().unwrap().starts_with("item_"),
        "{out}"
    );
    let seen = out["seen"].to_string();
    for kind in ["session.updated", "input_audio_buffer.committed"] {
        assert!(seen.contains(kind), "{kind} not in {seen}");
    }
    assert_heard(
        out["transcript"].as_str().unwrap(),
        &["quick", "fox", "lazy", "dog"],
    );
}

/// The path in `var`, or `None` (after saying so) when the tool is not installed here.
fn locate(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(path) if !path.is_empty() => Some(path),
        _ => {
            assert!(
                std::env::var("AIGW_REQUIRE_TEST_TOOLS").is_err(),
                "AIGW_REQUIRE_TEST_TOOLS is set but {var} is not"
            );
            eprintln!("skipping: {var} not set (scripts/test installs and sets it)");
            None
        }
    }
}
