//! The openai Python SDK's realtime client (`client.realtime.connect`, openai[realtime])
//! against the server: a transcription session updated, audio appended and committed, the
//! transcript read from its typed events. Needs `AIGW_TEST_PYTHON` (set by `scripts/test`).

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

#[tokio::test]
async fn openai_python_sdk_realtime_client() {
    let Some(clip) = fox() else { return };
    let Some(python) = locate("AIGW_TEST_PYTHON") else {
        return;
    };
    let addr = serve("[[auth.keys]]\nname = \"sdk\"\nkey_env = \"TEST_CLIENT_KEY\"\n").await;
    let dir = tempfile::tempdir().unwrap();
    let audio = dir.path().join("clip.pcm");
    std::fs::write(&audio, pcm(clip, 24_000, 1, 0.3)).unwrap();
    let output = tokio::process::Command::new(python)
        .arg("-c")
        .arg(SCRIPT)
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
    let out: Value = serde_json::from_str(stdout.trim()).unwrap();
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
