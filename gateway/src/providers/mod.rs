//! Upstream providers behind one small object-safe trait.
//!
//! - [`openai`]: any server speaking the OpenAI HTTP API, and Azure OpenAI.
//! - [`anthropic`]: Anthropic's Messages API, translated both ways.
//! - [`local_chat`], [`local_embed`]: the in-process candle engines of the `inference` crate.
//! - [`local_transcribe`]: in-process whisper (the `audio` crate) for the audio endpoints.
//! - [`sse`]: incremental decoding of `text/event-stream` bodies.
//!
//! A provider receives requests whose `model` is already the provider's own model name and
//! returns OpenAI wire types; the pipeline rewrites names, meters usage and talks HTTP to the
//! client. Fallback across deployments is the pipeline's job ([`crate::pipeline`]).

pub mod anthropic;
pub mod local_chat;
pub mod local_diarize;
pub mod local_embed;
pub mod local_transcribe;
pub mod openai;
pub mod sse;

use std::sync::Arc;
use std::time::Duration;

use aigw_models::openai::{
    ChatCompletionChunk, ChatCompletionRequest, ChatCompletionResponse, CompletionRequest,
    CompletionResponse, EmbeddingRequest, EmbeddingResponse, ErrorResponse,
};
use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use http::HeaderMap;

/// A stream of decoded chunks; an `Err` item ends the stream.
pub type ChunkStream<T> = BoxStream<'static, Result<T, ProviderError>>;

/// What went wrong talking to an upstream.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// No connection could be made.
    #[error("cannot connect to upstream: {0}")]
    Connect(String),
    /// The upstream did not answer in time.
    #[error("upstream timed out")]
    Timeout,
    /// The upstream answered with an error status.
    #[error("upstream returned HTTP {status}")]
    Status {
        /// The upstream's status code.
        status: http::StatusCode,
        /// Its error body, when it was OpenAI-shaped.
        body: Option<ErrorResponse>,
        /// Its `Retry-After`, if any.
        retry_after: Option<Duration>,
    },
    /// The upstream's answer could not be understood.
    #[error("invalid upstream response: {0}")]
    InvalidResponse(String),
    /// The connection broke mid-response.
    #[error("upstream connection failed: {0}")]
    Transport(String),
    /// The provider does not serve this kind of request.
    #[error("this model does not support {0}")]
    Unsupported(&'static str),
    /// The request is valid OpenAI but this provider cannot honour part of it.
    #[error("{message}")]
    Rejected {
        /// What is wrong.
        message: String,
        /// The parameter at fault.
        param: Option<String>,
        /// Stable code (`context_length_exceeded`, `unsupported_parameter`, …).
        code: &'static str,
    },
    /// A local engine is at capacity.
    #[error("{0}")]
    Overloaded(String),
    /// A local engine failed.
    #[error("local engine failed: {0}")]
    Engine(String),
}

impl ProviderError {
    /// A 400 about one parameter the provider cannot honour.
    pub fn unsupported_param(param: &str, message: impl Into<String>) -> Self {
        Self::Rejected {
            message: message.into(),
            param: Some(param.to_string()),
            code: "unsupported_parameter",
        }
    }
}

/// Per-call facts a provider may need.
#[derive(Debug, Clone, Default)]
pub struct CallContext {
    /// The gateway's request id, forwarded as `x-request-id`.
    pub request_id: Option<String>,
    /// This deployment's limit on the call, overriding the provider's timeout when set.
    pub timeout: Option<Duration>,
    /// This deployment's extra headers, sent after (and over) the provider's own.
    pub headers: Arc<HeaderMap>,
}

impl CallContext {
    /// A context carrying only the request id.
    pub fn new(request_id: Option<String>) -> Self {
        Self {
            request_id,
            ..Self::default()
        }
    }
}

/// Which audio endpoint a form is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AudioTask {
    /// Speech to text in the spoken language.
    Transcription,
    /// Speech to English text.
    Translation,
    /// Who spoke when (our extension).
    Diarization,
}

