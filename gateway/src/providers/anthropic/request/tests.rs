//! Unit tests of the OpenAI → Anthropic request translation.

use aigw_models::openai::ChatCompletionRequest;
use serde_json::{Value, json};

use super::translate;
use crate::providers::ProviderError;

fn openai(body: Value) -> ChatCompletionRequest {
    serde_json::from_value(body).unwrap()
}

/// The Anthropic body for an OpenAI body, with a default `max_tokens` of 1024.
fn translated(body: Value) -> Value {
    serde_json::to_value(translate(openai(body), 1024, false).unwrap()).unwrap()
}

/// The parameter named by the rejection of an OpenAI body.
fn rejected(body: Value) -> String {
    match translate(openai(body), 1024, false) {
        Err(ProviderError::Rejected { param, .. }) => param.unwrap(),
        other => panic!("expected a rejection, got {other:?}"),
    }
}

fn user(text: &str) -> Value {
    json!({"role": "user", "content": text})
}

#[test]
fn system_and_developer_messages_become_the_system_prompt() {
    let body = translated(json!({
        "model": "claude-x",
        "messages": [
            {"role": "system", "content": "You are a dungeon master."},
            {"role": "developer", "content": [{"type": "text", "text": "Be brief."}]},
            user("Describe the room."),
        ]
    }));
    assert_eq!(
        body,
        json!({
            "model": "claude-x",
            "max_tokens": 1024,
            "system": "You are a dungeon master.\n\nBe brief.",
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "Describe the room."}]}
            ]
        })
    );
}

#[test]
fn consecutive_messages_of_one_side_are_merged() {
    let body = translated(json!({
        "model": "m",
        "messages": [
            user("one"),
            {"role": "system", "content": "late instruction"},
            user("two"),
            {"role": "assistant", "content": "three"},
            {"role": "assistant", "content": ""},
            {"role": "assistant", "content": "four"},
            user("five"),
        ]
    }));
    assert_eq!(body["system"], "late instruction");
    assert_eq!(
        body["messages"],
        json!([
            {"role": "user", "content": [
                {"type": "text", "text": "one"}, {"type": "text", "text": "two"}
            ]},
            {"role": "assistant", "content": [
                {"type": "text", "text": "three"}, {"type": "text", "text": "four"}
            ]},
            {"role": "user", "content": [{"type": "text", "text": "five"}]},
        ])
    );
}

#[test]
fn images_by_data_url_and_by_http_url() {
    let body = translated(json!({
        "model": "m",
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "Compare these maps."},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "high"}},
            {"type": "image_url", "image_url": {"url": "https://example.com/map.jpg"}},
        ]}]
    }));
    assert_eq!(
        body["messages"][0]["content"],
        json!([
            {"type": "text", "text": "Compare these maps."},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
            {"type": "image", "source": {"type": "url", "url": "https://example.com/map.jpg"}},
        ])
    );
    for url in ["data:image/png,rawbytes", "ftp://example.com/map.jpg"] {
        let param = rejected(json!({
            "model": "m",
            "messages": [user("hi"), {"role": "user", "content": [
                {"type": "text", "text": "see"},
                {"type": "image_url", "image_url": {"url": url}},
            ]}]
        }));
        assert_eq!(param, "messages[1].content[1].image_url.url", "{url}");
    }
}

#[test]
fn tools_and_every_tool_choice() {
    let tools = json!([
        {"type": "function", "function": {
            "name": "roll", "description": "Roll dice.",
            "parameters": {"type": "object", "properties": {"sides": {"type": "integer"}}}
        }},
        {"type": "function", "function": {"name": "shrug"}},
    ]);
    let with = |choice: Value, parallel: Value| {
        let mut req = json!({"model": "m", "messages": [user("roll")], "tools": tools});
        if !choice.is_null() {
            req["tool_choice"] = choice;
        }
        if !parallel.is_null() {
            req["parallel_tool_calls"] = parallel;
        }
        translated(req)
    };
    let body = with(Value::Null, Value::Null);
    assert_eq!(
        body["tools"],
        json!([
            {"name": "roll", "description": "Roll dice.",
             "input_schema": {"type": "object", "properties": {"sides": {"type": "integer"}}}},
            {"name": "shrug", "input_schema": {"type": "object"}},
        ])
    );
    assert!(body.get("tool_choice").is_none());
    let cases = [
        (json!("auto"), Value::Null, json!({"type": "auto"})),
        (json!("none"), Value::Null, json!({"type": "none"})),
        (json!("required"), Value::Null, json!({"type": "any"})),
        (
            json!({"type": "function", "function": {"name": "roll"}}),
            Value::Null,
            json!({"type": "tool", "name": "roll"}),
        ),
        (
            json!("required"),
            json!(false),
            json!({"type": "any", "disable_parallel_tool_use": true}),
        ),
        (
            Value::Null,
            json!(false),
            json!({"type": "auto", "disable_parallel_tool_use": true}),
        ),
        (json!("auto"), json!(true), json!({"type": "auto"})),
    ];
    for (choice, parallel, expected) in cases {
        let body = with(choice.clone(), parallel.clone());
        assert_eq!(body["tool_choice"], expected, "{choice} {parallel}");
    }
    // Without tools there is nothing to choose from.
    let body = translated(json!({"model": "m", "messages": [user("hi")], "tool_choice": "none"}));
    assert!(body.get("tool_choice").is_none() && body.get("tools").is_none());
}

