//! One WebSocket connection: a reader that turns client frames into session actions, a
//! writer that drains a bounded queue of server events, and a transcriber that runs the
//! committed utterances on the whisper pool one after another ([`super::transcribe`]).
//!
//! Backpressure: every queue is bounded and the reader awaits room in it, so a client that
//! reads slowly (or sends audio faster than whisper keeps up) stops being read instead of
//! growing memory. A connection silent for [`IDLE_TIMEOUT`] is closed, and one that takes
//! no event for [`WRITE_TIMEOUT`] is dropped. Dropping the
//! connection's tasks frees its state; a transcription in flight is abandoned, and its
//! reservation released, never charged.

use std::sync::Arc;
use std::time::Duration;

use aigw_audio::whisper::TranscribeOptions;
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::diarize::{self, Diarization};
use super::protocol::{EventError, error_event, event};
use super::session::{Action, Session, decode_audio, failed};
use super::transcribe::{Job, failed_item, model, transcribe_all};
use crate::auth::Principal;
use crate::budget;
use crate::state::AppState;

/// A connection with no client message for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait for the client to take one event before the connection is dropped.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Server events waiting for the socket.
const OUTBOUND_QUEUE: usize = 64;
/// Committed utterances waiting for whisper.
const PENDING_UTTERANCES: usize = 4;

/// Who is on the other end, and who pays.
pub struct Peer {
    /// The server.
    pub state: AppState,
    /// The caller.
    pub principal: Principal,
    /// The paying budget session.
    pub session: budget::Session,
}

/// Serves `socket` until the client leaves, idles out or the server stops.
pub async fn serve(socket: WebSocket, peer: Peer, model_hint: Option<String>) {
    let metrics = peer.state.metrics().clone();
    metrics.realtime_sessions.inc();
    let (mut sink, mut stream) = socket.split();
    let (tx, mut rx) = mpsc::channel::<Message>(OUTBOUND_QUEUE);
    let writer = tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
            let close = matches!(msg, Message::Close(_));
            // A client that takes no event for this long is gone: the connection ends.
            let sent = tokio::time::timeout(WRITE_TIMEOUT, sink.send(msg)).await;
            if !matches!(sent, Ok(Ok(()))) || close {
                break;
            }
        }
        let _ = sink.close().await;
    });
    let peer = Arc::new(peer);
    let (jobs, jobs_rx) = mpsc::channel::<Job>(PENDING_UTTERANCES);
    let transcriber = tokio::spawn(transcribe_all(Arc::clone(&peer), jobs_rx, tx.clone()));

    let mut session = Session::new();
    // A `model` in the URL that names a local transcription model starts the session with it.
    session.config.model = model_hint.filter(|m| model(&peer, Some(m)).is_ok());
    let mut out = Outbox {
        tx: &tx,
        jobs: &jobs,
        diarization: None,
    };
    let created = session.config.to_json();
    let _ = out
        .send(event("session.created", None, json!({"session": created})))
        .await;
    let _ = out
        .send(event(
            "transcription_session.created",
            None,
            json!({"session": created}),
        ))
        .await;
    loop {
        let msg = match tokio::time::timeout(IDLE_TIMEOUT, stream.next()).await {
            Err(_) => {
                let _ = tx
                    .send(Message::Close(Some(CloseFrame {
                        code: 1000,
                        reason: "idle timeout".into(),
                    })))
                    .await;
                break;
            }
            Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => break,
            Ok(Some(Ok(msg))) => msg,
        };
        let actions = match msg {
            Message::Text(text) => on_text(&peer, &mut session, text.as_str()),
            Message::Binary(bytes) => on_binary(&mut session, &bytes),
            Message::Ping(_) | Message::Pong(_) | Message::Close(_) => continue,
        };
        if out.run(&peer, &session, actions).await.is_err() {
            break;
        }
    }
    if let Some(d) = out.diarization.take() {
        d.abort();
    }
    drop(jobs);
    transcriber.abort();
    drop(tx);
    let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
    metrics.realtime_sessions.dec();
}

/// Where actions go.
struct Outbox<'a> {
    tx: &'a mpsc::Sender<Message>,
    jobs: &'a mpsc::Sender<Job>,
    /// The default track's diariser, once audio arrives with diarisation on.
    diarization: Option<Diarization>,
}

/// The connection is gone.
struct Gone;

impl Outbox<'_> {
    async fn send(&mut self, v: Value) -> Result<(), Gone> {
        self.tx
            .send(Message::Text(v.to_string().into()))
            .await
            .map_err(|_| Gone)
    }

    async fn run(
        &mut self,
        peer: &Peer,
        session: &Session,
        actions: Vec<Action>,
    ) -> Result<(), Gone> {
        for action in actions {
            match action {
                Action::Send(v) => self.send(v).await?,
                Action::Transcribe(utterance) => {
                    let c = &session.config;
                    match model(peer, c.model.as_deref()) {
                        Ok(model) => {
                            let options = TranscribeOptions {
                                language: c.language.clone(),
                                prompt: c.prompt.clone(),
                                ..TranscribeOptions::default()
                            };
                            let turns = match (&utterance.track, &self.diarization) {
                                (None, Some(d)) => Some(Arc::clone(&d.turns)),
                                _ => None,
                            };
                            self.jobs
                                .send(Job {
                                    utterance,
                                    model,
                                    options,
                                    turns,
                                })
                                .await
                                .map_err(|_| Gone)?;
                        }
                        Err(e) => self.send(failed_item(&utterance, &e)).await?,
                    }
                }
                Action::Audio { samples, start } => {
                    self.diarize(peer, session, samples, start).await?
                }
            }
        }
        Ok(())
    }
}

