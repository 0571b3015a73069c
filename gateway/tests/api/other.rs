//! Models, completions, embeddings, audio, operations, documentation and shutdown.

use std::time::Duration;

use aigw_models::openai::decode_f32_base64;
use serde_json::{Value, json};

use crate::{Gateway, expect_error, sse_data};

#[tokio::test]
async fn models_list_and_retrieve_aliases() {
    let gw = Gateway::start().await;
    let list: Value = gw.get("/v1/models").await.json().await.unwrap();
    assert_eq!(list["object"], "list");
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&"echo") && ids.contains(&"unreachable"));
    assert!(
        !ids.iter().any(|id| id.starts_with("mock-")),
        "aliases, not upstream names"
    );
    let one: Value = gw.get("/v1/models/echo").await.json().await.unwrap();
    assert_eq!(one["id"], "echo");
    assert_eq!(one["object"], "model");
    assert_eq!(one["owned_by"], "mock");
}

#[tokio::test]
async fn legacy_completions_plain_and_streamed() {
    let gw = Gateway::start().await;
    let body = json!({"model": "echo", "prompt": "the dragon", "max_tokens": 5});
    let out: Value = gw
        .post("/v1/completions", &body)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(out["object"], "text_completion");
    assert_eq!(out["model"], "echo");
    assert_eq!(out["choices"][0]["text"], " and then the dragon");

    let body = json!({"model": "echo", "prompt": "the dragon", "stream": true, "stream_options": {"include_usage": true}});
    let events = sse_data(gw.post("/v1/completions", &body).await).await;
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(text, " and then the dragon");
    assert_eq!(chunks.last().unwrap()["usage"]["completion_tokens"], 4);
}

