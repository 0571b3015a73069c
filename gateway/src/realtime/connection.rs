//! One WebSocket connection: a reader that turns client frames into session actions, a
//! writer that drains a bounded queue of server events, and a transcriber that runs the
//! committed utterances on the whisper pool one after another.
//!
//! Backpressure: every queue is bounded and the reader awaits room in it, so a client that
//! reads slowly (or sends audio faster than whisper keeps up) stops being read instead of
//! growing memory. A connection silent for [`IDLE_TIMEOUT`] is closed. Dropping the
//! connection's tasks frees its state; a transcription in flight is abandoned, and its
//! reservation released, never charged.

use std::sync::Arc;
use std::time::Duration;

use aigw_audio::whisper::{TranscribeOptions, WhisperModel};
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::protocol::{EventError, event};
use super::session::{Action, Session, Utterance, decode_audio, failed};
use crate::auth::Principal;
use crate::budget;
use crate::state::AppState;

/// A connection with no client message for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
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

/// A local whisper model the session transcribes with.
#[derive(Clone)]
struct Model {
    alias: Arc<str>,
    whisper: Arc<WhisperModel>,
    price: aigw_models::catalog::Price,
}

/// Finds the transcription model `alias` (or the first the caller may use).
fn model(peer: &Peer, alias: Option<&str>) -> Result<Model, EventError> {
    let param = Some("session.input_audio_transcription.model");
    if let Some(alias) = alias {
        peer.state
            .routes()
            .resolve(&peer.principal, alias)
            .map_err(|_| {
                EventError::new(
                    "model_not_found",
                    format!("The model `{alias}` does not exist or you do not have access to it."),
                    param,
                )
            })?;
    }
    let found = peer.state.local_models().iter().find(|m| {
        m.transcriber.is_some() && alias.map_or(peer.principal.may_use(&m.alias), |a| a == m.alias)
    });
    let m = found.ok_or_else(|| match alias {
        Some(a) => EventError::new(
            "model_not_supported",
            format!(
                "The model `{a}` is not a local transcription model; realtime sessions need one."
            ),
            param,
        ),
        None => EventError::new(
            "model_not_found",
            "No local transcription model is configured on this server.",
            param,
        ),
    })?;
    Ok(Model {
        alias: m.alias.as_str().into(),
        whisper: Arc::clone(
            m.transcriber
                .as_ref()
                .ok_or_else(|| EventError::new("model_not_found", "no model", param))?,
        ),
        price: m.price,
    })
}

/// One utterance and how to transcribe it.
struct Job {
    utterance: Utterance,
    model: Model,
    options: TranscribeOptions,
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
            if sink.send(msg).await.is_err() || close {
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
                            self.jobs
                                .send(Job {
                                    utterance,
                                    model,
                                    options,
                                })
                                .await
                                .map_err(|_| Gone)?;
                        }
                        Err(e) => self.send(failed_item(&utterance, &e)).await?,
                    }
                }
                // Diarisation is not wired yet: the audio is dropped.
                Action::Audio(_) => {}
            }
        }
        Ok(())
    }
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
            session.update(s)?;
            if let Some(alias) = session.config.model.clone() {
                model(peer, Some(&alias))?;
            }
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

fn failed_item(u: &Utterance, e: &EventError) -> Value {
    event(
        "conversation.item.input_audio_transcription.failed",
        u.track.as_deref(),
        json!({"item_id": u.item_id, "content_index": 0, "error": {
            "type": "invalid_request_error", "code": e.code, "message": e.message, "param": e.param,
        }}),
    )
}

/// Transcribes the session's utterances in order and sends their events.
async fn transcribe_all(peer: Arc<Peer>, mut jobs: mpsc::Receiver<Job>, tx: mpsc::Sender<Message>) {
    while let Some(job) = jobs.recv().await {
        let events = transcribe(&peer, job).await;
        for e in events {
            if tx.send(Message::Text(e.to_string().into())).await.is_err() {
                return;
            }
        }
    }
}

/// The events of one utterance: deltas and `completed` (with segments for named tracks), or
/// `failed`. Its seconds are reserved against the budget first and charged once done.
async fn transcribe(peer: &Peer, job: Job) -> Vec<Value> {
    let Job {
        utterance: u,
        model,
        options,
    } = job;
    let secs = u.samples.len() as f64 / 16_000.0;
    let budgets = peer.state.budgets();
    let admission = match budgets.applied(&peer.session).await {
        Ok(Some(applied)) => match budgets
            .admit(applied, audio_amount(secs), 0, model.price)
            .await
        {
            Ok(a) => Some(a),
            Err(e) => return vec![failed_gateway(&u, &e)],
        },
        Ok(None) => None,
        Err(e) => return vec![failed_gateway(&u, &e)],
    };
    let transcript = match model.whisper.transcribe(u.samples, options).await {
        Ok(t) => t,
        Err(e) => {
            let code = if e.kind() == "overloaded" {
                "rate_limit_exceeded"
            } else {
                "transcription_failed"
            };
            return vec![failed_item(
                &Utterance {
                    samples: Vec::new(),
                    ..u
                },
                &EventError::new(code, e.to_string(), None),
            )];
        }
    };
    if let Some(a) = admission {
        a.settle(audio_amount(secs)).await;
    }
    peer.state
        .metrics()
        .audio_seconds
        .with_label_values(&[&model.alias])
        .inc_by(secs);
    let track = u.track.as_deref();
    let mut events: Vec<Value> = transcript
        .segments
        .iter()
        .filter(|s| !s.text.trim().is_empty())
        .map(|s| {
            event(
                "conversation.item.input_audio_transcription.delta",
                track,
                json!({"item_id": u.item_id, "content_index": 0, "delta": s.text}),
            )
        })
        .collect();
    if let Some(name) = track {
        for (i, s) in transcript.segments.iter().enumerate() {
            events.push(event(
                "conversation.item.input_audio_transcription.segment",
                track,
                json!({
                    "item_id": u.item_id, "content_index": 0, "id": format!("seg_{i}"),
                    "text": s.text.trim(), "speaker": name,
                    "start": u.start + s.start, "end": u.start + s.end,
                }),
            ));
        }
    }
    let mut done = json!({
        "item_id": u.item_id, "content_index": 0, "transcript": transcript.text,
        "usage": {"type": "duration", "seconds": (secs * 1000.0).round() / 1000.0},
    });
    if let (Some(name), Some(obj)) = (track, done.as_object_mut()) {
        obj.insert("speaker".into(), json!(name));
    }
    events.push(event(
        "conversation.item.input_audio_transcription.completed",
        track,
        done,
    ));
    events
}

fn failed_gateway(u: &Utterance, e: &crate::error::GatewayError) -> Value {
    let body = e.to_body().error;
    event(
        "conversation.item.input_audio_transcription.failed",
        u.track.as_deref(),
        json!({"item_id": u.item_id, "content_index": 0, "error": {
            "type": body.kind, "code": body.code, "message": body.message, "param": body.param,
        }}),
    )
}

/// The budget spend of `secs` of audio.
fn audio_amount(secs: f64) -> aigw_state::budget::Amount {
    aigw_state::budget::Amount {
        audio_ms: (secs.max(0.0) * 1000.0).round() as u64,
        ..aigw_state::budget::Amount::default()
    }
}
