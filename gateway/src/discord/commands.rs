//! What each command answers. `/ask` and `/recap` go through the gateway's own chat pipeline
//! (`routes::generate`, as `POST /v1/chat/completions` does) with the channel as the paying
//! session, so its budget, the response cache and the alias's routing and fallback apply as
//! for any client; a refusal becomes a short, polite sentence. `/budget` reads the channel
//! session's ledger entry; `/transcript` reads the transcript store; `/listen` and `/stop`
//! ask the voice bridge.

use aigw_models::openai::{ChatCompletionRequest, ErrorResponse};
use aigw_state::budget::Amount;
use http::{HeaderMap, HeaderValue, StatusCode};
use serde_json::{Value, json};

use super::transcript::TranscriptLine;
use super::voice::{BridgeError, ListenRequest, StopRequest};
use super::{Discord, Job};
use crate::budget::SESSION_HEADER;
use crate::config::BudgetWindow;
use crate::telemetry::RequestTiming;

/// The route label of the pipeline's metrics for Discord's calls.
const ROUTE: &str = "/integrations/discord/interactions";
/// The largest answer read back from the pipeline.
const MAX_ANSWER_BYTES: usize = 4 << 20;
/// Most transcript lines `/recap` reads, and most characters of them.
const RECAP_LINES: usize = 2000;
const RECAP_CHARS: usize = 48_000;

const RECAP_PROMPT: &str = "You write recaps of tabletop role-playing sessions from their voice \
transcript (one line per utterance, `Speaker: words`). Summarise what happened, the decisions \
taken and the open threads, naming who did what. Be brief: a few short paragraphs or bullets.";

const NO_VOICE: &str = "Voice listening is not set up on this server.";

const NO_TRANSCRIPT: &str = "There is no voice transcript for this channel: no voice session \
has been recorded here.";

/// The text that answers `job`.
pub(super) async fn run(d: &Discord, job: &Job) -> String {
    use super::interaction::Command;
    match &job.command {
        Command::Ask { prompt } => {
            let mut messages = Vec::new();
            if let Some(system) = &d.inner.config.system_prompt {
                messages.push(json!({"role": "system", "content": system}));
            }
            messages.push(json!({"role": "user", "content": prompt}));
            chat(d, job, messages).await
        }
        Command::Budget => budget(d, job).await,
        Command::Transcript { lines } => transcript(d, job, *lines as usize).await,
        Command::Recap => recap(d, job).await,
        Command::Listen { voice_channel_id } => listen(d, job, voice_channel_id).await,
        Command::Stop => stop(d, job).await,
    }
}

/// `/listen channel`: the bridge joins the voice channel; its lines come to this channel.
async fn listen(d: &Discord, job: &Job, voice_channel_id: &str) -> String {
    let (Some(bridge), Some(voice)) = (&d.inner.bridge, &d.inner.config.voice) else {
        return NO_VOICE.into();
    };
    let req = ListenRequest {
        guild_id: job.channel.guild_id.clone(),
        voice_channel_id: voice_channel_id.to_string(),
        text_channel_id: job.channel.channel_id.clone(),
    };
    if let Err(e) = bridge.listen(&req).await {
        return match e {
            BridgeError::NotConfigured => NO_VOICE.into(),
            BridgeError::Unreachable => {
                "The voice bridge is not answering right now. Please try again later.".into()
            }
            BridgeError::Refused(why) => format!("I couldn't join <#{voice_channel_id}>: {why}"),
        };
    }
    let session = job.channel.session();
    if let Err(e) = d
        .inner
        .app
        .transcripts()
        .begin(&session, voice.transcript_ttl)
        .await
    {
        // The first line will create the transcript anyway.
        tracing::warn!(error = %e, %session, "could not mark the voice session");
    }
    format!(
        "Listening in <#{voice_channel_id}>. Each finished utterance is posted here with its \
         speaker's name; `/transcript` shows the latest lines, `/recap` sums them up and \
         `/stop` ends it."
    )
}

/// `/stop`: the bridge leaves the guild's voice channel; the transcript stays.
async fn stop(d: &Discord, job: &Job) -> String {
    let Some(bridge) = &d.inner.bridge else {
        return NO_VOICE.into();
    };
    let req = StopRequest {
        guild_id: job.channel.guild_id.clone(),
    };
    match bridge.stop(&req).await {
        Ok(()) => "Stopped listening. The transcript stays available to `/transcript` and \
                   `/recap`."
            .into(),
        Err(BridgeError::NotConfigured) => NO_VOICE.into(),
        Err(BridgeError::Unreachable) => {
            "The voice bridge is not answering right now. Please try again later.".into()
        }
        Err(BridgeError::Refused(why)) => format!("I couldn't stop: {why}"),
    }
}

/// The headers of the channel's pipeline calls: the session that pays, and a request id
/// that ties the logs to the interaction.
fn session_headers(job: &Job) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&job.channel.session()) {
        headers.insert(SESSION_HEADER, v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("discord-{}", job.interaction_id)) {
        headers.insert("x-request-id", v);
    }
    headers
}

