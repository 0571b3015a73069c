//! The bridge's settings, from flags or the environment (secrets from the environment only
//! in practice: `hide_env_values` keeps them out of `--help`).

use std::net::SocketAddr;
use std::time::Duration;

/// How the bridge reaches the gateway and Discord.
#[derive(Debug, Clone, clap::Args)]
pub struct BridgeConfig {
    /// Where the control API listens (the gateway's `[discord.voice] bridge_url`).
    #[arg(long, env = "AIGW_BRIDGE_LISTEN", default_value = "127.0.0.1:8090")]
    pub listen: SocketAddr,

    /// The gateway: transcript lines go to its `/integrations/discord/voice/lines`.
    #[arg(
        long,
        env = "AIGW_GATEWAY_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub gateway_url: String,

    /// The realtime endpoint (default: the gateway's `/v1/realtime`); an audio worker's, on
    /// a cluster that runs one.
    #[arg(long, env = "AIGW_REALTIME_URL")]
    pub realtime_url: Option<String>,

    /// The API key the realtime connection presents (in the tenant of `[discord]`).
    #[arg(long, env = "AIGW_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// The secret shared with the gateway (`discord.voice.bridge_token_env`).
    #[arg(long, env = "AIGW_VOICE_BRIDGE_TOKEN", hide_env_values = true)]
    pub bridge_token: String,

    /// Discord's REST API.
    #[arg(
        long,
        env = "DISCORD_API_BASE_URL",
        default_value = "https://discord.com/api/v10"
    )]
    pub discord_api_base: String,

    /// The bot's token (posting messages; the bot binary also logs in with it).
    #[arg(long, env = "DISCORD_BOT_TOKEN", hide_env_values = true)]
    pub bot_token: String,

    /// The transcription model alias (default: the server's local default).
    #[arg(long, env = "AIGW_TRANSCRIBE_MODEL")]
    pub model: Option<String>,

    /// Silence that ends an utterance, in ms (the server VAD's `silence_duration_ms`).
    #[arg(long, env = "AIGW_BRIDGE_SILENCE_MS", default_value_t = 600)]
    pub silence_ms: u32,
}

impl BridgeConfig {
    /// The realtime WebSocket URL.
    pub fn realtime_url(&self) -> String {
        match &self.realtime_url {
            Some(url) => url.clone(),
            None => {
                let base = self.gateway_url.trim_end_matches('/');
                let ws = base
                    .strip_prefix("https://")
                    .map(|rest| format!("wss://{rest}"))
                    .or_else(|| {
                        base.strip_prefix("http://")
                            .map(|rest| format!("ws://{rest}"))
                    })
                    .unwrap_or_else(|| base.to_string());
                format!("{ws}/v1/realtime?intent=transcription")
            }
        }
    }

    /// How long a user's track is fed silence after their last audio, so that the server's
    /// voice detection sees the pause that ends the utterance (Discord sends nothing while a
    /// user is silent).
    pub fn pad(&self) -> Duration {
        Duration::from_millis(u64::from(self.silence_ms) + 400)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(gateway: &str) -> BridgeConfig {
        BridgeConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            gateway_url: gateway.into(),
            realtime_url: None,
            api_key: None,
            bridge_token: "t".into(),
            discord_api_base: "http://127.0.0.1:1".into(),
            bot_token: "b".into(),
            model: None,
            silence_ms: 600,
        }
    }

    #[test]
    fn realtime_url_follows_the_gateway() {
        assert_eq!(
            config("http://127.0.0.1:8080/").realtime_url(),
            "ws://127.0.0.1:8080/v1/realtime?intent=transcription"
        );
        assert_eq!(
            config("https://ai.example").realtime_url(),
            "wss://ai.example/v1/realtime?intent=transcription"
        );
        let mut c = config("http://gw");
        c.realtime_url = Some("ws://audio:8081/v1/realtime?intent=transcription".into());
        assert_eq!(
            c.realtime_url(),
            "ws://audio:8081/v1/realtime?intent=transcription"
        );
    }
}
