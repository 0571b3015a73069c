//! The exact-match response cache.
//!
//! A request is looked up under the SHA-256 of its canonical form: the tenant, the kind of
//! request, the alias that serves it and every field that changes the output (messages,
//! sampling parameters, `n`, tools, …), with object keys sorted, but not `model` as typed,
//! `stream`, `stream_options`, `user` or `metadata`. Only deterministic requests
//! (`temperature` 0 or a `seed`) are cached, unless the client sends `x-aigw-cache: force`;
//! `Cache-Control: no-cache` skips the read and `no-store` the write; `x-aigw-cache: off`
//! skips both. Requests asking for log probabilities are never cached.
//!
//! Stored is the whole answer as JSON: a streamed answer is assembled from its chunks first,
//! and only a complete one (every choice ended by `stop` or `tool_calls`) is kept; truncated
//! (`length`), filtered, errored or cut streams are not. A hit for a plain request returns
//! the stored JSON; for a stream it is replayed as SSE chunks. Identical requests arriving
//! while one is in flight wait for it (up to `cache.coalesce_wait_secs`) and are served from
//! its entry. The cache fails open: when the store is unreachable the request goes upstream
//! and the failure is counted.
//!
//! Embeddings are cached per input: a request with some inputs seen before computes only the
//! others.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError};

use aigw_models::openai::{
    ChatChoice, ChatCompletionChunk, ChatCompletionRequest, ChatCompletionResponse, ChatDelta,
    ChatMessage, ChunkChoice, CompletionChoice, CompletionRequest, CompletionResponse,
    FinishReason, FunctionCall, FunctionCallDelta, MessageContent, Role, ToolCall, ToolCallDelta,
};
use aigw_state::cache::ResponseCache;
use bytes::Bytes;
use futures::future::BoxFuture;
use http::HeaderMap;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::config::CacheConfig;
use crate::metrics::Metrics;
use crate::pipeline::Generation;

/// Response header saying how the cache treated a request.
pub const STATUS_HEADER: &str = "x-cache";
/// Request header: `force` caches a non-deterministic request, `off` skips the cache.
pub const CONTROL_HEADER: &str = "x-aigw-cache";

/// How the cache treated a request (the `x-cache` header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Served from the cache.
    Hit,
    /// Looked up, not found.
    Miss,
    /// Not looked up.
    Bypass,
}

impl Status {
    /// The header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Miss => "miss",
            Self::Bypass => "bypass",
        }
    }
}

/// What the cache may do with one request.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The store key (`response:{sha256}`).
    pub key: String,
    /// Whether to look it up.
    pub read: bool,
    /// Whether to store the answer.
    pub write: bool,
}

/// The outcome of a lookup.
pub enum Lookup {
    /// The stored answer.
    Hit(Bytes),
    /// Not stored. `Some`: this request is the one that computes it; identical requests
    /// wait until the guard is dropped (after its answer is stored, or on failure).
    Miss(Option<FlightGuard>),
}

