//! Start-up decisions that `main` delegates: which config, which address, and whether it is
//! safe to serve without API keys there.

use std::net::SocketAddr;
use std::path::Path;

use crate::config::{Config, ConfigError, parse_listen};

/// Loads the config file, or the embedded default when none is given, and applies the
/// listen override (`--listen` / `AIGW_LISTEN`).
pub fn load_config(path: Option<&Path>, listen: Option<&str>) -> Result<Config, ConfigError> {
    let mut config = match path {
        Some(p) => Config::load(p)?,
        None => Config::embedded_default(),
    };
    if let Some(addr) = listen {
        config.server.listen = parse_listen(addr).map_err(|message| ConfigError::Invalid {
            path: "--listen / AIGW_LISTEN".into(),
            message,
        })?;
    }
    Ok(config)
}

/// Refuses to serve if secrets are missing, or if the server would accept unauthenticated
/// requests on a non-loopback address without `--allow-unauthenticated`.
pub fn check_serve_policy(config: &Config, allow_unauthenticated: bool) -> Result<(), String> {
    if !config.missing_env.is_empty() {
        return Err(format!(
            "the config references environment variables that are not set: {}",
            config.missing_env.join(", ")
        ));
    }
    if config.keys.is_empty() && !is_loopback(config.server.listen) && !allow_unauthenticated {
        return Err(format!(
            "refusing to serve {} without API keys: configure [[auth.keys]] or pass --allow-unauthenticated",
            config.server.listen
        ));
    }
    Ok(())
}

fn is_loopback(addr: SocketAddr) -> bool {
    addr.ip().is_loopback()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unauthenticated_public_bind_needs_consent() {
        let mut c = Config::embedded_default();
        assert!(check_serve_policy(&c, false).is_ok());
        c.server.listen = "0.0.0.0:8080".parse().unwrap();
        let err = check_serve_policy(&c, false).unwrap_err();
        assert!(err.contains("--allow-unauthenticated"), "{err}");
        assert!(check_serve_policy(&c, true).is_ok());
    }

    #[test]
    fn listen_override() {
        let c = load_config(None, Some("127.0.0.1:9")).unwrap();
        assert_eq!(c.server.listen.port(), 9);
        assert!(load_config(None, Some("nope")).is_err());
    }
}
