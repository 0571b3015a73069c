//! A sentence-embedding model served in-process (BERT via candle), on blocking threads with a
//! bound on how many batches encode at once.

use std::sync::Arc;

use aigw_inference::embed::{EmbedInput, EmbeddingModel};
use aigw_models::openai::{
    Embedding, EmbeddingInput, EmbeddingRequest, EmbeddingResponse, EmbeddingUsage,
    EmbeddingVector, Extra,
};
use async_trait::async_trait;
use tokio::sync::Semaphore;

use super::{CallContext, Provider, ProviderError};

/// A local embedding model.
pub struct LocalEmbeddingProvider {
    name: String,
    model: Arc<EmbeddingModel>,
    permits: Arc<Semaphore>,
}

impl LocalEmbeddingProvider {
    /// Serves `model` under `name`, with at most `concurrency` batches encoding at once.
    pub fn new(name: impl Into<String>, model: Arc<EmbeddingModel>, concurrency: usize) -> Self {
        Self {
            name: name.into(),
            model,
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
        }
    }
}

#[async_trait]
impl Provider for LocalEmbeddingProvider {
    fn name(&self) -> &str {
        &self.name
    }

    async fn embeddings(
        &self,
        req: EmbeddingRequest,
        _ctx: &CallContext,
    ) -> Result<EmbeddingResponse, ProviderError> {
        let dims = self.model.dimensions();
        if let Some(d) = req.dimensions
            && d as usize != dims
        {
            return Err(ProviderError::unsupported_param(
                "dimensions",
                format!(
                    "This model produces {dims}-dimensional embeddings and cannot shorten them; omit 'dimensions' or set it to {dims}."
                ),
            ));
        }
        let inputs: Vec<EmbedInput> = match req.input {
            EmbeddingInput::Text(t) => vec![EmbedInput::Text(t)],
            EmbeddingInput::Texts(ts) => ts.into_iter().map(EmbedInput::Text).collect(),
            EmbeddingInput::Tokens(ids) => vec![EmbedInput::Tokens(ids)],
            EmbeddingInput::TokenLists(lists) => {
                lists.into_iter().map(EmbedInput::Tokens).collect()
            }
        };
        if inputs.len() > 2048 {
            return Err(ProviderError::unsupported_param(
                "input",
                "At most 2048 inputs per request.",
            ));
        }
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| ProviderError::Engine(e.to_string()))?;
        let model = self.model.clone();
        let out = tokio::task::spawn_blocking(move || model.embed(&inputs))
            .await
            .map_err(|e| ProviderError::Engine(e.to_string()))?
            .map_err(|e| {
                if e.is_input_error() {
                    ProviderError::Rejected {
                        message: e.to_string(),
                        param: Some("input".into()),
                        code: e.kind(),
                    }
                } else {
                    ProviderError::Engine(e.to_string())
                }
            })?;
        Ok(EmbeddingResponse {
            object: "list".into(),
            data: out
                .vectors
                .into_iter()
                .enumerate()
                .map(|(i, v)| Embedding {
                    object: "embedding".into(),
                    index: i as u32,
                    embedding: EmbeddingVector::Float(v),
                })
                .collect(),
            model: req.model,
            usage: EmbeddingUsage {
                prompt_tokens: out.prompt_tokens,
                total_tokens: out.prompt_tokens,
            },
            extra: Extra::new(),
        })
    }

    async fn health(&self) -> Result<(), ProviderError> {
        Ok(())
    }
}