/// Held by the request computing an answer others wait for.
pub struct FlightGuard {
    cache: Arc<Cache>,
    key: String,
    _done: watch::Sender<()>,
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        lock(&self.cache.flights).remove(&self.key);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The response cache of a server.
pub struct Cache {
    store: Arc<dyn ResponseCache>,
    config: CacheConfig,
    metrics: Metrics,
    flights: Mutex<HashMap<String, watch::Receiver<()>>>,
}

impl Cache {
    /// A cache over `store`.
    pub fn new(store: Arc<dyn ResponseCache>, config: CacheConfig, metrics: Metrics) -> Self {
        Self {
            store,
            config,
            metrics,
            flights: Mutex::new(HashMap::new()),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &CacheConfig {
        &self.config
    }

    /// What the cache may do with a request of `kind` for `alias`; `None` when it does not
    /// apply at all (the cache is off, the request is not deterministic, or the client said
    /// neither read nor write).
    pub fn plan(
        &self,
        headers: &HeaderMap,
        tenant: &str,
        kind: &str,
        alias: &str,
        request: &impl Serialize,
        deterministic: bool,
    ) -> Option<Plan> {
        if !self.config.enabled {
            return None;
        }
        let control = header_tokens(headers, CONTROL_HEADER);
        if control.iter().any(|t| t == "off") {
            return None;
        }
        if !deterministic && !control.iter().any(|t| t == "force") {
            return None;
        }
        let cache_control = header_tokens(headers, http::header::CACHE_CONTROL.as_str());
        let read = !cache_control.iter().any(|t| t == "no-cache");
        let write = !cache_control.iter().any(|t| t == "no-store");
        if !read && !write {
            return None;
        }
        let value = serde_json::to_value(request).ok()?;
        Some(Plan {
            key: request_key(tenant, kind, alias, value),
            read,
            write,
        })
    }

    /// Looks `plan` up; on a miss, joins an identical request in flight, or becomes the one
    /// others wait for.
    pub async fn lookup(self: &Arc<Self>, plan: &Plan) -> Lookup {
        if let Some(hit) = self.get(&plan.key).await {
            return Lookup::Hit(hit);
        }
        if !plan.write {
            return Lookup::Miss(None);
        }
        let waiting = {
            let mut flights = lock(&self.flights);
            match flights.get(&plan.key) {
                Some(rx) => Some(rx.clone()),
                None => {
                    let (tx, rx) = watch::channel(());
                    flights.insert(plan.key.clone(), rx);
                    drop(flights);
                    return Lookup::Miss(Some(FlightGuard {
                        cache: Arc::clone(self),
                        key: plan.key.clone(),
                        _done: tx,
                    }));
                }
            }
        };
        if let Some(mut rx) = waiting {
            // The leader's sender is dropped when it is done: `changed` then fails.
            let _ = tokio::time::timeout(self.config.coalesce_wait, rx.changed()).await;
            self.metrics.cache.with_label_values(&["coalesced"]).inc();
            if let Some(hit) = self.get(&plan.key).await {
                return Lookup::Hit(hit);
            }
        }
        Lookup::Miss(None)
    }

    /// The live entry under `key`; a store failure is counted and reads as a miss.
    pub async fn get(&self, key: &str) -> Option<Bytes> {
        match self.store.get(key).await {
            Ok(v) => v,
            Err(e) => {
                self.metrics
                    .state_errors
                    .with_label_values(&["cache"])
                    .inc();
                tracing::warn!(error = %e, "cache read failed: going upstream");
                None
            }
        }
    }

    /// Stores `value` under `key`, then releases `guard`'s waiters. Awaited before the
    /// answer is sent, so that a client asking again at once finds it.
    pub async fn put(&self, key: &str, value: Bytes, guard: Option<FlightGuard>) {
        if value.len() <= self.config.max_entry_bytes {
            match self.store.put(key, value, self.config.ttl).await {
                Ok(()) => self.metrics.cache.with_label_values(&["stored"]).inc(),
                Err(e) => {
                    self.metrics
                        .state_errors
                        .with_label_values(&["cache"])
                        .inc();
                    tracing::warn!(error = %e, "cache write failed");
                }
            }
        }
        drop(guard);
    }

    /// Counts a request's cache status.
    pub fn count(&self, status: Status) {
        self.metrics
            .cache
            .with_label_values(&[status.as_str()])
            .inc();
    }
}

/// The comma-separated, lower-cased tokens of every `name` header.
fn header_tokens(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// Fields that never change the output.
const IGNORED: &[&str] = &["model", "stream", "stream_options", "user", "metadata"];

/// `response:{sha256}` of the canonical request.
pub fn request_key(tenant: &str, kind: &str, alias: &str, mut request: Value) -> String {
    if let Value::Object(map) = &mut request {
        for field in IGNORED {
            map.remove(*field);
        }
    }
    let mut text = String::with_capacity(256);
    text.push_str("aigw-cache-v1\n");
    for part in [tenant, kind, alias] {
        text.push_str(&serde_json::to_string(part).unwrap_or_default());
        text.push('\n');
    }
    canonical(&request, &mut text);
    format!("response:{}", hex::encode(Sha256::digest(text.as_bytes())))
}

/// Writes `value` as JSON with every object's keys sorted.
fn canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(out, "{}:", Value::String(k.clone()));
                canonical(&map[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(v, out);
            }
            out.push(']');
        }
        other => {
            let _ = write!(out, "{other}");
        }
    }
}

/// A generation request whose answers can be cached.
pub trait Cacheable: Generation<Full: DeserializeOwned, Chunk: Clone> {
    /// Names the kind of request in the key.
    const KIND: &'static str;
    /// Whether the same request gives the same answer (temperature 0 or a seed), and asks
    /// for nothing the cache does not keep (log probabilities).
    fn deterministic(&self) -> bool;
    /// Whether `full` is a complete answer worth keeping.
    fn storable(full: &Self::Full) -> bool;
    /// The whole answer of a stream that ended cleanly, if it was complete.
    fn assemble(chunks: Vec<Self::Chunk>) -> Option<Self::Full>;
    /// A stored answer as stream chunks, the usage chunk (if any) last.
    fn replay(full: Self::Full) -> Vec<Self::Chunk>;
}

fn complete(reason: Option<&FinishReason>) -> bool {
    matches!(reason, Some(FinishReason::Stop | FinishReason::ToolCalls))
}

impl Cacheable for ChatCompletionRequest {
    const KIND: &'static str = "chat";

