//! Requests and tokens per minute per key: OpenAI's rate-limit headers, 429s with
//! `Retry-After` once a key is over either limit.

use std::time::Duration;

use axum::routing::post;
use axum::{Json, Router};
use serde_json::{Value, json};

use super::{CLIENT_KEY, Gateway, chat_body, expect_error};

async fn chat(Json(body): Json<Value>) -> Json<Value> {
    Json(
        json!({"id": "c1", "object": "chat.completion", "created": 1, "model": body["model"],
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}}),
    )
}

async fn gateway(limits: &str) -> Gateway {
    let app = Router::new().route("/v1/chat/completions", post(chat));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Gateway::start_toml(&format!(
        r#"
[server]
listen = "127.0.0.1:0"

[[auth.keys]]
name = "table"
key_env = "TEST_CLIENT_KEY"
{limits}

[providers.up]
kind = "openai"
base_url = "http://{addr}/v1"

[[models]]
name = "narrator"
provider = "up"
"#
    ))
    .await
}

async fn ask(gw: &Gateway) -> reqwest::Response {
    let resp = gw
        .client
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth(CLIENT_KEY)
        .json(&chat_body("narrator", "hi"))
        .send()
        .await
        .unwrap();
    // Token debits land just after the answer.
    tokio::time::sleep(Duration::from_millis(30)).await;
    resp
}

fn header(resp: &reqwest::Response, name: &str) -> String {
    resp.headers()[name].to_str().unwrap().to_string()
}

#[tokio::test]
async fn requests_per_minute() {
    let gw = gateway("requests_per_minute = 3").await;
    for left in ["2", "1", "0"] {
        let resp = ask(&gw).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(header(&resp, "x-ratelimit-limit-requests"), "3");
        assert_eq!(header(&resp, "x-ratelimit-remaining-requests"), left);
        assert!(header(&resp, "x-ratelimit-reset-requests").ends_with('s'));
    }
    let resp = ask(&gw).await;
    let retry: u64 = header(&resp, "retry-after").parse().unwrap();
    assert!((1..=20).contains(&retry), "{retry}");
    assert_eq!(header(&resp, "x-ratelimit-remaining-requests"), "0");
    let err = expect_error(resp, 429).await;
    assert_eq!(err["type"], "rate_limit_error");
    assert_eq!(err["code"], "rate_limit_exceeded");
}

#[tokio::test]
async fn tokens_per_minute() {
    // 9 tokens a request against 20 a minute: two requests fit the burst, the third is let
    // in (the key is not yet in debt) and puts it in debt, the fourth waits.
    let gw = gateway("tokens_per_minute = 20").await;
    for _ in 0..3 {
        let resp = ask(&gw).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(header(&resp, "x-ratelimit-limit-tokens"), "20");
    }
    let resp = ask(&gw).await;
    assert!(resp.headers().get("retry-after").is_some());
    let err = expect_error(resp, 429).await;
    assert!(err["message"].as_str().unwrap().contains("tokens"), "{err}");
}
