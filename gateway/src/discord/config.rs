//! The `[discord]` section: the application's identity, where its API lives, and how its
//! channels use the gateway (which alias answers, which tenant and budget policy pay).

use std::collections::HashSet;
use std::time::Duration;

use serde::Deserialize;

use crate::config::{BudgetsConfig, ConfigError};

/// Discord's REST API, version 10.
pub const DEFAULT_API_BASE_URL: &str = "https://discord.com/api/v10";
/// How far a request's signature timestamp may be from now, by default.
pub const DEFAULT_TIMESTAMP_WINDOW_SECS: u64 = 60;

/// `[discord]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDiscord {
    application_id: String,
    public_key: String,
    bot_token_env: Option<String>,
    api_base_url: Option<String>,
    model: String,
    tenant: Option<String>,
    policy: Option<String>,
    timestamp_window_secs: Option<u64>,
    guild_id: Option<String>,
    system_prompt: Option<String>,
    max_tokens: Option<u32>,
    temperature: Option<f64>,
    voice: Option<RawVoice>,
}

/// Reads a secret's env var (`name`, for the config key `path`), recording it when unset.
pub type EnvLookup<'a> = dyn FnMut(&str, &str) -> Result<Option<String>, ConfigError> + 'a;

/// `[discord.voice]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVoice {
    bridge_url: String,
    bridge_token_env: Option<String>,
    transcript_lines: Option<usize>,
    transcript_ttl_secs: Option<u64>,
}

/// Lines a voice session's transcript keeps, by default.
pub const DEFAULT_TRANSCRIPT_LINES: usize = 2000;
/// How long a quiet voice session's transcript is kept, by default (a day).
pub const DEFAULT_TRANSCRIPT_TTL_SECS: u64 = 24 * 3600;

/// The validated `[discord.voice]` section: where the voice bridge listens, the secret both
/// sides present, and how much transcript the gateway keeps.
#[derive(Clone)]
pub struct VoiceConfig {
    /// The bridge's control API (`/listen` and `/stop` go there), without a trailing slash.
    pub bridge_url: String,
    /// The env var holding the shared secret.
    pub bridge_token_env: String,
    /// The secret: the gateway sends it to the bridge, the bridge sends it with transcript
    /// lines. `None` when the variable is unset: voice commands and lines are then refused.
    pub bridge_token: Option<String>,
    /// Newest lines kept per channel.
    pub transcript_lines: usize,
    /// How long a transcript outlives its last line.
    pub transcript_ttl: Duration,
}

impl std::fmt::Debug for VoiceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VoiceConfig")
            .field("bridge_url", &self.bridge_url)
            .field("bridge_token_env", &self.bridge_token_env)
            .field("bridge_token", &self.bridge_token.as_ref().map(|_| "…"))
            .field("transcript_lines", &self.transcript_lines)
            .field("transcript_ttl", &self.transcript_ttl)
            .finish()
    }
}

/// The validated `[discord]` section.
#[derive(Debug, Clone)]
pub struct DiscordConfig {
    /// The application's id (a snowflake).
    pub application_id: String,
    /// The application's Ed25519 public key, which signs every interaction.
    pub public_key: [u8; 32],
    /// The env var holding the bot token. Only `aigw discord register-commands` (and later
    /// the voice bridge) reads it: answering interactions needs no token.
    pub bot_token_env: String,
    /// Discord's REST API, without a trailing slash.
    pub api_base_url: String,
    /// The chat alias `/ask` and `/recap` use.
    pub model: String,
    /// The tenant of the channel sessions.
    pub tenant: String,
    /// The channel sessions' budget policy; `None`: `budgets.default_policy`.
    pub policy: Option<String>,
    /// How far a signature timestamp may be from now (either way).
    pub timestamp_window: Duration,
    /// Where `register-commands` puts the commands by default: this guild, else global.
    pub guild_id: Option<String>,
    /// A system message put before every `/ask` prompt.
    pub system_prompt: Option<String>,
    /// `max_tokens` of `/ask` and `/recap`.
    pub max_tokens: Option<u32>,
    /// `temperature` of `/ask` and `/recap` (0 makes answers cacheable).
    pub temperature: Option<f64>,
    /// The voice bridge (`/listen`, `/stop`, transcripts), when configured.
    pub voice: Option<VoiceConfig>,
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        path: format!("discord.{key}"),
        message: message.into(),
    }
}

