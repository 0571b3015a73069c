//! Strict JSON decoding of request bodies with the path of the first offending field.

use serde::de::DeserializeOwned;

/// A body that could not be decoded: what went wrong and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// Human-readable description, suitable for an OpenAI error `message`.
    pub message: String,
    /// Dotted path of the offending field (`messages[0].role`), when known.
    pub param: Option<String>,
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DecodeError {}

/// Decodes `bytes` as JSON into `T`, keeping the path of the field that failed.
pub fn from_json_slice<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        let syntax = matches!(
            inner.classify(),
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof
        );
        // `?` marks a position serde could not name (inside untagged or flattened data).
        let param =
            (!syntax && path != "." && !path.is_empty() && !path.contains('?')).then_some(path);
        let message = match syntax {
            true => format!("We could not parse the JSON body of your request: {inner}"),
            false => match &param {
                Some(p) => format!("Invalid value for '{p}': {}", strip_position(&inner)),
                None => format!("Invalid request body: {}", strip_position(&inner)),
            },
        };
        DecodeError { message, param }
    })?;
    de.end().map_err(|err| DecodeError {
        message: format!("We could not parse the JSON body of your request: {err}"),
        param: None,
    })?;
    Ok(value)
}

/// serde_json appends " at line L column C"; for type errors the path says more.
fn strip_position(err: &serde_json::Error) -> String {
    let text = err.to_string();
    match text.rfind(" at line ") {
        Some(idx) => text[..idx].to_string(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openai::ChatCompletionRequest;

    #[test]
    fn wrong_type_names_the_param() {
        let err = from_json_slice::<ChatCompletionRequest>(
            br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":"hot"}"#,
        )
        .unwrap_err();
        assert_eq!(err.param.as_deref(), Some("temperature"));
        assert!(err.message.contains("temperature"), "{}", err.message);
    }

    #[test]
    fn nested_error_path() {
        let err = from_json_slice::<ChatCompletionRequest>(
            br#"{"model":"m","messages":[{"role":"user","content":"hi"},{"role":"wizard","content":"x"}]}"#,
        )
        .unwrap_err();
        assert_eq!(err.param.as_deref(), Some("messages[1].role"));
    }

    #[test]
    fn syntax_error_has_no_param() {
        let err = from_json_slice::<ChatCompletionRequest>(br#"{"model": "m", "#).unwrap_err();
        assert_eq!(err.param, None);
        assert!(err.message.contains("parse"));
    }

    #[test]
    fn trailing_garbage_is_rejected() {
        let err = from_json_slice::<serde_json::Value>(br#"{"a":1} x"#).unwrap_err();
        assert!(err.message.contains("parse"));
    }
}
