//! Concurrent streamed chat completions: one round of the engine benchmark.
//!
//! A round opens N keep-alive connections, then sends N streaming chat
//! requests at once, one per connection, each with its own prompt. A
//! [`StreamTracker`] follows each answer as its frames arrive and notes when
//! the first and the last content token came; the final usage chunk gives
//! the number of tokens. [`summarize`] turns the N [`StreamRecord`]s into
//! the round's figures: time to first token percentiles, per-stream decode
//! rate and aggregate throughput.
//!
//! Every time is measured from the start of the round (`t0`, taken just
//! before the first request is sent), so streams can be laid side by side.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use serde::Serialize;
use serde_json::json;

use crate::client::{Connection, Target};
use crate::sse::{Event, SseSplitter, parse_event};

/// Characters of each stream's text kept in the record (a sanity check
/// that the model says something sensible).
const TEXT_HEAD_CHARS: usize = 100;
/// Bytes of a non-2xx answer kept for the error message.
const ERROR_HEAD_BYTES: usize = 1024;

/// The user prompt of stream `i`, with `{i}` for the stream's index.
pub const PROMPT_TEMPLATE: &str = "Tell me a story about dragon number {i}.";

/// The user prompt of stream `i`: short and different for every stream.
pub fn prompt(i: usize) -> String {
    PROMPT_TEMPLATE.replace("{i}", &i.to_string())
}

/// The streaming chat request of the benchmark: greedy, exactly
/// `max_tokens` tokens (`ignore_eos`), with a final usage chunk.
pub fn chat_body(model: &str, prompt: &str, max_tokens: u32) -> String {
    json!({
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "stream": true,
        "stream_options": {"include_usage": true},
        "temperature": 0,
        "ignore_eos": true,
        "max_tokens": max_tokens,
    })
    .to_string()
}

/// Seconds as `f64`.
fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Follows one streamed answer as its bytes arrive.
#[derive(Debug, Default)]
pub struct StreamTracker {
    sse: SseSplitter,
    first_token: Option<Duration>,
    last_token: Option<Duration>,
    content_chunks: u64,
    text: String,
    completion_tokens: Option<u64>,
    prompt_tokens: Option<u64>,
    finish_reason: Option<String>,
    done: bool,
    error: Option<String>,
}

impl StreamTracker {
    /// Takes the bytes of one frame, received at `at` (since the round's
    /// start).
    pub fn feed(&mut self, at: Duration, bytes: &[u8]) {
        for data in self.sse.push(bytes) {
            if self.done {
                self.error
                    .get_or_insert_with(|| format!("event after data: [DONE]: {data}"));
                continue;
            }
            match parse_event(&data) {
                Ok(Event::Done) => self.done = true,
                Ok(Event::Chunk(chunk)) => {
                    if let Some(err) = chunk.error {
                        self.error
                            .get_or_insert_with(|| format!("stream failed midway: {err}"));
                    }
                    if let Some(content) = chunk.content {
                        self.first_token.get_or_insert(at);
                        self.last_token = Some(at);
                        self.content_chunks += 1;
                        let room = TEXT_HEAD_CHARS.saturating_sub(self.text.chars().count());
                        self.text.extend(content.chars().take(room));
                    }
                    if chunk.completion_tokens.is_some() {
                        self.completion_tokens = chunk.completion_tokens;
                        self.prompt_tokens = chunk.prompt_tokens;
                    }
                    if chunk.finish_reason.is_some() {
                        self.finish_reason = chunk.finish_reason;
                    }
                }
                Err(err) => {
                    self.error.get_or_insert(err);
                }
            }
        }
    }