/// `url` without a trailing slash, if it is an http(s) URL that can be a base; else the
/// error for config key `key`.
fn http_url(key: &str, url: &str) -> Result<String, ConfigError> {
    let url = url.trim_end_matches('/').to_string();
    let parsed = reqwest::Url::parse(&url).map_err(|e| invalid(key, format!("not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.cannot_be_a_base() {
        return Err(invalid(key, "must be an http:// or https:// URL"));
    }
    Ok(url)
}

/// Whether `id` looks like a Discord snowflake (a decimal id).
pub fn is_snowflake(id: &str) -> bool {
    !id.is_empty() && id.len() <= 20 && id.bytes().all(|b| b.is_ascii_digit())
}

impl RawDiscord {
    /// Validates the section against the served aliases and the budget policies.
    pub fn validate(
        self,
        aliases: &HashSet<String>,
        budgets: &BudgetsConfig,
        env: &mut EnvLookup<'_>,
    ) -> Result<DiscordConfig, ConfigError> {
        if !is_snowflake(&self.application_id) {
            return Err(invalid(
                "application_id",
                "must be the application's id (digits)",
            ));
        }
        let mut public_key = [0u8; 32];
        hex::decode_to_slice(self.public_key.trim(), &mut public_key).map_err(|_| {
            invalid(
                "public_key",
                "must be the application's public key: 64 hex digits",
            )
        })?;
        if ed25519_dalek::VerifyingKey::from_bytes(&public_key).is_err() {
            return Err(invalid("public_key", "is not a valid Ed25519 public key"));
        }
        let bot_token_env = self
            .bot_token_env
            .unwrap_or_else(|| "DISCORD_BOT_TOKEN".into());
        let env_ok = !bot_token_env.is_empty()
            && bot_token_env
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !bot_token_env.starts_with(|c: char| c.is_ascii_digit());
        if !env_ok {
            return Err(invalid(
                "bot_token_env",
                format!(
                    "'{bot_token_env}' is not an environment variable name (the token itself belongs in the environment)"
                ),
            ));
        }
        let api_base_url = http_url(
            "api_base_url",
            &self
                .api_base_url
                .unwrap_or_else(|| DEFAULT_API_BASE_URL.into()),
        )?;
        if !aliases.contains(&self.model) {
            return Err(invalid(
                "model",
                format!(
                    "no model named '{}' under [[models]] or [[local.models]]",
                    self.model
                ),
            ));
        }
        let tenant = self.tenant.unwrap_or_else(|| "discord".into());
        if tenant.trim().is_empty() {
            return Err(invalid("tenant", "must not be empty"));
        }
        if let Some(p) = &self.policy
            && !budgets.policies.contains_key(p)
        {
            return Err(invalid(
                "policy",
                format!("no policy named '{p}' under [budgets.policies]"),
            ));
        }
        let window = self
            .timestamp_window_secs
            .unwrap_or(DEFAULT_TIMESTAMP_WINDOW_SECS);
        if window == 0 {
            return Err(invalid("timestamp_window_secs", "must be at least 1"));
        }
        if let Some(g) = &self.guild_id
            && !is_snowflake(g)
        {
            return Err(invalid("guild_id", "must be a guild's id (digits)"));
        }
        if let Some(t) = self.temperature
            && !(0.0..=2.0).contains(&t)
        {
            return Err(invalid("temperature", "must be between 0 and 2"));
        }
        if self.max_tokens == Some(0) {
            return Err(invalid("max_tokens", "must be at least 1"));
        }
        let voice = self.voice.map(|v| v.validate(env)).transpose()?;
        Ok(DiscordConfig {
            voice,
            application_id: self.application_id,
            public_key,
            bot_token_env,
            api_base_url,
            model: self.model,
            tenant,
            policy: self.policy,
            timestamp_window: Duration::from_secs(window),
            guild_id: self.guild_id,
            system_prompt: self.system_prompt.filter(|s| !s.trim().is_empty()),
            max_tokens: self.max_tokens,
            temperature: self.temperature,
        })
    }
}

impl RawVoice {
    fn validate(self, env: &mut EnvLookup<'_>) -> Result<VoiceConfig, ConfigError> {
        let bridge_url = http_url("voice.bridge_url", &self.bridge_url)?;
        let bridge_token_env = self
            .bridge_token_env
            .unwrap_or_else(|| "AIGW_VOICE_BRIDGE_TOKEN".into());
        let bridge_token = env(&bridge_token_env, "discord.voice.bridge_token_env")?;
        let transcript_lines = self.transcript_lines.unwrap_or(DEFAULT_TRANSCRIPT_LINES);
        if !(1..=100_000).contains(&transcript_lines) {
            return Err(invalid(
                "voice.transcript_lines",
                "must be between 1 and 100000",
            ));
        }
        let ttl = self
            .transcript_ttl_secs
            .unwrap_or(DEFAULT_TRANSCRIPT_TTL_SECS);
        if ttl == 0 {
            return Err(invalid("voice.transcript_ttl_secs", "must be at least 1"));
        }
        Ok(VoiceConfig {
            bridge_url,
            bridge_token_env,
            bridge_token,
            transcript_lines,
            transcript_ttl: Duration::from_secs(ttl),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn config(discord: &str) -> Result<Config, ConfigError> {
        let toml = format!(
            r#"
[providers.up]
kind = "openai"
base_url = "http://127.0.0.1:1/v1"

[[models]]
name = "narrator"
provider = "up"

[budgets.policies.table]
tokens = 100

[discord]
{discord}
"#
        );
        Config::parse(&toml, &|_| None)
    }

    // The public key of RFC 8032's first test vector.
    const KEY: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";

    #[test]
    fn defaults() {
        let c = config(&format!(
            "application_id = \"111\"\npublic_key = \"{KEY}\"\nmodel = \"narrator\""
        ))
        .unwrap();
        let d = c.discord.unwrap();
        assert_eq!(d.api_base_url, DEFAULT_API_BASE_URL);
        assert_eq!(d.tenant, "discord");
        assert_eq!(d.bot_token_env, "DISCORD_BOT_TOKEN");
        assert_eq!(d.timestamp_window, Duration::from_secs(60));
        assert!(d.guild_id.is_none() && d.policy.is_none());
        assert!(
            c.missing_env.is_empty(),
            "serve does not need the bot token"
        );
    }

    #[test]
    fn errors_name_their_key() {
        let base = format!("application_id = \"111\"\npublic_key = \"{KEY}\"\n");
        for (extra, path) in [
            ("model = \"nope\"", "discord.model"),
            ("model = \"narrator\"\npolicy = \"nope\"", "discord.policy"),
            (
                "model = \"narrator\"\napi_base_url = \"ftp://x\"",
                "discord.api_base_url",
            ),
            (
                "model = \"narrator\"\nguild_id = \"abc\"",
                "discord.guild_id",
            ),
            (
                "model = \"narrator\"\nbot_token_env = \"Bot abc\"",
                "discord.bot_token_env",
            ),
            (
                "model = \"narrator\"\ntimestamp_window_secs = 0",
                "discord.timestamp_window_secs",
            ),
            ("model = \"narrator\"\nguild = \"1\"", "discord"),
        ] {
            let err = config(&format!("{base}{extra}")).unwrap_err().to_string();
            assert!(err.starts_with(path), "{extra}: {err}");
        }
        let err = config(&format!("{base}model = \"narrator\"\nguild = \"1\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `guild`"), "{err}");
        let err = config("application_id = \"111\"\npublic_key = \"abcd\"\nmodel = \"narrator\"")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("discord.public_key"), "{err}");
    }

    #[test]
    fn voice_section() {
        let base = format!(
            "application_id = \"111\"\npublic_key = \"{KEY}\"\nmodel = \"narrator\"\n[discord.voice]\n"
        );
        let c = config(&format!("{base}bridge_url = \"http://bridge:8090/\"")).unwrap();
        let v = c.discord.unwrap().voice.unwrap();
        assert_eq!(v.bridge_url, "http://bridge:8090");
        assert_eq!(v.bridge_token_env, "AIGW_VOICE_BRIDGE_TOKEN");
        assert!(v.bridge_token.is_none());
        assert_eq!(c.missing_env, ["AIGW_VOICE_BRIDGE_TOKEN"]);
        assert_eq!(v.transcript_lines, DEFAULT_TRANSCRIPT_LINES);
        for (extra, path) in [
            ("bridge_url = \"nope\"", "discord.voice.bridge_url"),
            (
                "bridge_url = \"http://b\"\ntranscript_lines = 0",
                "discord.voice.transcript_lines",
            ),
            (
                "bridge_url = \"http://b\"\ntranscript_ttl_secs = 0",
                "discord.voice.transcript_ttl_secs",
            ),
            (
                "bridge_url = \"http://b\"\nbridge_token_env = \"a b\"",
                "discord.voice.bridge_token_env",
            ),
        ] {
            let err = config(&format!("{base}{extra}")).unwrap_err().to_string();
            assert!(err.starts_with(path), "{extra}: {err}");
        }
    }
}