    fn deterministic(&self) -> bool {
        (self.temperature == Some(0.0) || self.seed.is_some())
            && self.logprobs != Some(true)
            && self.top_logprobs.is_none()
    }

    fn storable(full: &ChatCompletionResponse) -> bool {
        !full.choices.is_empty()
            && full
                .choices
                .iter()
                .all(|c| complete(c.finish_reason.as_ref()) && c.logprobs.is_none())
    }

    fn assemble(chunks: Vec<ChatCompletionChunk>) -> Option<ChatCompletionResponse> {
        #[derive(Default)]
        struct Building {
            text: Option<String>,
            refusal: Option<String>,
            tools: Vec<ToolCall>,
            finish: Option<FinishReason>,
        }
        let first = chunks.first()?;
        let (id, created, model) = (first.id.clone(), first.created, first.model.clone());
        let mut fingerprint = None;
        let mut usage = None;
        let mut choices: Vec<Building> = Vec::new();
        for chunk in chunks {
            fingerprint = chunk.system_fingerprint.or(fingerprint);
            usage = chunk.usage.or(usage);
            for c in chunk.choices {
                if c.logprobs.is_some() {
                    return None;
                }
                let i = c.index as usize;
                if i >= choices.len() {
                    choices.resize_with(i + 1, Building::default);
                }
                let b = &mut choices[i];
                if let Some(t) = c.delta.content {
                    b.text.get_or_insert_with(String::new).push_str(&t);
                }
                if let Some(t) = c.delta.refusal {
                    b.refusal.get_or_insert_with(String::new).push_str(&t);
                }
                for d in c.delta.tool_calls.into_iter().flatten() {
                    let j = d.index as usize;
                    if j >= b.tools.len() {
                        b.tools.resize_with(j + 1, || ToolCall {
                            id: String::new(),
                            kind: "function".into(),
                            function: FunctionCall {
                                name: String::new(),
                                arguments: String::new(),
                            },
                        });
                    }
                    let call = &mut b.tools[j];
                    if let Some(id) = d.id {
                        call.id = id;
                    }
                    if let Some(kind) = d.kind {
                        call.kind = kind;
                    }
                    if let Some(f) = d.function {
                        if let Some(name) = f.name {
                            call.function.name.push_str(&name);
                        }
                        if let Some(args) = f.arguments {
                            call.function.arguments.push_str(&args);
                        }
                    }
                }
                if c.finish_reason.is_some() {
                    b.finish = c.finish_reason;
                }
            }
        }
        let choices = choices
            .into_iter()
            .enumerate()
            .map(|(i, b)| ChatChoice {
                index: i as u32,
                message: ChatMessage {
                    role: Role::Assistant,
                    content: b.text.map(MessageContent::Text),
                    name: None,
                    tool_calls: (!b.tools.is_empty()).then_some(b.tools),
                    tool_call_id: None,
                    refusal: b.refusal,
                    extra: Default::default(),
                },
                finish_reason: b.finish,
                logprobs: None,
                extra: Default::default(),
            })
            .collect();
        Some(ChatCompletionResponse {
            id,
            object: "chat.completion".into(),
            created,
            model,
            choices,
            usage,
            system_fingerprint: fingerprint,
            extra: Default::default(),
        })
    }