    /// The record of the stream, sent at `sent` and ended at `end` (both
    /// since the round's start). `outcome` is the transport's verdict (an
    /// HTTP status, I/O error or timeout); the stream must also have ended
    /// with `[DONE]` after a usage chunk counting exactly `expected_tokens`
    /// completion tokens, or it is an error.
    pub fn finish(
        self,
        index: usize,
        sent: Duration,
        end: Duration,
        expected_tokens: u64,
        outcome: Result<(), String>,
    ) -> StreamRecord {
        let error = outcome.err().or(self.error).or_else(|| {
            if !self.done {
                Some("the stream ended without data: [DONE]".to_owned())
            } else if self.first_token.is_none() {
                Some("the stream carried no content token".to_owned())
            } else {
                match self.completion_tokens {
                    None => Some("no usage chunk with completion_tokens".to_owned()),
                    Some(n) if n != expected_tokens => Some(format!(
                        "expected exactly {expected_tokens} completion tokens (ignore_eos), got {n}"
                    )),
                    Some(_) => None,
                }
            }
        });
        let decode_tok_s = match (self.completion_tokens, self.first_token, self.last_token) {
            (Some(n), Some(first), Some(last)) if n >= 2 && last > first => {
                Some((n - 1) as f64 / secs(last - first))
            }
            _ => None,
        };
        StreamRecord {
            index,
            sent_s: secs(sent),
            first_token_s: self.first_token.map(secs),
            last_token_s: self.last_token.map(secs),
            end_s: secs(end),
            ttft_ms: self
                .first_token
                .map(|first| secs(first.saturating_sub(sent)) * 1e3),
            completion_tokens: self.completion_tokens,
            prompt_tokens: self.prompt_tokens,
            content_chunks: self.content_chunks,
            decode_tok_s,
            finish_reason: self.finish_reason,
            text_head: self.text,
            error,
        }
    }
}

/// What happened to one stream; times in seconds since the round's start.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StreamRecord {
    /// Which stream (its prompt is [`prompt`]`(index)`).
    pub index: usize,
    /// When its request was sent.
    pub sent_s: f64,
    /// When its first non-empty content chunk arrived.
    pub first_token_s: Option<f64>,
    /// When its last non-empty content chunk arrived.
    pub last_token_s: Option<f64>,
    /// When its body ended.
    pub end_s: f64,
    /// Time to first token: first content chunk minus send, milliseconds.
    pub ttft_ms: Option<f64>,
    /// `usage.completion_tokens` of the final chunk.
    pub completion_tokens: Option<u64>,
    /// `usage.prompt_tokens` of the final chunk.
    pub prompt_tokens: Option<u64>,
    /// Non-empty content chunks received.
    pub content_chunks: u64,
    /// `(tokens − 1) / (last token − first token)`, tokens per second.
    pub decode_tok_s: Option<f64>,
    /// The last `finish_reason` seen.
    pub finish_reason: Option<String>,
    /// The start of the generated text.
    pub text_head: String,
    /// Why the stream does not count, if it does not.
    pub error: Option<String>,
}

impl StreamRecord {
    /// Whether the stream completed as asked.
    pub fn ok(&self) -> bool {
        self.error.is_none()
    }
}

/// Sends one streamed request on `conn` and follows it to its end, or
/// until `timeout`; times are taken against `t0`.
pub async fn run_stream(
    conn: &mut Connection,
    target: &Target,
    index: usize,
    t0: Instant,
    expected_tokens: u64,
    timeout: Duration,
) -> StreamRecord {
    let sent = t0.elapsed();
    let mut tracker = StreamTracker::default();
    let mut head = Vec::new();
    let result = tokio::time::timeout(
        timeout,
        conn.stream(target, |data| {
            tracker.feed(t0.elapsed(), data);
            let room = ERROR_HEAD_BYTES.saturating_sub(head.len());
            head.extend_from_slice(&data[..data.len().min(room)]);
        }),
    )
    .await;
    let end = t0.elapsed();
    let outcome = match result {
        Err(_) => Err(format!("the stream did not end within {timeout:?}")),
        Ok(Err(err)) => Err(format!("I/O error: {err}")),
        Ok(Ok(status)) if !status.is_success() => Err(format!(
            "HTTP {status}: {}",
            String::from_utf8_lossy(&head).trim()
        )),
        Ok(Ok(_)) => Ok(()),
    };
    tracker.finish(index, sent, end, expected_tokens, outcome)
}

/// Runs `n` concurrent streams of `max_tokens` tokens against the chat
/// endpoint `url` and returns their records (in stream order) and the wall
/// time of the round (first send to last end). Connections are opened
/// before the clock starts; failing to open one is an error of the harness.
pub async fn run_round(
    url: &str,
    model: &str,
    n: usize,
    max_tokens: u32,
    timeout: Duration,
) -> anyhow::Result<(Vec<StreamRecord>, Duration)> {
    let mut work = Vec::with_capacity(n);
    for i in 0..n {
        let body = Bytes::from(chat_body(model, &prompt(i), max_tokens));
        let target = Arc::new(Target::new(url, Some(body), &[])?);
        let conn = Connection::open(&target)
            .await
            .with_context(|| format!("opening connection {} of {n}", i + 1))?;
        work.push((conn, target));
    }
    let mut tasks = tokio::task::JoinSet::new();
    let t0 = Instant::now();
    for (i, (mut conn, target)) in work.into_iter().enumerate() {
        tasks.spawn(async move {
            run_stream(&mut conn, &target, i, t0, u64::from(max_tokens), timeout).await
        });
    }
    let mut records = Vec::with_capacity(n);
    while let Some(record) = tasks.join_next().await {
        records.push(record.context("a stream task failed")?);
    }
    let wall = t0.elapsed();
    records.sort_by_key(|r| r.index);
    Ok((records, wall))
}

