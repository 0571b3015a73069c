//! The committed OpenAPI document must equal the generated one, and must describe every
//! endpoint with its errors.

use serde_json::Value;

#[test]
fn committed_document_matches_the_code() {
    let committed = std::fs::read_to_string(aigw_openapi::committed_path())
        .expect("openapi/openapi.json exists");
    assert!(
        committed == aigw_openapi::generated(),
        "openapi/openapi.json is out of date: run `cargo run -p aigw-openapi -- write` and commit it"
    );
}

#[test]
fn every_endpoint_is_described_with_error_shapes() {
    let doc: Value = serde_json::from_str(&aigw_openapi::generated()).expect("valid JSON");
    let expected = [
        ("/v1/models", "get"),
        ("/v1/models/{id}", "get"),
        ("/v1/chat/completions", "post"),
        ("/v1/completions", "post"),
        ("/v1/embeddings", "post"),
        ("/v1/audio/transcriptions", "post"),
        ("/v1/audio/translations", "post"),
        ("/v1/audio/diarizations", "post"),
        ("/health", "get"),
        ("/ready", "get"),
        ("/metrics", "get"),
    ];
    for (path, method) in expected {
        let op = &doc["paths"][path][method];
        assert!(op.is_object(), "{method} {path} missing");
        assert!(
            op["responses"]["200"].is_object(),
            "{method} {path} has no 200"
        );
        if path.starts_with("/v1/") {
            for status in ["400", "401", "404", "502"] {
                let schema =
                    &op["responses"][status]["content"]["application/json"]["schema"]["$ref"];
                assert_eq!(
                    schema, "#/components/schemas/ErrorResponse",
                    "{method} {path} {status}"
                );
            }
        }
    }
    for schema in [
        "ChatCompletionRequest",
        "ChatCompletionResponse",
        "ChatCompletionChunk",
        "EmbeddingRequest",
        "ErrorResponse",
    ] {
        assert!(
            doc["components"]["schemas"][schema].is_object(),
            "schema {schema}"
        );
    }
}
