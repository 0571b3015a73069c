//! Azure OpenAI through the gateway, against a mock that answers with the recorded wire
//! fixtures of `tests/fixtures/azure/`: deployment URLs with `api-version`, the `api-key`
//! header, and the content filter made OpenAI-shaped.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use super::{Gateway, UPSTREAM_KEY, chat_body, expect_error, sse_data};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/azure");

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{FIXTURES}/{name}")).unwrap()
}

/// One request the mock received: deployment, `api-version`, headers, body.
type Request = (String, Option<String>, HeaderMap, Value);

#[derive(Clone, Default)]
struct Seen {
    requests: Arc<Mutex<Vec<Request>>>,
}

async fn chat(
    State(seen): State<Seen>,
    Path(deployment): Path<String>,
    Query(query): Query<Vec<(String, String)>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let version = query
        .iter()
        .find(|(k, _)| k == "api-version")
        .map(|(_, v)| v.clone());
    seen.requests
        .lock()
        .unwrap()
        .push((deployment.clone(), version, headers, body.clone()));
    let stream = body["stream"] == true;
    let (status, ct, text) = match (deployment.as_str(), stream) {
        ("gm-clean", false) => (200, "application/json", fixture("completion.json")),
        ("gm-clean", true) => (200, "text/event-stream", fixture("stream.sse")),
        ("gm-strict", false) => (200, "application/json", fixture("completion_filtered.json")),
        ("gm-strict", true) => (200, "text/event-stream", fixture("stream_filtered.sse")),
        ("gm-prompt-filter", _) => (400, "application/json", fixture("prompt_filtered.json")),
        _ => (404, "application/json", "{}".to_string()),
    };
    (
        StatusCode::from_u16(status).unwrap(),
        [("content-type", ct)],
        text,
    )
        .into_response()
}

async fn models() -> Json<Value> {
    Json(json!({"data": [], "object": "list"}))
}

async fn start_azure() -> (SocketAddr, Seen) {
    let seen = Seen::default();
    let app = Router::new()
        .route(
            "/openai/deployments/{deployment}/chat/completions",
            post(chat),
        )
        .route("/openai/models", get(models))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, seen)
}

async fn gateway(addr: SocketAddr) -> Gateway {
    Gateway::start_toml(&format!(
        r#"
[server]
listen = "127.0.0.1:0"

[providers.azure]
kind = "azure"
base_url = "http://{addr}"
api_version = "2024-10-21"
api_key_env = "TEST_UPSTREAM_KEY"

[[models]]
name = "narrator"
provider = "azure"
upstream_model = "gm-clean"

[[models]]
name = "strict"
provider = "azure"
upstream_model = "gm-strict"

[[models]]
name = "filtered-prompt"
provider = "azure"
upstream_model = "gm-prompt-filter"
"#
    ))
    .await
}

#[tokio::test]
async fn calls_deployment_urls_with_api_version_and_api_key() {
    let (addr, seen) = start_azure().await;
    let gw = gateway(addr).await;
    let resp = gw
        .post("/v1/chat/completions", &chat_body("narrator", "A room?"))
        .await;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "The innkeeper nods and slides you a key."
    );
    assert_eq!(v["model"], "narrator");
    assert_eq!(v["usage"]["total_tokens"], 31);
    let requests = seen.requests.lock().unwrap();
    let (deployment, version, headers, body) = &requests[0];
    assert_eq!(deployment, "gm-clean");
    assert_eq!(version.as_deref(), Some("2024-10-21"));
    assert_eq!(headers["api-key"], UPSTREAM_KEY);
    assert!(headers.get("authorization").is_none());
    assert_eq!(body["messages"][0]["content"], "A room?");
}

#[tokio::test]
async fn streams_drop_annotation_frames() {
    let (addr, _) = start_azure().await;
    let gw = gateway(addr).await;
    let mut body = chat_body("narrator", "A room?");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let data = sse_data(gw.post("/v1/chat/completions", &body).await).await;
    assert_eq!(data.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    // No frame with empty choices except the usage chunk, and every frame named by alias.
    for c in &chunks {
        assert_eq!(c["model"], "narrator", "{c}");
        assert!(
            !c["choices"].as_array().unwrap().is_empty() || c["usage"].is_object(),
            "{c}"
        );
    }
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "The innkeeper nods.");
    assert_eq!(chunks.last().unwrap()["usage"]["completion_tokens"], 4);
}

#[tokio::test]
async fn a_filtered_stream_ends_with_content_filter_once() {
    let (addr, _) = start_azure().await;
    let gw = gateway(addr).await;
    let mut body = chat_body("strict", "Fight!");
    body["stream"] = json!(true);
    let data = sse_data(gw.post("/v1/chat/completions", &body).await).await;
    assert_eq!(data.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let finishes: Vec<&Value> = chunks
        .iter()
        .map(|c| &c["choices"][0]["finish_reason"])
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finishes, [&json!("content_filter")], "{chunks:?}");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "The orc raises");
}

#[tokio::test]
async fn filtered_output_and_filtered_prompt_are_400_content_filter() {
    let (addr, _) = start_azure().await;
    let gw = gateway(addr).await;
    let err = expect_error(
        gw.post("/v1/chat/completions", &chat_body("strict", "Fight!"))
            .await,
        400,
    )
    .await;
    assert_eq!(err["code"], "content_filter", "{err}");
    assert!(
        err["message"].as_str().unwrap().contains("violence"),
        "{err}"
    );

    let resp = gw
        .post("/v1/chat/completions", &chat_body("filtered-prompt", "…"))
        .await;
    assert_eq!(resp.headers()["x-aigw-attempts"], "1");
    let err = expect_error(resp, 400).await;
    assert_eq!(err["code"], "content_filter", "{err}");
    assert_eq!(err["param"], "prompt");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("content management policy"),
        "{err}"
    );
}