#[tokio::test]
async fn embeddings_float_and_base64() {
    let gw = Gateway::start().await;
    let out: Value = gw
        .post(
            "/v1/embeddings",
            &json!({"model": "echo", "input": ["a", "b"]}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(out["model"], "echo");
    assert_eq!(out["data"][1]["embedding"], json!([2.0, 0.5, -0.25]));
    assert_eq!(out["usage"]["prompt_tokens"], 6);

    let out: Value = gw
        .post(
            "/v1/embeddings",
            &json!({"model": "echo", "input": "a", "encoding_format": "base64"}),
        )
        .await
        .json()
        .await
        .unwrap();
    let b64 = out["data"][0]["embedding"].as_str().unwrap();
    assert_eq!(decode_f32_base64(b64).unwrap(), vec![1.0, 0.5, -0.25]);

    let err = expect_error(
        gw.post(
            "/v1/embeddings",
            &json!({"model": "echo", "input": "a", "encoding_format": "hex"}),
        )
        .await,
        400,
    )
    .await;
    assert_eq!(err["param"], "encoding_format");
}

#[tokio::test]
async fn audio_forms_are_forwarded() {
    let gw = Gateway::start().await;
    let form = reqwest::multipart::Form::new()
        .part(
            "file",
            reqwest::multipart::Part::bytes(vec![0u8; 1234])
                .file_name("turn.wav")
                .mime_str("audio/wav")
                .unwrap(),
        )
        .text("model", "echo")
        .text("language", "en")
        .text("response_format", "text")
        .text("timestamp_granularities[]", "word")
        .text("timestamp_granularities[]", "segment");
    let resp = gw
        .client
        .post(format!("{}/v1/audio/transcriptions", gw.url))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    assert_eq!(resp.text().await.unwrap(), "heard 1234 bytes\n");
    let forms = gw.mock.mock.seen.lock().unwrap().forms.clone();
    let fields = &forms[0];
    let get = |k: &str| {
        fields
            .iter()
            .filter(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
            .collect::<Vec<_>>()
    };
    assert_eq!(get("model"), ["mock-echo"]);
    assert_eq!(get("file_name"), ["turn.wav"]);
    assert_eq!(get("language"), ["en"]);
    assert_eq!(get("timestamp_granularities[]"), ["word", "segment"]);

    let form = reqwest::multipart::Form::new().text("model", "echo");
    let resp = gw
        .client
        .post(format!("{}/v1/audio/translations", gw.url))
        .multipart(form)
        .send()
        .await
        .unwrap();
    let err = expect_error(resp, 400).await;
    assert_eq!(err["param"], "file");
}

#[tokio::test]
async fn health_ready_metrics_and_docs() {
    let gw = Gateway::start().await;
    let health: Value = gw.get("/health").await.json().await.unwrap();
    assert_eq!(health["status"], "ok");
    // The alias `unreachable` has one deployment, on a dead provider, so the gateway is not
    // ready, and says why.
    let mut ready = Value::Null;
    let echo = &"echo/mock/mock-echo";
    let dead = &"unreachable/dead/unreachable";
    for _ in 0..50 {
        let resp = gw.get("/ready").await;
        assert_eq!(resp.status(), 503);
        ready = resp.json().await.unwrap();
        if ready["models"]["echo"]["deployments"][echo] == "up"
            && ready["models"]["unreachable"]["deployments"][dead] != "unknown"
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ready["status"], "not_ready", "{ready}");
    assert_eq!(ready["models"]["echo"]["ready"], true, "{ready}");
    assert_eq!(ready["models"]["unreachable"]["ready"], false, "{ready}");
    assert!(
        ready["models"]["unreachable"]["deployments"][dead]
            .as_str()
            .unwrap()
            .starts_with("down"),
        "{ready}"
    );
    let metrics = gw.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains(r#"aigw_deployment_up{deployment="echo/mock/mock-echo"} 1"#),
        "{metrics}"
    );

    assert!(metrics.contains("aigw_request_duration_seconds_bucket"));

    let spec: Value = gw.get("/openapi.json").await.json().await.unwrap();
    assert!(spec["paths"]["/v1/chat/completions"]["post"].is_object());
    let docs = gw.get("/docs/").await;
    assert_eq!(docs.status(), 200);
    assert!(
        docs.text().await.unwrap().contains("swagger"),
        "Swagger UI page"
    );
}

#[tokio::test]
async fn ready_when_every_upstream_answers() {
    let mock = crate::mock::start().await;
    let toml = format!(
        "[server]\nhealth_check_interval_secs = 1\n[providers.m]\nkind = \"openai\"\nbase_url = \"{}\"\n[[models]]\nname = \"m\"\nprovider = \"m\"\n",
        mock.base_url()
    );
    let config = aigw_gateway::config::Config::parse(&toml, &|_| None).unwrap();
    let state = aigw_gateway::state::AppState::new(config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/ready", listener.local_addr().unwrap());
    let server = tokio::spawn(aigw_gateway::server::run(
        listener,
        state,
        std::future::pending(),
    ));
    let mut status = 0;
    for _ in 0..50 {
        status = reqwest::get(&url).await.unwrap().status().as_u16();
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.abort();
    assert_eq!(status, 200);
}

#[tokio::test]
async fn shutdown_lets_a_running_stream_finish() {
    let mut gw = Gateway::start().await;
    let mut body = crate::chat_body("slowstream", "a long tale of the old kingdom");
    body["stream"] = json!(true);
    let resp = gw.post("/v1/chat/completions", &body).await;
    assert_eq!(resp.status(), 200);
    gw.trigger_shutdown();
    let events = sse_data(resp).await;
    assert_eq!(
        events.last().unwrap(),
        "[DONE]",
        "the stream ran to its end"
    );
    let text: String = events[..events.len() - 1]
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    assert_eq!(text, "echo: a long tale of the old kingdom");
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn swagger_ui_renders_the_spec_in_a_real_browser() {
    let Some(chromium) = crate::tools::locate("AIGW_TEST_CHROMIUM") else {
        return;
    };
    let gw = Gateway::start().await;
    let profile = std::env::temp_dir().join(format!("aigw-chromium-{}", std::process::id()));
    let out = tokio::process::Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=15000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("{}/docs/", gw.url))
        .output()
        .await
        .expect("run chromium");
    std::fs::remove_dir_all(&profile).ok();
    let dom = String::from_utf8_lossy(&out.stdout);
    // Swagger UI's scripts ran (offline: every asset is served by the gateway) and rendered
    // an operation block for each endpoint of the document they fetched from /openapi.json.
    assert!(
        dom.contains("opblock"),
        "Swagger UI did not render:\n{}",
        &dom[..dom.len().min(2000)]
    );
    for path in [
        "/v1/chat/completions",
        "/v1/embeddings",
        "/v1/audio/transcriptions",
    ] {
        assert!(dom.contains(path), "{path} missing from the rendered page");
    }
}
