//! The Discord voice bridge: a voice channel's talk, speaker by speaker, into aigw.
//!
//! Discord gives a bot one audio stream per speaking user (48 kHz stereo, in 20 ms ticks).
//! The bridge sends each user's stream as a named track (`aigw_track` = the user's id) over
//! one realtime connection per voice session (`/v1/realtime?intent=transcription`, binary
//! frames with a track header), so the gateway's voice detection cuts each user's speech
//! into utterances and transcribes them; nothing is mixed, so who spoke is never guessed.
//! Each finalised utterance is posted to the text channel where `/listen` was used, under the
//! speaker's display name, and sent to the gateway's transcript (for `/transcript` and
//! `/recap`).
//!
//! The gateway answers the slash commands (they arrive as HTTP interactions), so `/listen`
//! and `/stop` reach the bridge through its control API ([`control`]). The Discord side —
//! joining voice channels and receiving audio — is the [`voice::VoiceConnector`] trait: the
//! `aigw-voice-bridge` binary (cargo feature `discord`) implements it with serenity and
//! songbird; the tests with a simulated voice source.
//!
//! Layout: [`config`]; [`voice`] (the connector trait and audio ticks); [`session`] (one
//! voice session: ticks in, realtime events out, utterances posted); [`realtime`] (the
//! realtime wire format the bridge speaks); [`post`] (Discord messages and gateway lines);
//! [`bridge`] (the sessions by guild); [`control`] (the HTTP API).

pub mod bridge;
pub mod config;
pub mod control;
pub mod post;
pub mod realtime;
pub mod session;
pub mod voice;

pub use bridge::Bridge;
pub use config::BridgeConfig;
