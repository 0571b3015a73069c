//! The stream client of the engine benchmark against the mock served
//! in-process (its streamed answer has 5 content chunks and a usage chunk
//! counting 9 completion tokens).

use std::time::Duration;

use aigw_bench::mock;
use aigw_bench::streams::{run_round, summarize};

async fn start_mock() -> std::io::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(mock::serve(listener));
    Ok(addr)
}

#[tokio::test]
async fn concurrent_streams_are_followed_to_their_end() {
    let addr = start_mock().await.unwrap();
    let url = format!("http://{addr}/v1/chat/completions");
    let (records, wall) = run_round(&url, "bench-model", 3, 9, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(records.len(), 3);
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.index, i);
        assert!(r.ok(), "{:?}", r.error);
        assert_eq!(r.completion_tokens, Some(9));
        assert_eq!(r.content_chunks, 5);
        assert_eq!(r.text_head, "Hello! How can I help you today?");
        assert_eq!(r.finish_reason.as_deref(), Some("stop"));
        let (first, last) = (r.first_token_s.unwrap(), r.last_token_s.unwrap());
        assert!(r.sent_s <= first && first <= last && last <= r.end_s);
        assert!(r.ttft_ms.unwrap() >= 0.0);
    }
    let s = summarize(&records, wall.as_secs_f64());
    assert_eq!((s.ok, s.errors, s.tokens), (3, 0, 27));
    assert!(s.aggregate_tok_s > 0.0);
}

#[tokio::test]
async fn a_token_count_other_than_asked_is_an_error() {
    let addr = start_mock().await.unwrap();
    let url = format!("http://{addr}/v1/chat/completions");
    let (records, _) = run_round(&url, "bench-model", 2, 128, Duration::from_secs(5))
        .await
        .unwrap();
    let s = summarize(&records, 1.0);
    assert_eq!((s.ok, s.errors), (0, 2));
    assert!(
        s.first_error
            .unwrap()
            .contains("expected exactly 128 completion tokens")
    );

    // A non-2xx answer is recorded with its status and body.
    let url = format!("http://{addr}/v1/nope");
    let (records, _) = run_round(&url, "bench-model", 1, 9, Duration::from_secs(5))
        .await
        .unwrap();
    let err = records[0].error.as_deref().unwrap();
    assert!(err.starts_with("HTTP 404"), "{err}");
}