#[test]
fn tool_calls_and_results_round_trip() {
    let body = translated(json!({
        "model": "m",
        "messages": [
            user("Roll a d20 and a d6."),
            {"role": "assistant", "content": "Rolling.", "tool_calls": [
                {"id": "toolu_1", "type": "function", "function": {"name": "roll", "arguments": "{\"sides\":20}"}},
                {"id": "toolu_2", "type": "function", "function": {"name": "roll", "arguments": ""}},
            ]},
            {"role": "tool", "tool_call_id": "toolu_1", "content": "17"},
            {"role": "tool", "tool_call_id": "toolu_2", "content": [{"type": "text", "text": "4"}]},
            user("Add them."),
        ]
    }));
    assert_eq!(
        body["messages"],
        json!([
            {"role": "user", "content": [{"type": "text", "text": "Roll a d20 and a d6."}]},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Rolling."},
                {"type": "tool_use", "id": "toolu_1", "name": "roll", "input": {"sides": 20}},
                {"type": "tool_use", "id": "toolu_2", "name": "roll", "input": {}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "17"},
                {"type": "tool_result", "tool_use_id": "toolu_2", "content": [{"type": "text", "text": "4"}]},
                {"type": "text", "text": "Add them."},
            ]},
        ])
    );
}

#[test]
fn tool_call_arguments_must_be_a_json_object() {
    for arguments in ["{\"sides\": 20", "20", "[1]"] {
        let param = rejected(json!({
            "model": "m",
            "messages": [
                user("roll"),
                {"role": "assistant", "tool_calls": [
                    {"id": "a", "type": "function", "function": {"name": "roll", "arguments": "{}"}},
                    {"id": "b", "type": "function", "function": {"name": "roll", "arguments": arguments}},
                ]},
            ]
        }));
        assert_eq!(param, "messages[1].tool_calls[1].function.arguments");
    }
}

#[test]
fn sampling_limits_and_metadata() {
    let body = translated(json!({
        "model": "m",
        "messages": [user("hi")],
        "stop": "THE END",
        "temperature": 1.7,
        "top_p": 0.9,
        "max_tokens": 50,
        "user": "player-7",
        "seed": 42,
        "presence_penalty": 0.0,
        "frequency_penalty": 0,
        "logit_bias": {},
        "n": 1,
        "logprobs": false,
        "response_format": {"type": "text"},
        "metadata": {"table": "3"},
        "stream_options": {"include_usage": true},
        "top_k": 40,
        "reasoning_effort": "low",
    }));
    assert_eq!(
        body,
        json!({
            "model": "m",
            "max_tokens": 50,
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
            "stop_sequences": ["THE END"],
            "temperature": 1.0,
            "top_p": 0.9,
            "metadata": {"user_id": "player-7"},
            "top_k": 40,
        })
    );
    let body = translated(json!({
        "model": "m", "messages": [user("hi")], "stop": ["A", "B"],
        "max_tokens": 50, "max_completion_tokens": 60, "temperature": 0.3,
    }));
    assert_eq!(body["stop_sequences"], json!(["A", "B"]));
    assert_eq!(body["max_tokens"], 60);
    assert_eq!(body["temperature"], 0.3);
    let streamed = translate(
        openai(json!({"model": "m", "messages": [user("hi")]})),
        7,
        true,
    );
    let streamed = serde_json::to_value(streamed.unwrap()).unwrap();
    assert_eq!(streamed["stream"], true);
    assert_eq!(streamed["max_tokens"], 7);
}

#[test]
fn parameters_anthropic_cannot_honour_are_rejected() {
    let cases = [
        (json!({"n": 2}), "n"),
        (json!({"logprobs": true}), "logprobs"),
        (json!({"logprobs": true, "top_logprobs": 2}), "logprobs"),
        (json!({"top_logprobs": 2}), "top_logprobs"),
        (
            json!({"response_format": {"type": "json_object"}}),
            "response_format",
        ),
        (
            json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}),
            "response_format",
        ),
        (json!({"presence_penalty": 0.5}), "presence_penalty"),
        (json!({"frequency_penalty": -1.0}), "frequency_penalty"),
        (json!({"logit_bias": {"50256": -100}}), "logit_bias"),
        (
            json!({"messages": [{"role": "user", "content": [
                {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}
            ]}]}),
            "messages[0].content[0]",
        ),
        (
            json!({"messages": [{"role": "user", "content": [
                {"type": "text", "text": "read"},
                {"type": "file", "file": {"file_id": "f1"}}
            ]}]}),
            "messages[0].content[1]",
        ),
        (
            json!({"messages": [user("hi"), {"role": "function", "name": "f", "content": "x"}]}),
            "messages[1].role",
        ),
        (json!({"tools": [{"type": "web_search"}]}), "tools[0].type"),
    ];
    for (overrides, param) in cases {
        let mut body = json!({"model": "m", "messages": [user("hi")]});
        for (k, v) in overrides.as_object().unwrap() {
            body[k] = v.clone();
        }
        assert_eq!(rejected(body), param, "{overrides}");
    }
}