/// Nearest-rank percentile (`q` in 0–1) of sorted values; `None` when empty.
pub fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    let n = sorted.len();
    if n == 0 {
        return None;
    }
    let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
    sorted.get(rank - 1).copied()
}

/// The figures of one round, over its successful streams.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RoundSummary {
    /// Streams sent.
    pub streams: usize,
    /// Streams that completed as asked.
    pub ok: usize,
    /// Streams that failed (any makes the round's numbers suspect).
    pub errors: usize,
    /// Median time to first token, ms.
    pub ttft_ms_p50: Option<f64>,
    /// 90th percentile of the time to first token, ms.
    pub ttft_ms_p90: Option<f64>,
    /// Longest time to first token, ms.
    pub ttft_ms_max: Option<f64>,
    /// Mean of the per-stream decode rates, tokens/s.
    pub decode_tok_s_mean: Option<f64>,
    /// Slowest per-stream decode rate, tokens/s.
    pub decode_tok_s_min: Option<f64>,
    /// Completion tokens of the successful streams.
    pub tokens: u64,
    /// First send to last end, seconds.
    pub wall_s: f64,
    /// `tokens / wall_s`.
    pub aggregate_tok_s: f64,
    /// The first stream error, for diagnosis.
    pub first_error: Option<String>,
}