    fn replay(full: ChatCompletionResponse) -> Vec<ChatCompletionChunk> {
        let chunk = |choices: Vec<ChunkChoice>| ChatCompletionChunk {
            id: full.id.clone(),
            object: "chat.completion.chunk".into(),
            created: full.created,
            model: full.model.clone(),
            choices,
            usage: None,
            system_fingerprint: full.system_fingerprint.clone(),
            extra: Default::default(),
        };
        let choice = |index: u32, delta: ChatDelta, finish: Option<FinishReason>| ChunkChoice {
            index,
            delta,
            finish_reason: finish,
            logprobs: None,
            extra: Default::default(),
        };
        let mut out = Vec::with_capacity(full.choices.len() * 2 + 1);
        for c in &full.choices {
            let m = &c.message;
            out.push(chunk(vec![choice(
                c.index,
                ChatDelta {
                    role: Some(Role::Assistant),
                    content: Some(String::new()),
                    ..Default::default()
                },
                None,
            )]));
            let text = m.content.as_ref().map(MessageContent::joined_text);
            let tools = m.tool_calls.as_ref().map(|calls| {
                calls
                    .iter()
                    .enumerate()
                    .map(|(j, t)| ToolCallDelta {
                        index: j as u32,
                        id: Some(t.id.clone()),
                        kind: Some(t.kind.clone()),
                        function: Some(FunctionCallDelta {
                            name: Some(t.function.name.clone()),
                            arguments: Some(t.function.arguments.clone()),
                        }),
                    })
                    .collect()
            });
            if text.as_deref().is_some_and(|t| !t.is_empty())
                || tools.is_some()
                || m.refusal.is_some()
            {
                out.push(chunk(vec![choice(
                    c.index,
                    ChatDelta {
                        content: text.filter(|t| !t.is_empty()),
                        tool_calls: tools,
                        refusal: m.refusal.clone(),
                        ..Default::default()
                    },
                    None,
                )]));
            }
            out.push(chunk(vec![choice(
                c.index,
                ChatDelta::default(),
                c.finish_reason.clone(),
            )]));
        }
        if let Some(usage) = &full.usage {
            let mut last = chunk(Vec::new());
            last.usage = Some(usage.clone());
            out.push(last);
        }
        out
    }
}

impl Cacheable for CompletionRequest {
    const KIND: &'static str = "completion";

    fn deterministic(&self) -> bool {
        (self.temperature == Some(0.0) || self.seed.is_some())
            && self.logprobs.is_none()
            && self.best_of.is_none_or(|b| b <= self.n.unwrap_or(1))
    }

    fn storable(full: &CompletionResponse) -> bool {
        !full.choices.is_empty()
            && full
                .choices
                .iter()
                .all(|c| complete(c.finish_reason.as_ref()) && c.logprobs.is_none())
    }

