//! Incremental `text/event-stream` decoding: bytes in any split → complete events.

use bytes::{Buf, BytesMut};

/// One server-sent event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field, if any.
    pub event: Option<String>,
    /// The `data:` lines joined by `\n`.
    pub data: String,
}

/// Accumulates bytes and yields events as their terminating blank line arrives.
#[derive(Debug, Default)]
pub struct SseDecoder {
    buf: BytesMut,
    event: Option<String>,
    data: String,
    has_data: bool,
}

impl SseDecoder {
    /// A decoder with an empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes received from the wire.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete event, if the buffer holds one.
    pub fn next_event(&mut self) -> Result<Option<SseEvent>, std::str::Utf8Error> {
        while let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
            let mut end = pos;
            if end > 0 && self.buf[end - 1] == b'\r' {
                end -= 1;
            }
            let line = std::str::from_utf8(&self.buf[..end])?.to_string();
            self.buf.advance(pos + 1);
            if let Some(event) = self.line(&line) {
                return Ok(Some(event));
            }
        }
        Ok(None)
    }

    /// The event left when the stream ends without a final blank line.
    pub fn finish(&mut self) -> Result<Option<SseEvent>, std::str::Utf8Error> {
        if !self.buf.is_empty() {
            let rest = std::str::from_utf8(&self.buf)?
                .trim_end_matches('\r')
                .to_string();
            self.buf.clear();
            if let Some(event) = self.line(&rest) {
                return Ok(Some(event));
            }
        }
        Ok(self.line(""))
    }

    fn line(&mut self, line: &str) -> Option<SseEvent> {
        if line.is_empty() {
            if !self.has_data {
                self.event = None;
                return None;
            }
            self.has_data = false;
            return Some(SseEvent {
                event: self.event.take(),
                data: std::mem::take(&mut self.data),
            });
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "event" => self.event = Some(value.to_string()),
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8], split: usize) -> Vec<SseEvent> {
        let mut d = SseDecoder::new();
        let mut out = Vec::new();
        for chunk in input.chunks(split) {
            d.push(chunk);
            while let Some(e) = d.next_event().unwrap() {
                out.push(e);
            }
        }
        out.extend(d.finish().unwrap());
        out
    }

    #[test]
    fn decodes_regardless_of_split() {
        let input = b": comment\r\nevent: message_start\r\ndata: {\"a\":1}\r\n\r\ndata: x\ndata: y\n\ndata: [DONE]\n\n";
        for split in [1, 2, 3, 7, 1000] {
            let events = decode_all(input, split);
            assert_eq!(events.len(), 3, "split {split}");
            assert_eq!(events[0].event.as_deref(), Some("message_start"));
            assert_eq!(events[0].data, "{\"a\":1}");
            assert_eq!(events[1].data, "x\ny");
            assert_eq!(events[1].event, None);
            assert_eq!(events[2].data, "[DONE]");
        }
    }

    #[test]
    fn unterminated_last_event_is_flushed() {
        let events = decode_all(b"data: last", 4);
        assert_eq!(
            events,
            vec![SseEvent {
                event: None,
                data: "last".into()
            }]
        );
    }
}
