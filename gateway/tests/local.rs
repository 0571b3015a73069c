//! The in-process models behind the HTTP surface: SmolLM2 chat and MiniLM embeddings, served
//! directly and through a second gateway that reaches this one as an upstream worker.
//! Needs `aigw models fetch --default`; skips without the weights unless
//! `AIGW_REQUIRE_MODELS=1`.

#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test harness"
)]

use aigw_gateway::config::Config;
use aigw_gateway::server;
use aigw_gateway::state::AppState;
use futures::StreamExt;
use serde_json::{Value, json};

fn models_present() -> bool {
    let dir = aigw_models::store::model_dir();
    let ok = aigw_models::catalog::Catalog::builtin()
        .defaults()
        .all(|e| aigw_models::store::resolve(e, &dir).is_ok_and(|r| r.is_present()));
    if !ok {
        assert!(
            std::env::var("AIGW_REQUIRE_MODELS").is_err(),
            "AIGW_REQUIRE_MODELS is set but the default models are missing in {}",
            dir.display()
        );
        eprintln!(
            "skipping: default models missing in {} (aigw models fetch --default)",
            dir.display()
        );
    }
    ok
}

async fn serve(config: Config) -> String {
    let state = AppState::new(config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(server::run(listener, state, std::future::pending()));
    url
}

const LOCAL: &str = r#"
[local]
max_batch = 8
max_queue = 4

[[local.models]]
name = "smol"
model = "smollm2-135m-instruct"

[[local.models]]
name = "minilm"
model = "all-minilm-l6-v2"
"#;

async fn local_server(toml: &str) -> Option<String> {
    if !models_present() {
        return None;
    }
    Some(serve(Config::parse(toml, &|_| None).unwrap()).await)
}

/// POSTs past the response cache: these tests are about the engines.
async fn post(url: &str, body: &Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(url)
        .header("x-aigw-cache", "off")
        .json(body)
        .send()
        .await
        .unwrap()
}

fn chat(model: &str, text: &str, max_tokens: u32) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": text}],
           "temperature": 0, "max_tokens": max_tokens})
}

async fn stream_text(resp: reqwest::Response) -> (String, Value) {
    use eventsource_stream::Eventsource;
    let mut events = resp.bytes_stream().eventsource();
    let mut text = String::new();
    let mut usage = Value::Null;
    while let Some(ev) = events.next().await {
        let data = ev.unwrap().data;
        if data == "[DONE]" {
            break;
        }
        let chunk: Value = serde_json::from_str(&data).unwrap();
        assert!(chunk.get("error").is_none(), "{chunk}");
        if let Some(t) = chunk["choices"][0]["delta"]["content"].as_str() {
            text.push_str(t);
        }
        if !chunk["usage"].is_null() {
            usage = chunk["usage"].clone();
        }
    }
    (text, usage)
}