/// Runs `messages` through the chat pipeline; the answer, or a polite refusal.
async fn chat(d: &Discord, job: &Job, messages: Vec<Value>) -> String {
    let config = &d.inner.config;
    let mut body = json!({"model": config.model, "messages": messages});
    if let Some(n) = config.max_tokens {
        body["max_tokens"] = json!(n);
    }
    if let Some(t) = config.temperature {
        body["temperature"] = json!(t);
    }
    let req: ChatCompletionRequest = match serde_json::from_value(body) {
        Ok(req) => req,
        Err(e) => {
            tracing::error!(error = %e, "could not build the chat request");
            return SORRY.into();
        }
    };
    let timing = RequestTiming::default();
    let resp = crate::routes::generate(
        &d.inner.app,
        &d.inner.principal,
        &timing,
        &session_headers(job),
        req,
        ROUTE,
    )
    .await;
    let status = resp.status();
    let body = match axum::body::to_bytes(resp.into_body(), MAX_ANSWER_BYTES).await {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(error = %e, "could not read the chat answer");
            return SORRY.into();
        }
    };
    if status.is_success() {
        return answer_text(&body).unwrap_or_else(|| {
            tracing::warn!("the chat answer had no readable content");
            SORRY.into()
        });
    }
    refusal(status, &body).into()
}

const SORRY: &str = "Sorry, I couldn't get an answer just now. Please try again later.";

/// The first choice's text; a note when it was cut at the length limit.
fn answer_text(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let choice = v.get("choices")?.get(0)?;
    let content = match &choice["message"]["content"] {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts.iter().filter_map(|p| p["text"].as_str()).collect(),
        _ => String::new(),
    };
    let mut text = content.trim().to_string();
    if text.is_empty() {
        text = "*(The model gave an empty answer.)*".into();
    }
    if choice["finish_reason"] == "length" {
        text.push_str("\n*(cut short: the answer reached its length limit)*");
    }
    Some(text)
}

/// A pipeline error as one polite sentence; the details go to the log.
fn refusal(status: StatusCode, body: &[u8]) -> &'static str {
    let error = serde_json::from_slice::<ErrorResponse>(body).ok();
    let code = error.as_ref().and_then(|e| e.error.code.as_deref());
    match code {
        Some("insufficient_quota") => {
            tracing::info!("the channel's budget is spent");
            return "This channel's AI budget is used up (or too low for another answer), so I \
                    can't answer for now. A game master can raise or reset it; `/budget` shows \
                    what is left.";
        }
        Some("budget_unavailable") => {
            return "I can't check this channel's budget right now, so I won't answer. Please \
                    try again in a minute.";
        }
        _ => {}
    }
    tracing::warn!(
        status = status.as_u16(),
        code = code.unwrap_or("-"),
        message = error.as_ref().map_or("-", |e| e.error.message.as_str()),
        "the chat pipeline refused a Discord request"
    );
    match code {
        Some("context_length_exceeded") => {
            "That is too long for the model to read; please shorten it."
        }
        _ if status == StatusCode::TOO_MANY_REQUESTS => {
            "I'm busy right now; please try again in a moment."
        }
        _ => SORRY,
    }
}

/// `/budget`: what is left of the channel session's budget in the current window.
async fn budget(d: &Discord, job: &Job) -> String {
    let budgets = d.inner.app.budgets();
    let session = budgets.session(&d.inner.principal, &session_headers(job), None);
    let applied = match budgets.applied(&session).await {
        Ok(Some(applied)) => applied,
        Ok(None) => return "This channel has no AI budget: `/ask` is not limited here.".into(),
        Err(_) => {
            return "I can't read this channel's budget right now. Please try again later.".into();
        }
    };
    let snap = match budgets.ledger().snapshot(applied.key()).await {
        Ok(snap) => snap,
        Err(e) => {
            tracing::warn!(error = %e, "could not read a channel's budget");
            return "I can't read this channel's budget right now. Please try again later.".into();
        }
    };
    let policy = applied.policy();
    let committed = snap.usage.plus(snap.reserved);
    describe_budget(&policy.name, policy.window, &policy.limits, &committed)
}

