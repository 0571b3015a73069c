//! Model aliases → where they are served. One deployment per alias for now; the routing
//! issue turns a [`Route`] into ordered groups of weighted deployments.

use std::collections::HashMap;
use std::sync::Arc;

use aigw_models::openai::{Model, ModelList};

use crate::auth::Principal;
use crate::config::ModelConfig;
use crate::error::GatewayError;
use crate::providers::Provider;

/// Where one alias is served.
#[derive(Clone)]
pub struct Route {
    /// The name clients use.
    pub alias: Arc<str>,
    /// The provider's own model name.
    pub upstream_model: String,
    /// The provider.
    pub provider: Arc<dyn Provider>,
    /// Shown as `owned_by`.
    pub owned_by: String,
}

/// Every alias the server knows, in configuration order.
#[derive(Clone, Default)]
pub struct ModelRoutes {
    by_alias: HashMap<Arc<str>, Route>,
    order: Vec<Arc<str>>,
    created: u64,
}

impl ModelRoutes {
    /// Builds the table from config, resolving providers by name.
    pub fn new(
        models: &[ModelConfig],
        providers: &HashMap<String, Arc<dyn Provider>>,
        created: u64,
    ) -> Result<Self, String> {
        let mut routes = Self {
            created,
            ..Self::default()
        };
        for m in models {
            let provider = providers.get(&m.provider).ok_or_else(|| {
                format!(
                    "model '{}' names unknown provider '{}'",
                    m.alias, m.provider
                )
            })?;
            let alias: Arc<str> = m.alias.as_str().into();
            routes.order.push(alias.clone());
            routes.by_alias.insert(
                alias.clone(),
                Route {
                    alias,
                    upstream_model: m.upstream_model.clone(),
                    provider: provider.clone(),
                    owned_by: m.owned_by.clone(),
                },
            );
        }
        Ok(routes)
    }

    /// The route of `alias` if it exists and `principal` may use it.
    pub fn resolve(&self, principal: &Principal, alias: &str) -> Result<&Route, GatewayError> {
        match self.by_alias.get(alias) {
            Some(route) if principal.may_use(alias) => Ok(route),
            _ => Err(GatewayError::ModelNotFound(alias.to_string())),
        }
    }

    /// The models `principal` may use, as `/v1/models` lists them.
    pub fn list(&self, principal: &Principal) -> ModelList {
        ModelList::new(
            self.order
                .iter()
                .filter(|a| principal.may_use(a))
                .filter_map(|a| self.by_alias.get(a))
                .map(|r| Model::new(&*r.alias, self.created, &r.owned_by))
                .collect(),
        )
    }
}
