//! The OpenAI-compatible provider against recorded wire formats of the servers it fronts
//! (`tests/fixtures/openai/`): OpenAI's streamed tool calls, vLLM's and llama.cpp's streams,
//! each with its own additions around the chunk format.

use std::net::SocketAddr;

use axum::Json;
use axum::Router;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

use super::{Gateway, sse_data};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/openai");

async fn replay(Json(body): Json<Value>) -> Response {
    let file = match body["model"].as_str() {
        Some("fx-openai-tools") => "openai_tool_stream.sse",
        Some("fx-vllm") => "vllm_stream.sse",
        Some("fx-llamacpp") => "llamacpp_stream.sse",
        _ => return (axum::http::StatusCode::NOT_FOUND, "no fixture").into_response(),
    };
    let text = std::fs::read_to_string(format!("{FIXTURES}/{file}")).unwrap();
    ([("content-type", "text/event-stream")], text).into_response()
}

async fn gateway() -> Gateway {
    let app = Router::new().route("/v1/chat/completions", post(replay));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Gateway::start_toml(&format!(
        r#"
[server]
listen = "127.0.0.1:0"

[providers.fx]
kind = "openai"
base_url = "http://{addr}/v1"

[[models]]
name = "dm"
provider = "fx"
upstream_model = "fx-openai-tools"

[[models]]
name = "vllm"
provider = "fx"
upstream_model = "fx-vllm"

[[models]]
name = "llamacpp"
provider = "fx"
upstream_model = "fx-llamacpp"
"#
    ))
    .await
}

/// Streams `alias` and returns the chunks (without `[DONE]`, which must end the stream).
async fn stream(gw: &Gateway, alias: &str, include_usage: bool) -> Vec<Value> {
    let body = json!({
        "model": alias,
        "messages": [{"role": "user", "content": "Roll two d20."}],
        "stream": true,
        "stream_options": {"include_usage": include_usage},
    });
    let resp = gw.post("/v1/chat/completions", &body).await;
    assert_eq!(resp.status(), 200);
    let data = sse_data(resp).await;
    assert_eq!(data.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    for c in &chunks {
        assert_eq!(c["model"], alias, "{c}");
        assert_eq!(c["object"], "chat.completion.chunk");
    }
    chunks
}

fn text(chunks: &[Value]) -> String {
    chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect()
}

fn usage_chunks(chunks: &[Value]) -> Vec<&Value> {
    chunks.iter().filter(|c| c["usage"].is_object()).collect()
}

#[tokio::test]
async fn openai_tool_call_stream_passes_through() {
    let gw = gateway().await;
    let chunks = stream(&gw, "dm", true).await;
    let calls: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].get(0))
        .collect();
    assert_eq!(calls.len(), 5);
    assert_eq!(calls[0]["id"], "call_Fz8n2mYp0QhL4tA1Ce7V9xKd");
    assert_eq!(calls[0]["function"]["name"], "roll_dice");
    for later in &calls[1..] {
        assert_eq!(later["index"], 0);
        assert!(later.get("id").is_none() && later["function"].get("name").is_none());
    }
    let args: String = calls
        .iter()
        .map(|c| c["function"]["arguments"].as_str().unwrap())
        .collect();
    let args: Value = serde_json::from_str(&args).unwrap();
    assert_eq!(args, json!({"sides": 20, "count": 2}));
    let finish: Vec<&Value> = chunks
        .iter()
        .map(|c| &c["choices"][0]["finish_reason"])
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finish, [&json!("tool_calls")]);
    // OpenAI's own fields pass through; the usage chunk (with its details) ends the stream.
    assert_eq!(chunks[0]["service_tier"], "default");
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["total_tokens"], 102);
    assert_eq!(last["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    assert_eq!(usage_chunks(&chunks).len(), 1);

    // Without include_usage the usage chunk the gateway asked for is not shown.
    let chunks = stream(&gw, "dm", false).await;
    assert!(usage_chunks(&chunks).is_empty());
    assert!(
        chunks
            .iter()
            .all(|c| !c["choices"].as_array().unwrap().is_empty())
    );
}

#[tokio::test]
async fn vllm_stream_passes_through() {
    let gw = gateway().await;
    let chunks = stream(&gw, "vllm", true).await;
    assert_eq!(text(&chunks), "The door creaks.");
    let finishing = chunks
        .iter()
        .find(|c| c["choices"][0]["finish_reason"] == "stop")
        .unwrap();
    assert!(finishing["choices"][0].get("stop_reason").is_some());
    assert_eq!(usage_chunks(&chunks).len(), 1);
    assert_eq!(chunks.last().unwrap()["usage"]["completion_tokens"], 4);
}

#[tokio::test]
async fn llamacpp_stream_with_usage_on_its_last_content_chunk() {
    let gw = gateway().await;
    let chunks = stream(&gw, "llamacpp", true).await;
    assert_eq!(text(&chunks), "Roll for initiative.");
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "stop");
    assert_eq!(last["usage"]["prompt_tokens"], 27);
    assert_eq!(last["timings"]["predicted_n"], 4);

    // Without include_usage the chunk stays (it finishes the choice) but loses its usage.
    let chunks = stream(&gw, "llamacpp", false).await;
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "stop");
    assert!(last["usage"].is_null(), "{last}");
    // Either way the tokens are counted, once per request.
    let metrics = gw.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains(r#"aigw_tokens_total{direction="in",model="llamacpp"} 54"#),
        "{metrics}"
    );
}