    fn assemble(chunks: Vec<CompletionResponse>) -> Option<CompletionResponse> {
        let first = chunks.first()?;
        let mut full = CompletionResponse {
            id: first.id.clone(),
            object: "text_completion".into(),
            created: first.created,
            model: first.model.clone(),
            choices: Vec::new(),
            usage: None,
            system_fingerprint: None,
            extra: Default::default(),
        };
        for chunk in chunks {
            full.usage = chunk.usage.or(full.usage);
            full.system_fingerprint = chunk.system_fingerprint.or(full.system_fingerprint);
            for c in chunk.choices {
                if c.logprobs.is_some() {
                    return None;
                }
                let i = c.index as usize;
                if i >= full.choices.len() {
                    full.choices.resize_with(i + 1, || CompletionChoice {
                        text: String::new(),
                        index: 0,
                        logprobs: None,
                        finish_reason: None,
                        extra: Default::default(),
                    });
                }
                let b = &mut full.choices[i];
                b.index = c.index;
                b.text.push_str(&c.text);
                if c.finish_reason.is_some() {
                    b.finish_reason = c.finish_reason;
                }
            }
        }
        Some(full)
    }

    fn replay(full: CompletionResponse) -> Vec<CompletionResponse> {
        let mut out: Vec<CompletionResponse> = full
            .choices
            .iter()
            .map(|c| CompletionResponse {
                id: full.id.clone(),
                object: "text_completion".into(),
                created: full.created,
                model: full.model.clone(),
                choices: vec![c.clone()],
                usage: None,
                system_fingerprint: full.system_fingerprint.clone(),
                extra: Default::default(),
            })
            .collect();
        if let Some(usage) = full.usage {
            out.push(CompletionResponse {
                id: full.id,
                object: "text_completion".into(),
                created: full.created,
                model: full.model,
                choices: Vec::new(),
                usage: Some(usage),
                system_fingerprint: full.system_fingerprint,
                extra: Default::default(),
            });
        }
        out
    }
}

/// Bytes of a stored answer.
pub fn encode<T: Serialize>(full: &T) -> Option<Bytes> {
    serde_json::to_vec(full).ok().map(Bytes::from)
}

/// Collects a stream's chunks so that its whole answer can be stored once it ends cleanly.
pub struct Capture<C> {
    chunks: Vec<C>,
    bytes: usize,
    limit: usize,
    done: Option<CaptureDone<C>>,
}

type CaptureDone<C> = Box<dyn FnOnce(Vec<C>) -> BoxFuture<'static, ()> + Send>;

impl<C> Capture<C> {
    /// Runs `done` with every chunk when the stream ends cleanly (before its `[DONE]` is
    /// sent); gives up past `limit` bytes of chunks.
    pub fn new(
        limit: usize,
        done: impl FnOnce(Vec<C>) -> BoxFuture<'static, ()> + Send + 'static,
    ) -> Self {
        Self {
            chunks: Vec::new(),
            bytes: 0,
            limit,
            done: Some(Box::new(done)),
        }
    }

    /// Keeps one chunk of `size` bytes; `false` once the capture gave up.
    pub fn push(&mut self, chunk: C, size: usize) -> bool {
        self.bytes += size;
        if self.bytes > self.limit {
            self.done = None;
            self.chunks = Vec::new();
            return false;
        }
        self.chunks.push(chunk);
        true
    }

