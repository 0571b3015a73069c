//! End to end: the mock served in-process under a short closed-loop load.

use std::sync::Arc;
use std::time::Duration;

use aigw_bench::client::{Target, probe};
use aigw_bench::load::{self, LoadConfig};
use aigw_bench::mock;
use bytes::Bytes;

async fn start_mock() -> std::io::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(mock::serve(listener));
    Ok(addr)
}

#[tokio::test]
async fn closed_loop_against_the_mock() {
    let addr = start_mock().await.unwrap();
    let body = Bytes::from_static(
        br#"{"model":"bench-model","messages":[{"role":"user","content":"Say hello"}]}"#,
    );
    let target = Target::new(
        &format!("http://{addr}/v1/chat/completions"),
        Some(body),
        &[],
    )
    .unwrap();
    let report = load::run(LoadConfig {
        target: Arc::new(target),
        concurrency: 4,
        duration: Duration::from_secs(1),
        warmup: Duration::from_millis(100),
        rate: None,
        timeout: Duration::from_secs(5),
    })
    .await
    .unwrap();
    assert_eq!(report.errors, 0, "{}", report.render_text());
    assert!(report.requests > 0, "{}", report.render_text());
    assert!(report.rps > 0.0);
    assert!(report.latency_us.p50 > 0 && report.latency_us.p50 <= report.latency_us.max);
}

#[tokio::test]
async fn open_loop_against_the_mock() {
    let addr = start_mock().await.unwrap();
    let target = Target::new(&format!("http://{addr}/v1/models"), None, &[]).unwrap();
    let report = load::run(LoadConfig {
        target: Arc::new(target),
        concurrency: 2,
        duration: Duration::from_secs(1),
        warmup: Duration::from_millis(100),
        rate: Some(200.0),
        timeout: Duration::from_secs(5),
    })
    .await
    .unwrap();
    assert_eq!(report.errors, 0, "{}", report.render_text());
    // 200 slots in the window; a loaded CI machine may miss a few.
    assert!(
        (150..=202).contains(&report.requests),
        "{}",
        report.render_text()
    );
    assert!(report.target_achieved.is_some() && report.send_delay_us.is_some());
    assert!(report.latency_us.count > 0);
}

#[tokio::test]
async fn mock_routes() {
    let addr = start_mock().await.unwrap();
    let base = format!("http://{addr}");
    let chat = |body: &'static [u8]| {
        Target::new(
            &format!("{base}/v1/chat/completions"),
            Some(Bytes::from_static(body)),
            &[],
        )
        .unwrap()
    };
    let t = Duration::from_secs(5);

    let (status, body) = probe(&chat(br#"{"model":"m","messages":[]}"#), t)
        .await
        .unwrap();
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert!(v["usage"]["total_tokens"].as_u64().unwrap() > 0);

    let (status, body) = probe(&chat(br#"{"model":"m","stream":true,"messages":[]}"#), t)
        .await
        .unwrap();
    assert_eq!(status, 200);
    let text = std::str::from_utf8(&body).unwrap();
    assert!(text.starts_with("data: {"));
    assert!(text.ends_with("data: [DONE]\n\n"));
    assert!(text.contains("chat.completion.chunk"));

    let (status, body) = probe(
        &Target::new(&format!("{base}/v1/models"), None, &[]).unwrap(),
        t,
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["data"][0]["id"], mock::MOCK_MODEL);

    let (status, body) = probe(&Target::new(&format!("{base}/nope"), None, &[]).unwrap(), t)
        .await
        .unwrap();
    assert_eq!(status, 404);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["code"], "not_found");
}