/// Summarizes the records of a round that took `wall_s` seconds.
pub fn summarize(records: &[StreamRecord], wall_s: f64) -> RoundSummary {
    let ok: Vec<&StreamRecord> = records.iter().filter(|r| r.ok()).collect();
    let mut ttft: Vec<f64> = ok.iter().filter_map(|r| r.ttft_ms).collect();
    ttft.sort_by(f64::total_cmp);
    let rates: Vec<f64> = ok.iter().filter_map(|r| r.decode_tok_s).collect();
    let tokens: u64 = ok.iter().filter_map(|r| r.completion_tokens).sum();
    RoundSummary {
        streams: records.len(),
        ok: ok.len(),
        errors: records.len() - ok.len(),
        ttft_ms_p50: percentile(&ttft, 0.5),
        ttft_ms_p90: percentile(&ttft, 0.9),
        ttft_ms_max: ttft.last().copied(),
        decode_tok_s_mean: (!rates.is_empty())
            .then(|| rates.iter().sum::<f64>() / rates.len() as f64),
        decode_tok_s_min: rates.iter().copied().min_by(f64::total_cmp),
        tokens,
        wall_s,
        aggregate_tok_s: if wall_s > 0.0 {
            tokens as f64 / wall_s
        } else {
            0.0
        },
        first_error: records
            .iter()
            .find_map(|r| r.error.as_ref().map(|e| format!("stream {}: {e}", r.index))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    fn content(text: &str) -> String {
        format!(
            "data: {}\n\n",
            json!({"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}]})
        )
    }

    fn usage(completion: u64) -> String {
        format!(
            "data: {}\n\n",
            json!({"choices": [], "usage": {"prompt_tokens": 30, "completion_tokens": completion}})
        )
    }

    /// A stream of `tokens` content chunks 10 ms apart, the first at 50 ms.
    fn tracked(tokens: u64, reported: u64, done: bool) -> StreamTracker {
        let mut t = StreamTracker::default();
        t.feed(ms(20), b"data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n");
        for i in 0..tokens {
            t.feed(ms(50 + 10 * i), content(&format!("w{i} ")).as_bytes());
        }
        let finish =
            "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"length\"}]}\n\n";
        let end = format!("{finish}{}", usage(reported));
        let at = ms(50 + 10 * tokens);
        // The end arrives split mid-event.
        let (a, b) = end.split_at(end.len() / 2);
        t.feed(at, a.as_bytes());
        t.feed(at, b.as_bytes());
        if done {
            t.feed(at, b"data: [DONE]\n\n");
        }
        t
    }

    #[test]
    fn records_a_complete_stream() {
        let r = tracked(5, 5, true).finish(3, ms(10), ms(100), 5, Ok(()));
        assert!(r.ok(), "{:?}", r.error);
        assert_eq!(r.index, 3);
        assert_eq!(r.ttft_ms, Some(40.0));
        assert_eq!((r.first_token_s, r.last_token_s), (Some(0.05), Some(0.09)));
        assert_eq!(r.completion_tokens, Some(5));
        assert_eq!(r.prompt_tokens, Some(30));
        assert_eq!(r.content_chunks, 5);
        // 4 tokens after the first in 40 ms.
        assert!((r.decode_tok_s.unwrap() - 100.0).abs() < 1e-9);
        assert_eq!(r.finish_reason.as_deref(), Some("length"));
        assert_eq!(r.text_head, "w0 w1 w2 w3 w4 ");
    }

    #[test]
    fn flags_incomplete_or_wrong_streams() {
        let wrong = tracked(5, 4, true).finish(0, ms(0), ms(100), 5, Ok(()));
        assert!(wrong.error.unwrap().contains("expected exactly 5"));
        let no_done = tracked(5, 5, false).finish(0, ms(0), ms(100), 5, Ok(()));
        assert!(no_done.error.unwrap().contains("[DONE]"));
        let no_usage = {
            let mut t = StreamTracker::default();
            t.feed(ms(5), content("x").as_bytes());
            t.feed(ms(6), b"data: [DONE]\n\n");
            t.finish(0, ms(0), ms(7), 1, Ok(()))
        };
        assert!(no_usage.error.unwrap().contains("usage"));
        let mut failed = tracked(2, 2, false);
        failed.feed(
            ms(80),
            b"data: {\"error\":{\"message\":\"engine stopped\"}}\n\n",
        );
        let failed = failed.finish(0, ms(0), ms(90), 2, Ok(()));
        assert!(failed.error.unwrap().contains("engine stopped"));
        let http = StreamTracker::default().finish(
            1,
            ms(0),
            ms(3),
            5,
            Err("HTTP 429 Too Many Requests".to_owned()),
        );
        assert_eq!(http.error.as_deref(), Some("HTTP 429 Too Many Requests"));
        assert_eq!((http.ttft_ms, http.decode_tok_s), (None, None));
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), Some(5.0));
        assert_eq!(percentile(&v, 0.9), Some(9.0));
        assert_eq!(percentile(&v, 1.0), Some(10.0));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&[7.0], 0.9), Some(7.0));
        assert_eq!(percentile(&[], 0.5), None);
    }

    #[test]
    fn summarizes_a_round() {
        let mut records: Vec<StreamRecord> = (0..4)
            .map(|i| StreamRecord {
                index: i,
                ttft_ms: Some(100.0 * (i + 1) as f64),
                completion_tokens: Some(128),
                decode_tok_s: Some(10.0 * (i + 1) as f64),
                ..StreamRecord::default()
            })
            .collect();
        records[3].error = Some("boom".to_owned());
        let s = summarize(&records, 2.0);
        assert_eq!((s.streams, s.ok, s.errors), (4, 3, 1));
        assert_eq!(s.ttft_ms_p50, Some(200.0));
        assert_eq!(s.ttft_ms_p90, Some(300.0));
        assert_eq!(s.ttft_ms_max, Some(300.0));
        assert_eq!(s.decode_tok_s_mean, Some(20.0));
        assert_eq!(s.decode_tok_s_min, Some(10.0));
        assert_eq!(s.tokens, 384);
        assert_eq!(s.aggregate_tok_s, 192.0);
        assert_eq!(s.first_error.as_deref(), Some("stream 3: boom"));

        let empty = summarize(&[], 0.0);
        assert_eq!((empty.ttft_ms_p50, empty.aggregate_tok_s), (None, 0.0));
    }

    #[test]
    fn request_body_asks_for_exact_greedy_streams() {
        let body: serde_json::Value =
            serde_json::from_str(&chat_body("m", &prompt(7), 128)).unwrap();
        assert_eq!(body["stream"], true);
        assert_eq!(body["stream_options"]["include_usage"], true);
        assert_eq!(body["ignore_eos"], true);
        assert_eq!(body["temperature"], 0);
        assert_eq!(body["max_tokens"], 128);
        assert_eq!(
            body["messages"][0]["content"],
            "Tell me a story about dragon number 7."
        );
    }
}
