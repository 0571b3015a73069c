//! Server-sent events of a streamed chat completion, parsed incrementally.
//!
//! [`SseSplitter`] cuts a byte stream into events (separated by a blank
//! line) whatever the frame boundaries, and yields each event's `data`;
//! [`parse_event`] reads one event's data as the end sentinel
//! (`data: [DONE]`) or a `chat.completion.chunk`, keeping only what the
//! engine benchmark needs: the content, the usage and an error, if any.

use serde_json::Value;

/// Cuts a byte stream into server-sent events.
#[derive(Debug, Default)]
pub struct SseSplitter {
    buf: Vec<u8>,
}

impl SseSplitter {
    /// Appends `bytes` and returns the data of every event they complete,
    /// in order: the `data:` lines of an event joined with `\n`, one
    /// optional space after the colon removed. Events without data
    /// (comments, `event:` alone) are skipped; carriage returns are dropped,
    /// so CRLF streams split like LF ones.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        self.buf.extend(bytes.iter().filter(|&&b| b != b'\r'));
        let mut out = Vec::new();
        while let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = self.buf.drain(..end + 2).collect();
            if let Some(data) = event_data(&event[..end]) {
                out.push(data);
            }
        }
        out
    }

    /// Whether bytes of an unfinished event are pending.
    pub fn has_partial(&self) -> bool {
        self.buf.iter().any(|b| !b.is_ascii_whitespace())
    }
}

/// The data of one event (its text without the blank line), if it has any.
fn event_data(event: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(event);
    let lines: Vec<&str> = text
        .lines()
        .filter_map(|line| line.strip_prefix("data:"))
        .map(|d| d.strip_prefix(' ').unwrap_or(d))
        .collect();
    (!lines.is_empty()).then(|| lines.join("\n"))
}

/// What one `chat.completion.chunk` carries, as far as the benchmark cares.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChunkInfo {
    /// The content of its choices' deltas, when not empty.
    pub content: Option<String>,
    /// `usage.completion_tokens` (the final usage chunk).
    pub completion_tokens: Option<u64>,
    /// `usage.prompt_tokens` (the final usage chunk).
    pub prompt_tokens: Option<u64>,
    /// A choice's `finish_reason`, when set.
    pub finish_reason: Option<String>,
    /// The message of an `{"error": …}` event (a stream that failed midway).
    pub error: Option<String>,
}

/// One event of a chat completion stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `data: [DONE]`: the clean end of the stream.
    Done,
    /// Any other event.
    Chunk(ChunkInfo),
}

/// Reads one event's data; an error when it is neither `[DONE]` nor a JSON
/// object.
pub fn parse_event(data: &str) -> Result<Event, String> {
    if data.trim() == "[DONE]" {
        return Ok(Event::Done);
    }
    let value: Value = serde_json::from_str(data).map_err(|e| {
        let head: String = data.chars().take(200).collect();
        format!("event data is not JSON ({e}): {head}")
    })?;
    if !value.is_object() {
        return Err(format!("event data is not a JSON object: {data}"));
    }
    let mut info = ChunkInfo::default();
    if let Some(err) = value.get("error").filter(|e| !e.is_null()) {
        info.error = Some(
            err.get("message")
                .and_then(Value::as_str)
                .map_or_else(|| err.to_string(), str::to_owned),
        );
    }
    let mut content = String::new();
    for choice in value["choices"].as_array().into_iter().flatten() {
        if let Some(text) = choice["delta"]["content"].as_str() {
            content.push_str(text);
        }
        if let Some(reason) = choice["finish_reason"].as_str() {
            info.finish_reason = Some(reason.to_owned());
        }
    }
    info.content = (!content.is_empty()).then_some(content);
    info.completion_tokens = value["usage"]["completion_tokens"].as_u64();
    info.prompt_tokens = value["usage"]["prompt_tokens"].as_u64();
    Ok(Event::Chunk(info))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_events_across_frames() {
        let mut s = SseSplitter::default();
        assert!(s.push(b"data: {\"a\"").is_empty());
        assert!(s.has_partial());
        assert_eq!(s.push(b":1}\n"), Vec::<String>::new());
        assert_eq!(
            s.push(b"\ndata: x\n\n: comment\n\ndata: [DONE]\n\n"),
            ["{\"a\":1}", "x", "[DONE]"]
        );
        assert!(!s.has_partial());
    }

    #[test]
    fn joins_data_lines_and_handles_crlf() {
        let mut s = SseSplitter::default();
        let out = s.push(b"event: message\r\ndata: one\r\ndata:two\r\n\r\nid: 3\r\n\r\n");
        assert_eq!(out, ["one\ntwo"]);
    }

    #[test]
    fn parses_content_chunks() {
        let data = r#"{"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":" dragon"},"finish_reason":null}]}"#;
        let Event::Chunk(c) = parse_event(data).unwrap() else {
            panic!("not a chunk")
        };
        assert_eq!(c.content.as_deref(), Some(" dragon"));
        assert_eq!(
            (c.completion_tokens, c.finish_reason, c.error),
            (None, None, None)
        );

        // The role chunk has empty content: not a token.
        let role = r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#;
        assert_eq!(
            parse_event(role).unwrap(),
            Event::Chunk(ChunkInfo::default())
        );

        let finish = r#"{"choices":[{"index":0,"delta":{},"finish_reason":"length"}]}"#;
        let Event::Chunk(c) = parse_event(finish).unwrap() else {
            panic!("not a chunk")
        };
        assert_eq!(c.finish_reason.as_deref(), Some("length"));
        assert_eq!(c.content, None);
    }

    #[test]
    fn parses_usage_done_and_errors() {
        let usage = r#"{"choices":[],"usage":{"prompt_tokens":31,"completion_tokens":128,"total_tokens":159}}"#;
        let Event::Chunk(c) = parse_event(usage).unwrap() else {
            panic!("not a chunk")
        };
        assert_eq!(
            (c.prompt_tokens, c.completion_tokens),
            (Some(31), Some(128))
        );
        assert_eq!(c.content, None);

        assert_eq!(parse_event("[DONE]").unwrap(), Event::Done);

        let err = r#"{"error":{"message":"engine stopped","type":"server_error"}}"#;
        let Event::Chunk(c) = parse_event(err).unwrap() else {
            panic!("not a chunk")
        };
        assert_eq!(c.error.as_deref(), Some("engine stopped"));

        assert!(parse_event("not json").is_err());
        assert!(parse_event("[1,2]").is_err());
    }
}
