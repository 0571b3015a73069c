//! Chat completions: plain, n > 1, tools, passthrough, streaming.

use serde_json::{Value, json};

use crate::{Gateway, UPSTREAM_KEY, chat_body, sse_data};

#[tokio::test]
async fn plain_completion_is_relabelled_and_metered() {
    let gw = Gateway::start().await;
    let resp = gw
        .post(
            "/v1/chat/completions",
            &chat_body("echo", "hello there table"),
        )
        .await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().contains_key("x-request-id"));
    let overhead: f64 = resp.headers()["x-aigw-overhead-ms"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(overhead >= 0.0);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "echo", "the alias, not the upstream's name");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "echo: hello there table"
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["usage"]["prompt_tokens"], 3);
    assert_eq!(body["usage"]["total_tokens"], 7);
    // Fields the gateway does not model come back untouched.
    assert_eq!(body["service_tier"], "default");

    let upstream = gw.mock.last_body();
    assert_eq!(upstream["model"], "mock-echo");
    let headers = gw.mock.last_headers();
    assert_eq!(headers["authorization"], format!("Bearer {UPSTREAM_KEY}"));
    assert_eq!(headers["x-tenant-tag"], "tests");
    assert!(
        headers.contains_key("x-request-id"),
        "request id forwarded upstream"
    );

    let metrics = gw.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains(
            r#"aigw_requests_total{model="echo",route="/v1/chat/completions",status="200"} 1"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"aigw_tokens_total{direction="out",model="echo"} 4"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn request_id_is_kept_when_given() {
    let gw = Gateway::start().await;
    let resp = gw
        .client
        .post(format!("{}/v1/chat/completions", gw.url))
        .header("x-request-id", "table-7-turn-3")
        .json(&chat_body("echo", "hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "table-7-turn-3");
    assert_eq!(gw.mock.last_headers()["x-request-id"], "table-7-turn-3");
}

#[tokio::test]
async fn every_request_field_and_unknown_fields_reach_the_upstream() {
    let gw = Gateway::start().await;
    let body = json!({
        "model": "tools",
        "messages": [
            {"role": "developer", "content": "You are the GM."},
            {"role": "user", "content": [{"type": "text", "text": "roll"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}]},
            {"role": "assistant", "tool_calls": [{"id": "call_0", "type": "function", "function": {"name": "roll_dice", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "call_0", "content": "4"}
        ],
        "tools": [{"type": "function", "function": {"name": "roll_dice", "description": "Roll", "parameters": {"type": "object", "properties": {"sides": {"type": "integer"}}}, "strict": true}}],
        "tool_choice": "required",
        "parallel_tool_calls": false,
        "response_format": {"type": "json_object"},
        "n": 1, "stop": "END", "seed": 42, "temperature": 0.2, "top_p": 0.9,
        "max_tokens": 50, "max_completion_tokens": 60, "logprobs": true, "top_logprobs": 2,
        "user": "player-1", "metadata": {"campaign": "ember"},
        "reasoning_effort": "low", "x_vendor": {"nested": [1, 2]}
    });
    let resp = gw.post("/v1/chat/completions", &body).await;
    assert_eq!(resp.status(), 200);
    let out: Value = resp.json().await.unwrap();
    let call = &out["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["id"], "call_abc");
    assert_eq!(call["function"]["name"], "roll_dice");
    assert_eq!(call["function"]["arguments"], "{\"sides\":20}");
    assert_eq!(out["choices"][0]["finish_reason"], "tool_calls");

    let mut expected = body.clone();
    expected["model"] = json!("mock-tools");
    assert_eq!(
        gw.mock.last_body(),
        expected,
        "forwarded verbatim apart from the model name"
    );
}

#[tokio::test]
async fn n_greater_than_one() {
    let gw = Gateway::start().await;
    let mut body = chat_body("echo", "two ways");
    body["n"] = json!(2);
    let out: Value = gw
        .post("/v1/chat/completions", &body)
        .await
        .json()
        .await
        .unwrap();
    let choices = out["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2);
    assert_eq!(choices[1]["index"], 1);

    body["stream"] = json!(true);
    let events = sse_data(gw.post("/v1/chat/completions", &body).await).await;
    let indices: std::collections::BTreeSet<u64> = events
        .iter()
        .filter(|d| *d != "[DONE]")
        .flat_map(|d| {
            let v: Value = serde_json::from_str(d).unwrap();
            v["choices"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["index"].as_u64().unwrap())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(indices, [0, 1].into());
}

fn parse_chunks(events: &[String]) -> Vec<Value> {
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "stream ends with [DONE]"
    );
    events[..events.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

#[tokio::test]
async fn streaming_with_usage() {
    let gw = Gateway::start().await;
    let mut body = chat_body("echo", "stream me please");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let resp = gw.post("/v1/chat/completions", &body).await;
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let chunks = parse_chunks(&sse_data(resp).await);
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk" && c["model"] == "echo")
    );
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "echo: stream me please");
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]), "usage chunk has empty choices");
    assert_eq!(last["usage"]["prompt_tokens"], 3);
    assert_eq!(last["usage"]["completion_tokens"], 4);
    assert_eq!(
        chunks.iter().filter(|c| c.get("usage").is_some()).count(),
        1,
        "usage only on the final chunk"
    );
}

#[tokio::test]
async fn streaming_without_usage_hides_the_usage_chunk_but_still_meters() {
    let gw = Gateway::start().await;
    let mut body = chat_body("echo", "quiet stream");
    body["stream"] = json!(true);
    let chunks = parse_chunks(&sse_data(gw.post("/v1/chat/completions", &body).await).await);
    assert!(chunks.iter().all(|c| c.get("usage").is_none()));
    assert!(
        chunks
            .iter()
            .all(|c| !c["choices"].as_array().unwrap().is_empty())
    );
    assert_eq!(
        gw.mock.last_body()["stream_options"]["include_usage"],
        true,
        "gateway asks for usage"
    );
    // Tokens are recorded when the stream ends, which is just after the client sees [DONE].
    let mut metrics = String::new();
    for _ in 0..50 {
        metrics = gw.get("/metrics").await.text().await.unwrap();
        if metrics.contains(r#"aigw_tokens_total{direction="out",model="echo"} 3"#) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        metrics.contains(r#"aigw_tokens_total{direction="out",model="echo"} 3"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("aigw_time_to_first_token_seconds_count{model=\"echo\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn streaming_tool_calls_pass_through_as_fragments() {
    let gw = Gateway::start().await;
    let mut body = chat_body("tools", "roll a d20");
    body["stream"] = json!(true);
    body["tools"] = json!([{"type": "function", "function": {"name": "roll_dice"}}]);
    let chunks = parse_chunks(&sse_data(gw.post("/v1/chat/completions", &body).await).await);
    let calls: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].get(0))
        .collect();
    assert_eq!(calls.len(), 3);
    assert_eq!(calls[0]["id"], "call_abc");
    assert_eq!(calls[0]["function"]["name"], "roll_dice");
    assert!(
        calls[1].get("id").is_none(),
        "id only on the first fragment"
    );
    let args: String = calls
        .iter()
        .filter_map(|c| c["function"]["arguments"].as_str())
        .collect();
    assert_eq!(args, "{\"sides\":20}");
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "tool_calls"
    );
}

#[tokio::test]
async fn error_after_the_stream_started_is_a_final_error_event() {
    let gw = Gateway::start().await;
    let mut body = chat_body("midstream-fail", "one two three four");
    body["stream"] = json!(true);
    let resp = gw.post("/v1/chat/completions", &body).await;
    assert_eq!(resp.status(), 200, "committed before the failure");
    let events = sse_data(resp).await;
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert!(last["error"]["message"].is_string(), "{last}");
    assert!(!events.iter().any(|e| e == "[DONE]"));
    assert!(events.len() >= 3, "content chunks came before the error");
}

#[tokio::test]
async fn client_hanging_up_mid_stream_settles_the_request() {
    use futures::StreamExt;
    let gw = Gateway::start().await;
    let mut body = chat_body(
        "slowstream",
        "a long story that the client will not wait for",
    );
    body["stream"] = json!(true);
    let t0 = std::time::Instant::now();
    let resp = gw.post("/v1/chat/completions", &body).await;
    let mut bytes = resp.bytes_stream();
    assert!(bytes.next().await.is_some(), "the stream started");
    // The upstream paces its 12 events 150 ms apart: chunks are re-emitted as they arrive,
    // not after the upstream has finished.
    assert!(
        t0.elapsed() < std::time::Duration::from_millis(1000),
        "{:?}",
        t0.elapsed()
    );
    drop(bytes);
    // The gateway notices the hang-up, drops the upstream stream and records the request.
    let settled =
        r#"aigw_request_duration_seconds_count{model="slowstream",route="/v1/chat/completions"} 1"#;
    let mut metrics = String::new();
    for _ in 0..100 {
        metrics = gw.get("/metrics").await.text().await.unwrap();
        if metrics.contains(settled) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(metrics.contains(settled), "{metrics}");
    // Only the /metrics request itself is in flight.
    assert!(metrics.contains("aigw_requests_in_flight 1\n"), "{metrics}");
}