impl AudioTask {
    /// The endpoint path below `/v1`.
    pub fn path(self) -> &'static str {
        match self {
            Self::Transcription => "/audio/transcriptions",
            Self::Translation => "/audio/translations",
            Self::Diarization => "/audio/diarizations",
        }
    }
}

/// A parsed audio form: the file and every other field, in order.
#[derive(Debug, Clone)]
pub struct AudioRequest {
    /// Transcription or translation.
    pub task: AudioTask,
    /// Model name (the provider's own, after routing).
    pub model: String,
    /// The uploaded file's name.
    pub file_name: String,
    /// The uploaded file's content type, if given.
    pub file_content_type: Option<String>,
    /// The audio bytes.
    pub file: Bytes,
    /// Other form fields except `model` (`language`, `response_format`, …), repeated ones kept.
    pub fields: Vec<(String, String)>,
}

/// An audio answer, passed through as the upstream produced it (json, text, srt, vtt).
#[derive(Debug, Clone)]
pub struct AudioResponse {
    /// Its content type.
    pub content_type: String,
    /// Its body.
    pub body: Bytes,
    /// Seconds of audio it covers, when the provider knows (the usage of audio models).
    pub audio_secs: Option<f64>,
}

/// An upstream that serves OpenAI-style requests.
#[async_trait]
pub trait Provider: Send + Sync + 'static {
    /// Name for logs and metrics.
    fn name(&self) -> &str;

    /// The exact prompt tokens of a conversation, when this provider knows its model's
    /// tokenizer and chat template (local engines); budgets reserve it instead of an estimate.
    fn chat_prompt_tokens(&self, _messages: &[aigw_models::openai::ChatMessage]) -> Option<u64> {
        None
    }

    /// The exact tokens of a text prompt, when this provider knows its tokenizer.
    fn text_prompt_tokens(&self, _text: &str) -> Option<u64> {
        None
    }

    /// A non-streaming chat completion.
    async fn chat(
        &self,
        _req: ChatCompletionRequest,
        _ctx: &CallContext,
    ) -> Result<ChatCompletionResponse, ProviderError> {
        Err(ProviderError::Unsupported("chat completions"))
    }

    /// A streamed chat completion; returns once the upstream has accepted the request.
    /// The stream always ends with a usage-bearing chunk when the upstream reports usage.
    async fn chat_stream(
        &self,
        _req: ChatCompletionRequest,
        _ctx: &CallContext,
    ) -> Result<ChunkStream<ChatCompletionChunk>, ProviderError> {
        Err(ProviderError::Unsupported("chat completions"))
    }

    /// A legacy text completion.
    async fn completion(
        &self,
        _req: CompletionRequest,
        _ctx: &CallContext,
    ) -> Result<CompletionResponse, ProviderError> {
        Err(ProviderError::Unsupported("text completions"))
    }

    /// A streamed legacy text completion.
    async fn completion_stream(
        &self,
        _req: CompletionRequest,
        _ctx: &CallContext,
    ) -> Result<ChunkStream<CompletionResponse>, ProviderError> {
        Err(ProviderError::Unsupported("text completions"))
    }

    /// Embeddings.
    async fn embeddings(
        &self,
        _req: EmbeddingRequest,
        _ctx: &CallContext,
    ) -> Result<EmbeddingResponse, ProviderError> {
        Err(ProviderError::Unsupported("embeddings"))
    }

    /// Audio transcription or translation.
    async fn audio(
        &self,
        _req: AudioRequest,
        _ctx: &CallContext,
    ) -> Result<AudioResponse, ProviderError> {
        Err(ProviderError::Unsupported("audio transcription"))
    }

    /// Whether the upstream is reachable and accepts our credentials.
    async fn health(&self) -> Result<(), ProviderError>;

    /// A health probe at `path` (relative to the provider's base URL) when a deployment
    /// names one; providers without paths probe as [`Provider::health`] does.
    async fn probe(&self, path: Option<&str>) -> Result<(), ProviderError> {
        let _ = path;
        self.health().await
    }
}