impl Outbox<'_> {
    /// Feeds the default track's audio to the diariser, (re)starting it when the session's
    /// settings changed.
    async fn diarize(
        &mut self,
        peer: &Peer,
        session: &Session,
        samples: Vec<f32>,
        start: f64,
    ) -> Result<(), Gone> {
        let Some(settings) = session.config.diarization.as_ref() else {
            return Ok(());
        };
        if self
            .diarization
            .as_ref()
            .is_some_and(|d| &d.settings != settings)
        {
            // Dropping the old one lets it finish its turns.
            self.diarization = None;
        }
        if self.diarization.is_none() {
            let started = diarize::config(settings).and_then(|config| {
                let models = diarize::models(&peer.state).ok_or_else(unavailable)?;
                Ok(Diarization::start(
                    models,
                    settings.clone(),
                    config,
                    start,
                    self.tx.clone(),
                ))
            });
            match started {
                Ok(d) => self.diarization = Some(d),
                Err(e) => return self.send(error_event(&e, None)).await,
            }
        }
        if let Some(d) = &self.diarization
            && !d.push(samples).await
        {
            self.diarization = None;
        }
        Ok(())
    }
}

fn unavailable() -> EventError {
    EventError::new(
        "diarization_unavailable",
        "This server has no diarisation model (a [[local.models]] entry of kind \"diarization\").",
        Some("session.aigw_diarization"),
    )
}

fn on_text(peer: &Peer, session: &mut Session, text: &str) -> Vec<Action> {
    let v: Value = match serde_json::from_str(text) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => {
            return vec![failed(
                &EventError::new(
                    "invalid_json",
                    "A client event must be a JSON object.",
                    None,
                ),
                None,
            )];
        }
        Err(e) => {
            return vec![failed(
                &EventError::new(
                    "invalid_json",
                    format!("The event is not valid JSON: {e}."),
                    None,
                ),
                None,
            )];
        }
    };
    let id = v.get("event_id").and_then(Value::as_str);
    match handle(peer, session, &v) {
        Ok(actions) => actions,
        Err(e) => vec![failed(&e, id)],
    }
}

fn track_of(v: &Value) -> Result<Option<String>, EventError> {
    match v.get("aigw_track") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 64 => Ok(Some(s.clone())),
        Some(_) => Err(EventError::new(
            "invalid_value",
            "'aigw_track' must be a non-empty string of at most 64 bytes.",
            Some("aigw_track"),
        )),
    }
}

fn handle(peer: &Peer, session: &mut Session, v: &Value) -> Result<Vec<Action>, EventError> {
    let kind = v.get("type").and_then(Value::as_str).ok_or_else(|| {
        EventError::new(
            "missing_required_parameter",
            "Missing required parameter: 'type'.",
            Some("type"),
        )
    })?;
    match kind {
        "session.update" | "transcription_session.update" => {
            let s = v.get("session").ok_or_else(|| {
                EventError::new(
                    "missing_required_parameter",
                    "Missing required parameter: 'session'.",
                    Some("session"),
                )
            })?;
            // Checked on a copy first: a failed update changes nothing.
            let mut next = session.config.clone();
            next.update(s)?;
            if let Some(alias) = next.model.as_deref() {
                model(peer, Some(alias))?;
            }
            if let Some(settings) = &next.diarization {
                diarize::config(settings)?;
                diarize::models(&peer.state).ok_or_else(unavailable)?;
            }
            session.update(s)?;
            let updated = kind.replace(".update", ".updated");
            Ok(vec![Action::Send(event(
                &updated,
                None,
                json!({"session": session.config.to_json()}),
            ))])
        }
        "input_audio_buffer.append" => {
            let audio = v.get("audio").and_then(Value::as_str).ok_or_else(|| {
                EventError::new(
                    "missing_required_parameter",
                    "Missing required parameter: 'audio' (base64 PCM16).",
                    Some("audio"),
                )
            })?;
            let pcm = decode_audio(audio)?;
            session.append(track_of(v)?, &pcm)
        }
        "input_audio_buffer.commit" => session.commit(track_of(v)?),
        "input_audio_buffer.clear" => session.clear(track_of(v)?),
        other => Err(EventError::new(
            "invalid_value",
            format!(
                "Invalid value: '{other}'. Supported values are: 'session.update', 'transcription_session.update', 'input_audio_buffer.append', 'input_audio_buffer.commit' and 'input_audio_buffer.clear'."
            ),
            Some("type"),
        )),
    }
}

/// A binary frame: PCM16 for the default track, or after a track header when the session
/// asked for one.
fn on_binary(session: &mut Session, bytes: &[u8]) -> Vec<Action> {
    let (track, pcm) = if session.config.binary_track_header {
        let Some((&len, rest)) = bytes.split_first() else {
            return vec![failed(
                &EventError::new(
                    "invalid_value",
                    "An empty binary frame has no track header.",
                    Some("aigw_track"),
                ),
                None,
            )];
        };
        let len = usize::from(len);
        match (rest.get(..len).map(std::str::from_utf8), rest.get(len..)) {
            (Some(Ok(name)), Some(pcm)) => ((!name.is_empty()).then(|| name.to_owned()), pcm),
            _ => {
                return vec![failed(
                    &EventError::new(
                        "invalid_value",
                        "The binary frame's track header is malformed (a length byte, then that many bytes of UTF-8).",
                        Some("aigw_track"),
                    ),
                    None,
                )];
            }
        }
    } else {
        (None, bytes)
    };
    session
        .append(track, pcm)
        .unwrap_or_else(|e| vec![failed(&e, None)])
}
