//! Every error is OpenAI-shaped with the right status.

use serde_json::json;

use crate::{CLIENT_KEY, Gateway, chat_body, expect_error};

#[tokio::test]
async fn malformed_json_is_400() {
    let gw = Gateway::start().await;
    let resp = gw
        .client
        .post(format!("{}/v1/chat/completions", gw.url))
        .header("content-type", "application/json")
        .body("{\"model\": \"echo\", ")
        .send()
        .await
        .unwrap();
    let err = expect_error(resp, 400).await;
    assert_eq!(err["type"], "invalid_request_error");
    assert!(err["message"].as_str().unwrap().contains("parse"));
}

#[tokio::test]
async fn wrong_field_type_names_the_param() {
    let gw = Gateway::start().await;
    let mut body = chat_body("echo", "hi");
    body["temperature"] = json!("warm");
    let err = expect_error(gw.post("/v1/chat/completions", &body).await, 400).await;
    assert_eq!(err["param"], "temperature");

    let body = json!({"model": "echo", "messages": [{"role": "narrator", "content": "x"}]});
    let err = expect_error(gw.post("/v1/chat/completions", &body).await, 400).await;
    assert_eq!(err["param"], "messages[0].role");

    let body = json!({"model": "echo"});
    let err = expect_error(gw.post("/v1/chat/completions", &body).await, 400).await;
    assert!(
        err["message"].as_str().unwrap().contains("messages"),
        "{err}"
    );

    let mut body = chat_body("echo", "hi");
    body["top_p"] = json!(1.5);
    let err = expect_error(gw.post("/v1/chat/completions", &body).await, 400).await;
    assert_eq!(err["param"], "top_p");
    assert!(
        gw.mock.mock.seen.lock().unwrap().bodies.is_empty(),
        "nothing reached the upstream"
    );
}

#[tokio::test]
async fn unknown_model_is_404() {
    let gw = Gateway::start().await;
    let err = expect_error(
        gw.post("/v1/chat/completions", &chat_body("gpt-9", "hi"))
            .await,
        404,
    )
    .await;
    assert_eq!(err["code"], "model_not_found");
    assert_eq!(err["param"], "model");
    expect_error(gw.get("/v1/models/gpt-9").await, 404).await;
}

#[tokio::test]
async fn body_over_the_limit_is_413() {
    let gw = Gateway::start().await;
    let big = "x".repeat(70_000);
    let err = expect_error(
        gw.post("/v1/chat/completions", &chat_body("echo", &big))
            .await,
        413,
    )
    .await;
    assert_eq!(err["code"], "request_too_large");
}

#[tokio::test]
async fn keys_are_required_when_configured() {
    let gw = Gateway::start_with(
        "\n[[auth.keys]]\nname = \"table\"\nkey_env = \"TEST_CLIENT_KEY\"\nmodels = [\"echo\"]\n",
    )
    .await;
    let url = format!("{}/v1/chat/completions", gw.url);
    let body = chat_body("echo", "hi");
    let err = expect_error(gw.client.post(&url).json(&body).send().await.unwrap(), 401).await;
    assert_eq!(err["code"], "invalid_api_key");
    let resp = gw
        .client
        .post(&url)
        .bearer_auth("sk-wrong")
        .json(&body)
        .send()
        .await
        .unwrap();
    expect_error(resp, 401).await;
    let resp = gw
        .client
        .post(&url)
        .bearer_auth(CLIENT_KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // A model outside the key's list does not exist for it.
    let resp = gw
        .client
        .post(&url)
        .bearer_auth(CLIENT_KEY)
        .json(&chat_body("tools", "hi"))
        .send()
        .await
        .unwrap();
    expect_error(resp, 404).await;
    let list: serde_json::Value = gw
        .client
        .get(format!("{}/v1/models", gw.url))
        .bearer_auth(CLIENT_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    // Operational endpoints stay open.
    assert_eq!(gw.get("/health").await.status(), 200);
}

#[tokio::test]
async fn upstream_client_errors_pass_through() {
    let gw = Gateway::start().await;
    let err = expect_error(
        gw.post("/v1/chat/completions", &chat_body("400", "hi"))
            .await,
        400,
    )
    .await;
    assert_eq!(err["message"], "Invalid 'messages': bad shape.");
    let err = expect_error(
        gw.post("/v1/chat/completions", &chat_body("422", "hi"))
            .await,
        422,
    )
    .await;
    assert_eq!(err["message"], "Unprocessable tool schema.");
    let err = expect_error(
        gw.post("/v1/chat/completions", &chat_body("401", "hi"))
            .await,
        401,
    )
    .await;
    assert_eq!(err["code"], "invalid_api_key");
    let resp = gw
        .post("/v1/chat/completions", &chat_body("429", "hi"))
        .await;
    assert_eq!(resp.headers()["retry-after"], "7");
    let err = expect_error(resp, 429).await;
    assert_eq!(err["code"], "rate_limit_exceeded");
}

#[tokio::test]
async fn upstream_server_errors_are_502_without_internals() {
    let gw = Gateway::start().await;
    for model in ["500", "503", "garbage"] {
        let err = expect_error(
            gw.post("/v1/chat/completions", &chat_body(model, "hi"))
                .await,
            502,
        )
        .await;
        assert!(
            !err["message"].as_str().unwrap().contains("10.1.2.3"),
            "{err}"
        );
        assert_eq!(err["type"], "api_error");
    }
    // Streams that fail before their first byte are plain error responses too.
    let mut body = chat_body("503", "hi");
    body["stream"] = json!(true);
    expect_error(gw.post("/v1/chat/completions", &body).await, 502).await;
}

#[tokio::test]
async fn unreachable_upstream_is_502_and_slow_upstream_504() {
    let gw = Gateway::start().await;
    let err = expect_error(
        gw.post("/v1/chat/completions", &chat_body("unreachable", "hi"))
            .await,
        502,
    )
    .await;
    assert_eq!(err["code"], "upstream_error");
    let err = expect_error(
        gw.post("/v1/chat/completions", &chat_body("slow", "hi"))
            .await,
        504,
    )
    .await;
    assert_eq!(err["code"], "upstream_timeout");
    let mut body = chat_body("slow", "hi");
    body["stream"] = json!(true);
    expect_error(gw.post("/v1/chat/completions", &body).await, 504).await;
}

#[tokio::test]
async fn unknown_routes_and_methods_are_json() {
    let gw = Gateway::start().await;
    let err = expect_error(gw.get("/v1/nothing-here").await, 404).await;
    assert_eq!(err["code"], "unknown_url");
    expect_error(gw.get("/v1/chat/completions").await, 405).await;
}

#[tokio::test]
async fn metrics_count_errors_by_type() {
    let gw = Gateway::start().await;
    gw.post("/v1/chat/completions", &chat_body("500", "hi"))
        .await;
    let metrics = gw.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics
            .contains(r#"aigw_errors_total{route="/v1/chat/completions",type="upstream_5xx"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"aigw_requests_total{model="500",route="/v1/chat/completions",status="502"} 1"#
        ),
        "{metrics}"
    );
}
