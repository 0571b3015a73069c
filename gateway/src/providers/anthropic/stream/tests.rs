//! Unit tests of the stream event translation.

use aigw_models::openai::{ChatCompletionChunk, FinishReason, Role, ToolCallDelta};
use http::StatusCode;
use serde_json::{Value, json};

use super::{ProviderError, Step, Translator};

/// Feeds event payloads to a translator; returns the chunks, and the error that ended them.
fn run_events(events: &[Value]) -> (Vec<ChatCompletionChunk>, Option<ProviderError>, bool) {
    let mut t = Translator::new(99);
    let mut chunks = Vec::new();
    for event in events {
        match t.step(&event.to_string()) {
            Ok(Step::Skip) => {}
            Ok(Step::Chunk(c)) => chunks.push(c),
            Ok(Step::Last(c)) => {
                chunks.push(c);
                return (chunks, None, true);
            }
            Err(e) => return (chunks, Some(e), false),
        }
    }
    (chunks, None, false)
}

#[test]
fn stream_events_become_chunks() {
    let (chunks, err, last) = run_events(&[
        json!({"type": "message_start", "message": {"id": "msg_s", "type": "message", "role": "assistant",
            "model": "claude-x", "content": [], "stop_reason": null,
            "usage": {"input_tokens": 12, "cache_read_input_tokens": 2, "output_tokens": 1}}}),
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}}),
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "plan"}}),
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "s"}}),
        json!({"type": "content_block_stop", "index": 0}),
        json!({"type": "ping"}),
        json!({"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}}),
        json!({"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Rolling"}}),
        json!({"type": "content_block_stop", "index": 1}),
        json!({"type": "content_block_start", "index": 2, "content_block": {"type": "tool_use", "id": "toolu_a", "name": "roll", "input": {}}}),
        json!({"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": ""}}),
        json!({"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": "{\"sid"}}),
        json!({"type": "content_block_start", "index": 3, "content_block": {"type": "tool_use", "id": "toolu_b", "name": "shrug", "input": {}}}),
        json!({"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": "es\":20}"}}),
        json!({"type": "some_future_event", "payload": 1}),
        json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null}, "usage": {"output_tokens": 30}}),
        // Some hosts (Bedrock) add fields to `message_stop`.
        json!({"type": "message_stop", "amazon-bedrock-invocationMetrics": {"inputTokenCount": 14}}),
    ]);
    assert!(err.is_none() && last);
    assert!(
        chunks
            .iter()
            .all(|c| c.id == "msg_s" && c.created == 99 && c.model == "claude-x")
    );
    assert!(chunks.iter().all(|c| c.object == "chat.completion.chunk"));
    let first = &chunks[0].choices[0].delta;
    assert_eq!(
        (first.role, first.content.as_deref()),
        (Some(Role::Assistant), Some(""))
    );
    assert_eq!(
        chunks[1].choices[0].delta.content.as_deref(),
        Some("Rolling")
    );
    let calls: Vec<ToolCallDelta> = chunks[2..6]
        .iter()
        .map(|c| c.choices[0].delta.tool_calls.clone().unwrap().remove(0))
        .collect();
    assert_eq!(
        serde_json::to_value(&calls).unwrap(),
        json!([
            {"index": 0, "id": "toolu_a", "type": "function", "function": {"name": "roll", "arguments": ""}},
            {"index": 0, "function": {"arguments": "{\"sid"}},
            {"index": 1, "id": "toolu_b", "type": "function", "function": {"name": "shrug", "arguments": ""}},
            {"index": 0, "function": {"arguments": "es\":20}"}},
        ])
    );
    assert_eq!(
        chunks[6].choices[0].finish_reason,
        Some(FinishReason::ToolCalls)
    );
    assert_eq!(chunks[6].choices[0].delta, Default::default());
    let end = &chunks[7];
    assert!(end.choices.is_empty());
    let usage = end.usage.as_ref().unwrap();
    assert_eq!(
        (
            usage.prompt_tokens,
            usage.completion_tokens,
            usage.total_tokens
        ),
        (14, 30, 44)
    );
    assert_eq!(chunks.len(), 8);
}

#[test]
fn stream_error_events_carry_their_status() {
    let start = json!({"type": "message_start", "message": {"id": "m", "model": "c", "usage": {"input_tokens": 1}}});
    for (kind, status) in [
        ("overloaded_error", StatusCode::SERVICE_UNAVAILABLE),
        ("rate_limit_error", StatusCode::TOO_MANY_REQUESTS),
        ("api_error", StatusCode::INTERNAL_SERVER_ERROR),
        ("invalid_request_error", StatusCode::BAD_REQUEST),
        ("authentication_error", StatusCode::UNAUTHORIZED),
        ("permission_error", StatusCode::FORBIDDEN),
        ("not_found_error", StatusCode::NOT_FOUND),
        ("request_too_large", StatusCode::PAYLOAD_TOO_LARGE),
        ("brand_new_error", StatusCode::BAD_GATEWAY),
    ] {
        let (chunks, err, _) = run_events(&[
            start.clone(),
            json!({"type": "error", "error": {"type": kind, "message": "Overloaded"}}),
        ]);
        assert_eq!(chunks.len(), 1);
        match err {
            Some(ProviderError::Status {
                status: s,
                body: Some(body),
                ..
            }) => {
                assert_eq!(s, status, "{kind}");
                assert_eq!(
                    (body.error.kind.as_str(), body.error.message.as_str()),
                    (kind, "Overloaded")
                );
            }
            other => panic!("{kind}: {other:?}"),
        }
    }
    let (_, err, _) = run_events(&[json!({"type": "content_block_delta"})]);
    assert!(matches!(err, Some(ProviderError::InvalidResponse(_))));
}