    /// The stream ended cleanly.
    pub async fn finish(mut self) {
        if let Some(done) = self.done.take() {
            done(std::mem::take(&mut self.chunks)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn key(v: Value) -> String {
        request_key("t", "chat", "narrator", v)
    }

    #[test]
    fn key_ignores_order_stream_and_user() {
        let a = key(
            json!({"model": "x", "messages": [{"role": "user", "content": "hi"}],
            "temperature": 0.0, "stream": true, "user": "u1", "stream_options": {"include_usage": true}}),
        );
        let b = key(
            json!({"temperature": 0.0, "messages": [{"content": "hi", "role": "user"}],
            "model": "y"}),
        );
        assert_eq!(a, b);
        assert!(a.starts_with("response:") && a.len() == "response:".len() + 64);
    }

    #[test]
    fn key_changes_with_what_changes_output() {
        let base = json!({"messages": [{"role": "user", "content": "hi"}], "temperature": 0.0});
        let k = key(base.clone());
        for (field, value) in [
            ("n", json!(2)),
            ("max_tokens", json!(5)),
            (
                "tools",
                json!([{"type": "function", "function": {"name": "roll"}}]),
            ),
            ("seed", json!(1)),
        ] {
            let mut v = base.clone();
            v[field] = value;
            assert_ne!(key(v), k, "{field}");
        }
        assert_ne!(request_key("other", "chat", "narrator", base.clone()), k);
        assert_ne!(request_key("t", "chat", "other", base), k);
    }

    fn chunk(v: Value) -> ChatCompletionChunk {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_stream_assembles_and_replays() {
        let base =
            json!({"id": "c1", "object": "chat.completion.chunk", "created": 5, "model": "m"});
        let with = |extra: Value| {
            let mut v = base.clone();
            v.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            chunk(v)
        };
        let chunks = vec![
            with(
                json!({"choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"}}]}),
            ),
            with(json!({"choices": [{"index": 0, "delta": {"content": "lo"}}]})),
            with(json!({"choices": [{"index": 0, "delta": {"tool_calls": [
                {"index": 0, "id": "call_1", "type": "function", "function": {"name": "roll", "arguments": "{\"d\":"}}]}}]})),
            with(json!({"choices": [{"index": 0, "delta": {"tool_calls": [
                {"index": 0, "function": {"arguments": "20}"}}]}, "finish_reason": "tool_calls"}]})),
            with(
                json!({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}),
            ),
        ];
        let full = ChatCompletionRequest::assemble(chunks).unwrap();
        assert!(ChatCompletionRequest::storable(&full));
        let m = &full.choices[0].message;
        assert_eq!(m.content.as_ref().unwrap().joined_text(), "Hello");
        let call = &m.tool_calls.as_ref().unwrap()[0];
        assert_eq!(
            (call.id.as_str(), call.function.arguments.as_str()),
            ("call_1", "{\"d\":20}")
        );
        assert_eq!(full.usage.as_ref().unwrap().total_tokens, 7);

        let replayed = ChatCompletionRequest::replay(full.clone());
        assert!(replayed.last().unwrap().usage.is_some());
        let again = ChatCompletionRequest::assemble(replayed).unwrap();
        assert_eq!(again, full);
    }

    #[test]
    fn truncated_answers_are_not_stored() {
        let full: ChatCompletionResponse = serde_json::from_value(json!({
            "id": "c", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "x"}, "finish_reason": "length"}]
        }))
        .unwrap();
        assert!(!ChatCompletionRequest::storable(&full));
        let cut = vec![chunk(
            json!({"id": "c", "object": "chat.completion.chunk", "created": 1,
            "model": "m", "choices": [{"index": 0, "delta": {"content": "x"}}]}),
        )];
        let partial = ChatCompletionRequest::assemble(cut).unwrap();
        assert!(!ChatCompletionRequest::storable(&partial));
    }

    #[test]
    fn determinism() {
        let req = |v: Value| -> ChatCompletionRequest {
            let mut base = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
            base.as_object_mut()
                .unwrap()
                .extend(v.as_object().unwrap().clone());
            serde_json::from_value(base).unwrap()
        };
        assert!(req(json!({"temperature": 0})).deterministic());
        assert!(req(json!({"seed": 7, "temperature": 0.8})).deterministic());
        assert!(!req(json!({})).deterministic());
        assert!(!req(json!({"temperature": 0, "logprobs": true})).deterministic());
    }
}