fn describe_budget(
    policy: &str,
    window: BudgetWindow,
    limits: &aigw_state::budget::Limits,
    committed: &Amount,
) -> String {
    let period = match window {
        BudgetWindow::Session => "for the whole session",
        BudgetWindow::Daily => "today (UTC)",
        BudgetWindow::Weekly => "this week (UTC)",
    };
    let left = limits.remaining(committed);
    let mut lines = vec![format!(
        "**This channel's AI budget** (policy `{policy}`, {period}):"
    )];
    if let (Some(limit), Some(left)) = (limits.tokens, left.tokens) {
        lines.push(format!(
            "- tokens: {} of {} left",
            thousands(left),
            thousands(limit)
        ));
    }
    if let (Some(limit), Some(left)) = (limits.cost_micros, left.cost_micros) {
        lines.push(format!(
            "- cost: ${:.2} of ${:.2} left",
            left as f64 / 1e6,
            limit as f64 / 1e6
        ));
    }
    if let (Some(limit), Some(left)) = (limits.audio_ms, left.audio_ms) {
        lines.push(format!(
            "- audio: {} s of {} s left",
            thousands(left / 1000),
            thousands(limit / 1000)
        ));
    }
    if lines.len() == 1 {
        lines.push("- nothing is limited".into());
    } else if limits.exceeded(committed).is_some() || limits.percent_used(committed) >= 100 {
        lines.push(
            "It is spent: `/ask` will not answer until a game master raises or resets it.".into(),
        );
    }
    lines.join("\n")
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The channel's transcript lines, or the sentence that answers instead.
async fn lines(d: &Discord, job: &Job, limit: usize) -> Result<Vec<TranscriptLine>, String> {
    let channel = &job.channel;
    match d
        .inner
        .transcripts
        .latest(&channel.guild_id, &channel.channel_id, limit)
        .await
    {
        Ok(Some(lines)) if !lines.is_empty() => Ok(lines),
        Ok(Some(_)) => {
            Err("The voice session in this channel has no transcribed lines yet.".into())
        }
        Ok(None) => Err(NO_TRANSCRIPT.into()),
        Err(e) => {
            tracing::warn!(error = %e, "could not read a transcript");
            Err(
                "I can't read this channel's voice transcript right now. Please try again later."
                    .into(),
            )
        }
    }
}

/// `/transcript [lines]`: the latest lines, speakers in bold.
async fn transcript(d: &Discord, job: &Job, limit: usize) -> String {
    let lines = match lines(d, job, limit).await {
        Ok(lines) => lines,
        Err(sentence) => return sentence,
    };
    let mut out = vec![format!(
        "**Voice transcript** (last {} line{}):",
        lines.len(),
        if lines.len() == 1 { "" } else { "s" }
    )];
    out.extend(
        lines
            .iter()
            .map(|l| format!("**{}**: {}", escape(&l.speaker), l.text.trim())),
    );
    out.join("\n")
}

/// `/recap`: the chat model summarises the transcript (its latest part when it is long).
async fn recap(d: &Discord, job: &Job) -> String {
    let lines = match lines(d, job, RECAP_LINES).await {
        Ok(lines) => lines,
        Err(sentence) => return sentence,
    };
    let mut kept = Vec::new();
    let mut chars = 0;
    for line in lines.iter().rev() {
        let text = format!("{}: {}", line.speaker, line.text.trim());
        chars += text.chars().count() + 1;
        if chars > RECAP_CHARS && !kept.is_empty() {
            break;
        }
        kept.push(text);
    }
    kept.reverse();
    let messages = vec![
        json!({"role": "system", "content": RECAP_PROMPT}),
        json!({"role": "user", "content": kept.join("\n")}),
    ];
    chat(d, job, messages).await
}

/// A display name with Discord's markdown characters escaped.
fn escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if "\\*_~`|>[]()#".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use aigw_state::budget::Limits;

    use super::*;

    #[test]
    fn budgets_read_plainly() {
        let limits = Limits {
            tokens: Some(200_000),
            cost_micros: Some(5_000_000),
            audio_ms: None,
        };
        let used = Amount {
            tokens: 1_234,
            cost_micros: 420_000,
            audio_ms: 0,
        };
        let text = describe_budget("table", BudgetWindow::Daily, &limits, &used);
        assert_eq!(
            text,
            "**This channel's AI budget** (policy `table`, today (UTC)):\n\
             - tokens: 198,766 of 200,000 left\n\
             - cost: $4.58 of $5.00 left"
        );
        let spent = Amount {
            tokens: 200_000,
            ..used
        };
        assert!(
            describe_budget("table", BudgetWindow::Session, &limits, &spent)
                .contains("It is spent")
        );
    }

    #[test]
    fn answers_and_refusals() {
        let ok = br#"{"choices":[{"index":0,"message":{"role":"assistant","content":" Hi! "},"finish_reason":"stop"}]}"#;
        assert_eq!(answer_text(ok).unwrap(), "Hi!");
        let cut = br#"{"choices":[{"index":0,"message":{"role":"assistant","content":"Hi"},"finish_reason":"length"}]}"#;
        assert!(answer_text(cut).unwrap().contains("cut short"));
        let quota = br#"{"error":{"message":"You exceeded your budget: tokens=0","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#;
        let text = refusal(StatusCode::TOO_MANY_REQUESTS, quota);
        assert!(text.contains("AI budget is used up") && !text.contains("tokens=0"));
        assert_eq!(refusal(StatusCode::BAD_GATEWAY, b"garbage"), SORRY);
        assert_eq!(escape("*Bob_*"), "\\*Bob\\_\\*");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(thousands(12), "12");
    }
}
