//! The transcriber of a connection: committed utterances, in order, on the local whisper
//! model's worker pool. Each utterance's seconds are reserved against the paying session's
//! budget before it runs and charged once it has a transcript; a failure (or a connection
//! that goes away mid-way) releases the reservation, so nothing is charged twice or for
//! nothing. Its events: one `delta` per whisper segment, `segment`s with the speaker for
//! named tracks (the track) and diarised sessions (the speaker with the most overlap), then
//! `completed` — or `failed`.

use std::sync::Arc;

use aigw_audio::whisper::{TranscribeOptions, WhisperModel};
use axum::extract::ws::Message;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::connection::Peer;
use super::diarize::{TurnLog, speaker_of};
use super::protocol::{EventError, event};
use super::session::Utterance;

/// A local whisper model the session transcribes with.
#[derive(Clone)]
pub(super) struct Model {
    alias: Arc<str>,
    whisper: Arc<WhisperModel>,
    price: aigw_models::catalog::Price,
}

/// Finds the transcription model `alias` (or the first the caller may use).
pub(super) fn model(peer: &Peer, alias: Option<&str>) -> Result<Model, EventError> {
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
    let found = peer.state.local_models().iter().find_map(|m| {
        let usable = alias.map_or(peer.principal.may_use(&m.alias), |a| a == m.alias);
        Some((m, m.transcriber.as_ref().filter(|_| usable)?))
    });
    let (m, whisper) = found.ok_or_else(|| match alias {
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
        whisper: Arc::clone(whisper),
        price: m.price,
    })
}

/// One utterance and how to transcribe it.
pub(super) struct Job {
    pub(super) utterance: Utterance,
    pub(super) model: Model,
    pub(super) options: TranscribeOptions,
    /// The diariser's turns, for the default track of a diarised session.
    pub(super) turns: Option<Arc<std::sync::Mutex<TurnLog>>>,
}

pub(super) fn failed_item(u: &Utterance, e: &EventError) -> Value {
    event(
        "conversation.item.input_audio_transcription.failed",
        u.track.as_deref(),
        json!({"item_id": u.item_id, "content_index": 0, "error": {
            "type": "invalid_request_error", "code": e.code, "message": e.message, "param": e.param,
        }}),
    )
}

/// Transcribes the session's utterances in order and sends their events.
pub(super) async fn transcribe_all(
    peer: Arc<Peer>,
    mut jobs: mpsc::Receiver<Job>,
    tx: mpsc::Sender<Message>,
) {
    while let Some(job) = jobs.recv().await {
        let events = transcribe(&peer, job).await;
        for e in events {
            if tx.send(Message::Text(e.to_string().into())).await.is_err() {
                return;
            }
        }
    }
}

/// The events of one utterance: deltas and `completed` (with segments and speakers for named
/// tracks and diarised sessions), or
/// `failed`. Its seconds are reserved against the budget first and charged once done.
async fn transcribe(peer: &Peer, job: Job) -> Vec<Value> {
    let Job {
        utterance: u,
        model,
        options,
        turns,
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
    // The speaker: the track's name, else the diariser's turns (waiting for them to cover
    // the utterance), else none.
    let speaker = async |start: f64, end: f64| match (track, &turns) {
        (Some(name), _) => Some(name.to_owned()),
        (None, Some(log)) => speaker_of(log, start, end).await,
        (None, None) => None,
    };
    if track.is_some() || turns.is_some() {
        for (i, s) in transcript.segments.iter().enumerate() {
            let (start, end) = (u.start + s.start, u.start + s.end);
            events.push(event(
                "conversation.item.input_audio_transcription.segment",
                track,
                json!({
                    "item_id": u.item_id, "content_index": 0, "id": format!("seg_{i}"),
                    "text": s.text.trim(), "speaker": speaker(start, end).await,
                    "start": start, "end": end,
                }),
            ));
        }
    }
    let mut done = json!({
        "item_id": u.item_id, "content_index": 0, "transcript": transcript.text,
        "usage": {"type": "duration", "seconds": (secs * 1000.0).round() / 1000.0},
    });
    if let (Some(name), Some(obj)) = (speaker(u.start, u.start + secs).await, done.as_object_mut())
    {
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
