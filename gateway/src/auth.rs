//! API keys → principals. Keys are stored as SHA-256 digests; a request presents its key as
//! `Authorization: Bearer …` (OpenAI SDKs) or `api-key: …` (Azure-style clients).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::HeaderMap;
use sha2::{Digest, Sha256};

use crate::config::ApiKeyConfig;
use crate::error::GatewayError;
use crate::state::AppState;

/// SHA-256 of an API key, the form in which keys are kept.
pub fn hash_key(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Who is calling: the key's name, its tenant and the models it may use.
#[derive(Debug, Clone)]
pub struct Principal {
    /// Key name (or `anonymous` when auth is off).
    pub key_name: Arc<str>,
    /// Tenant the key belongs to.
    pub tenant: Arc<str>,
    /// Aliases the key may use; `None` means all.
    pub models: Option<Arc<[String]>>,
    /// The key's budget policy, if it names one.
    pub policy: Option<Arc<str>>,
    /// Requests per minute allowed to the key.
    pub requests_per_minute: Option<u64>,
    /// Tokens per minute allowed to the key.
    pub tokens_per_minute: Option<u64>,
}

impl Principal {
    /// The principal of requests when no keys are configured.
    pub fn anonymous() -> Self {
        Self {
            key_name: "anonymous".into(),
            tenant: "default".into(),
            models: None,
            policy: None,
            requests_per_minute: None,
            tokens_per_minute: None,
        }
    }

    /// Whether this principal may use `alias`.
    pub fn may_use(&self, alias: &str) -> bool {
        self.models
            .as_ref()
            .is_none_or(|m| m.iter().any(|x| x == alias))
    }
}

/// The configured keys, by digest.
#[derive(Debug, Default)]
pub struct KeyStore {
    by_digest: HashMap<[u8; 32], Principal>,
    enabled: bool,
}

impl KeyStore {
    /// Builds the store; keys whose secret is missing are skipped (and never match).
    pub fn new(keys: &[ApiKeyConfig]) -> Self {
        let by_digest = keys
            .iter()
            .filter_map(|k| {
                let digest = k.sha256?;
                let principal = Principal {
                    key_name: k.name.as_str().into(),
                    tenant: k.tenant.as_str().into(),
                    models: k.models.as_ref().map(|m| m.clone().into()),
                    policy: k.policy.as_deref().map(Into::into),
                    requests_per_minute: k.requests_per_minute,
                    tokens_per_minute: k.tokens_per_minute,
                };
                Some((digest, principal))
            })
            .collect();
        Self {
            by_digest,
            enabled: !keys.is_empty(),
        }
    }

    /// Whether requests must present a key.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Resolves the principal of a request from its headers.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, GatewayError> {
        if !self.enabled {
            return Ok(Principal::anonymous());
        }
        let key = presented_key(headers).ok_or_else(|| {
            GatewayError::Unauthorized(
                "You didn't provide an API key. Provide it in the Authorization header (Bearer auth).".into(),
            )
        })?;
        self.by_digest
            .get(&hash_key(key))
            .cloned()
            .ok_or_else(|| GatewayError::Unauthorized("Incorrect API key provided.".into()))
    }
}

fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(value) = headers.get(http::header::AUTHORIZATION) {
        let value = value.to_str().ok()?.trim();
        let (scheme, key) = value.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| key.trim())
            .filter(|k| !k.is_empty());
    }
    headers
        .get("api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|k| !k.is_empty())
}

/// Middleware: authenticates the request and puts its [`Principal`] in the extensions.
pub async fn require_key(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    match state.keys().authenticate(req.headers()) {
        Ok(principal) => {
            req.extensions_mut().insert(principal);
            next.run(req).await
        }
        Err(err) => err.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> KeyStore {
        KeyStore::new(&[ApiKeyConfig {
            name: "gm".into(),
            sha256: Some(hash_key("sk-good")),
            tenant: "t1".into(),
            models: Some(vec!["chat".into()]),
            policy: None,
            requests_per_minute: None,
            tokens_per_minute: None,
        }])
    }

    fn headers(name: &str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
        h
    }

    #[test]
    fn bearer_and_api_key_headers() {
        let s = store();
        let p = s
            .authenticate(&headers("authorization", "Bearer sk-good"))
            .unwrap();
        assert_eq!(&*p.tenant, "t1");
        assert!(p.may_use("chat") && !p.may_use("other"));
        assert!(s.authenticate(&headers("api-key", "sk-good")).is_ok());
        assert!(
            s.authenticate(&headers("authorization", "Bearer sk-bad"))
                .is_err()
        );
        assert!(
            s.authenticate(&headers("authorization", "Basic sk-good"))
                .is_err()
        );
        assert!(s.authenticate(&HeaderMap::new()).is_err());
    }

    #[test]
    fn disabled_store_lets_everyone_in() {
        let p = KeyStore::new(&[]).authenticate(&HeaderMap::new()).unwrap();
        assert!(p.may_use("anything"));
    }
}
