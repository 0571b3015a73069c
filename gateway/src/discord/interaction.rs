//! Discord's interaction wire format (the part the gateway reads and writes), the slash
//! commands it offers, and their definitions for registration.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;

/// Interaction type: Discord checking the endpoint.
pub const PING: u8 = 1;
/// Interaction type: a slash command.
pub const APPLICATION_COMMAND: u8 = 2;

/// Response type: answers a PING.
pub const PONG: u8 = 1;
/// Response type: a message, now.
pub const CHANNEL_MESSAGE: u8 = 4;
/// Response type: "thinking…" now, the message later by editing `@original`.
pub const DEFERRED_CHANNEL_MESSAGE: u8 = 5;

/// Message flag: only the invoking user sees it.
pub const EPHEMERAL: u32 = 1 << 6;

/// Longest message content Discord accepts.
pub const MESSAGE_LIMIT: usize = 2000;

/// An interaction as Discord sends it (the fields the gateway uses; others are ignored).
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct Interaction {
    /// The interaction's id.
    pub id: String,
    /// The application it is for.
    pub application_id: String,
    /// 1 PING, 2 APPLICATION_COMMAND, …
    #[serde(rename = "type")]
    pub kind: u8,
    /// The command and its options (commands only).
    #[serde(default)]
    pub data: Option<CommandData>,
    /// The guild it was sent from (absent in direct messages).
    #[serde(default)]
    pub guild_id: Option<String>,
    /// The channel it was sent from.
    #[serde(default)]
    pub channel_id: Option<String>,
    /// The token that edits the answer and sends follow-ups, valid 15 minutes.
    pub token: String,
}

/// A slash command's name and options.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct CommandData {
    /// The command's name.
    pub name: String,
    /// The options given.
    #[serde(default)]
    pub options: Vec<CommandOption>,
}

/// One option of a slash command.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct CommandOption {
    /// The option's name.
    pub name: String,
    /// Its value (a string for `prompt`, an integer for `lines`).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub value: Option<Value>,
}

/// The immediate answer to an interaction.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct InteractionResponse {
    /// 1 PONG, 4 a message now, 5 deferred (the message follows by `@original`).
    #[serde(rename = "type")]
    pub kind: u8,
    /// The message, for type 4.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Message>,
}

/// A message the bot writes.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Message {
    /// The text (at most 2000 characters).
    pub content: String,
    /// Always `{"parse": []}`: the bot never pings anyone.
    pub allowed_mentions: AllowedMentions,
    /// 64: ephemeral.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flags: Option<u32>,
}

/// Which mentions in a message notify; the bot allows none.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct AllowedMentions {
    /// Mention kinds parsed from the content: none.
    pub parse: Vec<String>,
}

impl Message {
    /// A message that mentions nobody.
    pub fn new(content: impl Into<String>) -> Self {
        Self {
            content: content.into(),
            allowed_mentions: AllowedMentions { parse: Vec::new() },
            flags: None,
        }
    }
}

impl InteractionResponse {
    /// The answer to a PING.
    pub fn pong() -> Self {
        Self {
            kind: PONG,
            data: None,
        }
    }

    /// "Thinking…": the answer follows by editing `@original`.
    pub fn deferred() -> Self {
        Self {
            kind: DEFERRED_CHANNEL_MESSAGE,
            data: None,
        }
    }

    /// A message only the invoking user sees, now.
    pub fn ephemeral(content: impl Into<String>) -> Self {
        let mut message = Message::new(content);
        message.flags = Some(EPHEMERAL);
        Self {
            kind: CHANNEL_MESSAGE,
            data: Some(message),
        }
    }
}

/// Lines `/transcript` shows without a `lines` option.
pub const DEFAULT_TRANSCRIPT_LINES: u32 = 20;
/// Most lines `/transcript` shows.
pub const MAX_TRANSCRIPT_LINES: u32 = 100;

/// A slash command the gateway answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `/ask prompt`: the chat model answers.
    Ask {
        /// The question.
        prompt: String,
    },
    /// `/budget`: the channel's remaining budget.
    Budget,
    /// `/transcript [lines]`: the latest lines of the channel's voice transcript.
    Transcript {
        /// How many.
        lines: u32,
    },
    /// `/recap`: the chat model summarises the voice transcript.
    Recap,
    /// `/listen channel`: the voice bridge joins `channel` and transcribes it into this one.
    Listen {
        /// The voice channel's id (empty when the option is missing or not an id).
        voice_channel_id: String,
    },
    /// `/stop`: the voice bridge leaves the guild's voice channel.
    Stop,
}