#[tokio::test]
async fn streamed_text_equals_the_plain_answer() {
    let Some(url) = local_server(LOCAL).await else {
        return;
    };
    let body = chat("smol", "Name three colours.", 24);
    let plain: Value = post(&format!("{url}/v1/chat/completions"), &body)
        .await
        .json()
        .await
        .unwrap();
    let text = plain["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!text.is_empty());
    assert_eq!(plain["model"], "smol");
    let mut stream_body = body.clone();
    stream_body["stream"] = json!(true);
    stream_body["stream_options"] = json!({"include_usage": true});
    let (streamed, usage) =
        stream_text(post(&format!("{url}/v1/chat/completions"), &stream_body).await).await;
    assert_eq!(streamed, text);
    assert_eq!(usage, plain["usage"], "same usage both ways");
}

#[tokio::test]
async fn a_client_that_disconnects_cancels_its_sequence() {
    let Some(url) = local_server(LOCAL).await else {
        return;
    };
    let mut body = chat("smol", "Write a very long essay about the sea.", 4000);
    body["stream"] = json!(true);
    body["ignore_eos"] = json!(true);
    let resp = post(&format!("{url}/v1/chat/completions"), &body).await;
    assert_eq!(resp.status(), 200);
    let mut bytes = resp.bytes_stream();
    // The first chunk: the request reached the engine (queued or decoding; counted as
    // cancelled either way). Then the client goes away.
    bytes.next().await.unwrap().unwrap();
    drop(bytes);
    let metric = |text: &str, name: &str| -> Option<u64> {
        text.lines()
            .find(|l| l.starts_with(&format!("aigw_{name}{{")) && l.contains("\"smol\""))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    };
    let metrics = || async {
        reqwest::get(format!("{url}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    for _ in 0..200 {
        let text = metrics().await;
        if metric(&text, "engine_cancelled_sequences_total") == Some(1)
            && metric(&text, "engine_active_sequences") == Some(0)
        {
            // And nothing decodes any more.
            let generated = metric(&text, "engine_generated_tokens_total");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            let text = metrics().await;
            assert_eq!(metric(&text, "engine_generated_tokens_total"), generated);
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("the sequence of a gone client kept running");
}

#[tokio::test]
async fn embeddings_and_their_limits() {
    let Some(url) = local_server(LOCAL).await else {
        return;
    };
    let out: Value = post(
        &format!("{url}/v1/embeddings"),
        &json!({"model": "minilm", "input": ["a dragon", "a wyrm"]}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(out["data"].as_array().unwrap().len(), 2);
    assert_eq!(out["data"][0]["embedding"].as_array().unwrap().len(), 384);
    assert!(out["usage"]["prompt_tokens"].as_u64().unwrap() >= 6);
    let resp = post(
        &format!("{url}/v1/embeddings"),
        &json!({"model": "minilm", "input": "x", "dimensions": 128}),
    )
    .await;
    assert_eq!(resp.status(), 400);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"]["param"], "dimensions");
    // The chat model does not embed, the embedding model does not chat.
    assert_eq!(
        post(
            &format!("{url}/v1/embeddings"),
            &json!({"model": "smol", "input": "x"})
        )
        .await
        .status(),
        400
    );
    assert_eq!(
        post(
            &format!("{url}/v1/chat/completions"),
            &chat("minilm", "hi", 4)
        )
        .await
        .status(),
        400
    );
}

#[tokio::test]
async fn unsupported_parameters_are_refused_by_name() {
    let Some(url) = local_server(LOCAL).await else {
        return;
    };
    let endpoint = format!("{url}/v1/chat/completions");
    for (field, value) in [
        (
            "tools",
            json!([{"type": "function", "function": {"name": "roll"}}]),
        ),
        ("logprobs", json!(true)),
        ("response_format", json!({"type": "json_object"})),
    ] {
        let mut body = chat("smol", "hi", 4);
        body[field] = value;
        let resp = post(&endpoint, &body).await;
        assert_eq!(resp.status(), 400, "{field}");
        let err: Value = resp.json().await.unwrap();
        assert_eq!(err["error"]["param"], field);
        assert_eq!(err["error"]["code"], "unsupported_parameter");
    }
    let long = "dragon ".repeat(9000);
    let resp = post(&endpoint, &chat("smol", &long, 4)).await;
    assert_eq!(resp.status(), 400);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"]["code"], "context_length_exceeded");
}

#[tokio::test]
async fn a_full_queue_answers_429_with_retry_after() {
    let toml = LOCAL.replace(
        "max_batch = 8\nmax_queue = 4",
        "max_batch = 1\nmax_queue = 1",
    );
    let Some(url) = local_server(&toml).await else {
        return;
    };
    let endpoint = format!("{url}/v1/chat/completions");
    let body = chat("smol", "Write a long story.", 64);
    let results = futures::future::join_all((0..6).map(|_| post(&endpoint, &body))).await;
    let statuses: Vec<u16> = results.iter().map(|r| r.status().as_u16()).collect();
    assert!(statuses.contains(&200), "{statuses:?}");
    let limited: Vec<_> = results.iter().filter(|r| r.status() == 429).collect();
    assert!(!limited.is_empty(), "{statuses:?}");
    assert_eq!(limited[0].headers()["retry-after"], "1");
}

#[tokio::test]
async fn a_gateway_routes_to_a_worker_over_http() {
    let Some(worker) = local_server(LOCAL).await else {
        return;
    };
    let gateway_toml = format!(
        "[providers.worker]\nkind = \"openai\"\nbase_url = \"{worker}/v1\"\n\n[[models]]\nname = \"narrator\"\nprovider = \"worker\"\nupstream_model = \"smol\"\n"
    );
    let gateway = serve(Config::parse(&gateway_toml, &|_| None).unwrap()).await;
    let body = chat("narrator", "What is 2 + 2?", 16);
    let via_gateway: Value = post(&format!("{gateway}/v1/chat/completions"), &body)
        .await
        .json()
        .await
        .unwrap();
    let mut direct_body = body.clone();
    direct_body["model"] = json!("smol");
    let direct: Value = post(&format!("{worker}/v1/chat/completions"), &direct_body)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(via_gateway["model"], "narrator");
    assert_eq!(
        via_gateway["choices"][0]["message"]["content"],
        direct["choices"][0]["message"]["content"]
    );
    let mut stream = body.clone();
    stream["stream"] = json!(true);
    let (text, _) =
        stream_text(post(&format!("{gateway}/v1/chat/completions"), &stream).await).await;
    assert_eq!(json!(text), direct["choices"][0]["message"]["content"]);
    // The worker reports its load for the gateways in front of it.
    let load: Value = reqwest::get(format!("{worker}/load"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let smol = load["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["model"] == "smol")
        .unwrap();
    assert!(smol["generated_tokens"].as_u64().unwrap() > 0);
    assert_eq!(smol["max_batch"], 8);
}

#[tokio::test]
async fn bad_token_ids_and_biases_are_refused_and_hurt_no_one_else() {
    let Some(url) = local_server(LOCAL).await else {
        return;
    };
    let resp = post(
        &format!("{url}/v1/completions"),
        &json!({"model": "smol", "prompt": [1, 4_000_000_000u64], "max_tokens": 4}),
    )
    .await;
    assert_eq!(resp.status(), 400);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"]["code"], "invalid_token");
    let mut body = chat("smol", "hi", 4);
    body["logit_bias"] = json!({"42": 1e39});
    assert_eq!(
        post(&format!("{url}/v1/chat/completions"), &body)
            .await
            .status(),
        400
    );
    // A prompt-only request generates nothing.
    let out: Value = post(
        &format!("{url}/v1/completions"),
        &json!({"model": "smol", "prompt": "Once upon a time", "max_tokens": 0, "echo": true}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(out["choices"][0]["text"], "Once upon a time");
    assert_eq!(out["usage"]["completion_tokens"], 0);
    assert_eq!(out["choices"][0]["finish_reason"], "length");
}

#[tokio::test]
async fn budgets_reserve_the_prompt_as_the_model_counts_it() {
    let toml =
        format!("{LOCAL}\n[budgets]\ndefault_policy = \"p\"\n[budgets.policies.p]\ntokens = 400\n");
    let Some(url) = local_server(&toml).await else {
        return;
    };
    let url = format!("{url}/v1/chat/completions");
    let remaining = |resp: &reqwest::Response| -> u64 {
        let v = resp.headers()["x-aigw-budget-remaining"].to_str().unwrap();
        v.strip_prefix("tokens=").unwrap().parse().unwrap()
    };
    let first = post(&url, &chat("smol", "Say hi.", 4)).await;
    assert_eq!(first.status(), 200);
    let left = remaining(&first);
    let body: Value = first.json().await.unwrap();
    let prompt = body["usage"]["prompt_tokens"].as_u64().unwrap();
    let spent = body["usage"]["total_tokens"].as_u64().unwrap();
    assert_eq!(left, 400 - spent);

    // The reservation is the prompt's exact token count plus max_tokens: a request that
    // needs one token more than is left is refused, one that needs exactly what is left is
    // admitted. (The byte estimate for this JSON differs from the templated prompt's count.)
    let over = post(&url, &chat("smol", "Say hi.", (left - prompt + 1) as u32)).await;
    assert_eq!(over.status(), 429);
    let exact = post(&url, &chat("smol", "Say hi.", (left - prompt) as u32)).await;
    assert_eq!(exact.status(), 200);
}