impl Command {
    /// The command named in `data`; `None` for a command the gateway does not know.
    pub fn parse(data: &CommandData) -> Option<Self> {
        let option = |name: &str| {
            data.options
                .iter()
                .find(|o| o.name == name)
                .and_then(|o| o.value.as_ref())
        };
        match data.name.as_str() {
            "ask" => {
                let prompt = option("prompt")
                    .and_then(Value::as_str)
                    .map(str::trim)
                    .unwrap_or_default();
                Some(Self::Ask {
                    prompt: prompt.to_string(),
                })
            }
            "budget" => Some(Self::Budget),
            "transcript" => {
                let lines = option("lines")
                    .and_then(Value::as_u64)
                    .map_or(DEFAULT_TRANSCRIPT_LINES, |n| {
                        u32::try_from(n).unwrap_or(u32::MAX)
                    })
                    .clamp(1, MAX_TRANSCRIPT_LINES);
                Some(Self::Transcript { lines })
            }
            "recap" => Some(Self::Recap),
            "listen" => {
                let id = option("channel")
                    .and_then(Value::as_str)
                    .filter(|id| super::config::is_snowflake(id))
                    .unwrap_or_default();
                Some(Self::Listen {
                    voice_channel_id: id.to_string(),
                })
            }
            "stop" => Some(Self::Stop),
            _ => None,
        }
    }

    /// The command's name, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Ask { .. } => "ask",
            Self::Budget => "budget",
            Self::Transcript { .. } => "transcript",
            Self::Recap => "recap",
            Self::Listen { .. } => "listen",
            Self::Stop => "stop",
        }
    }
}

/// The commands as `PUT /applications/{id}/commands` takes them: chat-input commands,
/// usable in guild channels only (a channel is what pays).
pub fn definitions() -> Value {
    const STRING: u8 = 3;
    const INTEGER: u8 = 4;
    const CHANNEL: u8 = 7;
    const GUILD: u8 = 0;
    // Channel types a bot can listen in: a voice channel and a stage.
    const GUILD_VOICE: u8 = 2;
    const GUILD_STAGE_VOICE: u8 = 13;
    json!([
        {
            "name": "ask",
            "type": 1,
            "description": "Ask the AI; this channel's budget pays",
            "contexts": [GUILD],
            "options": [{
                "type": STRING,
                "name": "prompt",
                "description": "Your question",
                "required": true,
                "max_length": 4000
            }]
        },
        {
            "name": "budget",
            "type": 1,
            "description": "Show what is left of this channel's AI budget",
            "contexts": [GUILD]
        },
        {
            "name": "transcript",
            "type": 1,
            "description": "Show the latest lines of this channel's voice transcript",
            "contexts": [GUILD],
            "options": [{
                "type": INTEGER,
                "name": "lines",
                "description": format!("How many lines (default {DEFAULT_TRANSCRIPT_LINES})"),
                "required": false,
                "min_value": 1,
                "max_value": MAX_TRANSCRIPT_LINES
            }]
        },
        {
            "name": "recap",
            "type": 1,
            "description": "Summarise this channel's voice session",
            "contexts": [GUILD]
        },
        {
            "name": "listen",
            "type": 1,
            "description": "Transcribe a voice channel into this channel, speaker by speaker",
            "contexts": [GUILD],
            "options": [{
                "type": CHANNEL,
                "name": "channel",
                "description": "The voice channel to listen to",
                "required": true,
                "channel_types": [GUILD_VOICE, GUILD_STAGE_VOICE]
            }]
        },
        {
            "name": "stop",
            "type": 1,
            "description": "Stop listening to this server's voice channel",
            "contexts": [GUILD]
        }
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(v: Value) -> CommandData {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn commands_and_options() {
        assert_eq!(
            Command::parse(&data(json!({"name": "ask", "options": [
                {"name": "prompt", "type": 3, "value": "  where is the dragon? "}
            ]}))),
            Some(Command::Ask {
                prompt: "where is the dragon?".into()
            })
        );
        assert_eq!(
            Command::parse(&data(json!({"name": "transcript"}))),
            Some(Command::Transcript { lines: 20 })
        );
        assert_eq!(
            Command::parse(&data(json!({"name": "transcript", "options": [
                {"name": "lines", "type": 4, "value": 1000}
            ]}))),
            Some(Command::Transcript { lines: 100 })
        );
        assert_eq!(
            Command::parse(&data(json!({"name": "budget"}))),
            Some(Command::Budget)
        );
        assert_eq!(
            Command::parse(&data(json!({"name": "listen", "options": [
                {"name": "channel", "type": 7, "value": "123456789012345678"}
            ]}))),
            Some(Command::Listen {
                voice_channel_id: "123456789012345678".into()
            })
        );
        assert_eq!(
            Command::parse(&data(json!({"name": "listen", "options": [
                {"name": "channel", "type": 7, "value": "general"}
            ]}))),
            Some(Command::Listen {
                voice_channel_id: String::new()
            })
        );
        assert_eq!(
            Command::parse(&data(json!({"name": "stop"}))),
            Some(Command::Stop)
        );
        assert_eq!(Command::parse(&data(json!({"name": "dance"}))), None);
    }

    #[test]
    fn responses_serialise_as_discord_expects() {
        assert_eq!(
            serde_json::to_value(InteractionResponse::pong()).unwrap(),
            json!({"type": 1})
        );
        assert_eq!(
            serde_json::to_value(InteractionResponse::deferred()).unwrap(),
            json!({"type": 5})
        );
        assert_eq!(
            serde_json::to_value(InteractionResponse::ephemeral("hi")).unwrap(),
            json!({"type": 4, "data": {"content": "hi", "flags": 64, "allowed_mentions": {"parse": []}}})
        );
        let defs = definitions();
        let names: Vec<_> = defs
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            ["ask", "budget", "transcript", "recap", "listen", "stop"]
        );
    }
}
