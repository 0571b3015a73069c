//! One voice session: a voice channel's ticks in, the realtime connection's events out, each
//! finalised utterance posted under its speaker's name.
//!
//! Every user heard becomes a track named by their id. Discord sends nothing while a user is
//! silent, so after a user's last audio their track is fed silence for
//! [`BridgeConfig::pad`]: the server's voice detection needs to hear the pause that ends an
//! utterance. When the ticks stop altogether (everyone left, the driver stalled) and when
//! the session stops, the tracks still speaking are committed, and the session waits for
//! their transcripts before it closes. If the realtime connection drops, the session
//! reconnects with backoff; audio in between is lost, and said so in the log.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::config::BridgeConfig;
use crate::post::Poster;
use crate::realtime::{self, ServerEvent};
use crate::voice::{TICK_MS, TICK_SAMPLES, Tick, UserId, VoiceConnector};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long ticks may stop before the tracks still speaking are committed.
const TICKS_STALLED: Duration = Duration::from_millis(600);
/// How long a stopping session waits for its last transcripts.
const DRAIN: Duration = Duration::from_secs(15);
/// Most speakers one session transcribes (the realtime endpoint's limit of named tracks per
/// connection); later newcomers are left out, with a warning.
pub const MAX_SPEAKERS: usize = 16;
/// How long connecting (and the session update) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a session's audio comes from and its lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// The guild.
    pub guild: u64,
    /// The voice channel listened to.
    pub voice_channel: u64,
    /// The text channel the lines are posted to (and whose transcript they join).
    pub text_channel: u64,
}

impl Placement {
    /// The gateway session that pays for the audio: the text channel's, as for its commands.
    pub fn session_id(&self) -> String {
        format!("discord:{}:{}", self.guild, self.text_channel)
    }
}

/// A realtime connection, split.
pub struct Connection {
    sink: SplitSink<Ws, Message>,
    stream: SplitStream<Ws>,
}

/// Opens a realtime connection for `placement` and configures its session; the error says
/// why in words.
pub async fn connect(config: &BridgeConfig, placement: &Placement) -> Result<Connection, String> {
    let work = async {
        let mut req = config
            .realtime_url()
            .into_client_request()
            .map_err(|e| format!("bad realtime URL: {e}"))?;
        let headers = req.headers_mut();
        if let Some(key) = &config.api_key {
            let value = format!("Bearer {key}")
                .parse()
                .map_err(|_| "the API key is not a valid header value".to_string())?;
            headers.insert(http::header::AUTHORIZATION, value);
        }
        if let Ok(v) = placement.session_id().parse() {
            headers.insert("x-session-id", v);
        }
        let (ws, _) = tokio_tungstenite::connect_async(req)
            .await
            .map_err(|e| match e {
                tokio_tungstenite::tungstenite::Error::Http(resp) => format!(
                    "the realtime endpoint refused the connection (HTTP {})",
                    resp.status()
                ),
                e => format!("the realtime endpoint could not be reached: {e}"),
            })?;
        let (mut sink, mut stream) = ws.split();
        sink.send(Message::Text(
            realtime::session_update(config).to_string().into(),
        ))
        .await
        .map_err(|e| format!("the realtime connection failed: {e}"))?;
        // `created` comes first, then `updated` (or an error about the settings).
        while let Some(msg) = stream.next().await {
            let msg = msg.map_err(|e| format!("the realtime connection failed: {e}"))?;
            let Message::Text(text) = msg else { continue };
            let v: serde_json::Value = serde_json::from_str(text.as_str()).unwrap_or_default();
            match v["type"].as_str() {
                Some("transcription_session.updated") => return Ok(Connection { sink, stream }),
                Some("error") => {
                    return Err(format!(
                        "the realtime endpoint refused the session: {}",
                        v["error"]["message"].as_str().unwrap_or("no reason given")
                    ));
                }
                _ => {}
            }
        }
        Err("the realtime endpoint closed the connection".to_string())
    };
    tokio::time::timeout(CONNECT_TIMEOUT, work)
        .await
        .unwrap_or_else(|_| Err("the realtime endpoint did not answer in time".to_string()))
}

/// A user's track.
#[derive(Debug, Default)]
struct Track {
    /// The tick of their last audio.
    last_audio: u64,
    /// Speech started and not yet committed.
    open: bool,
}

/// The session's state apart from I/O: which tracks get audio or silence on each tick.
#[derive(Debug)]
pub struct Mixer {
    tracks: HashMap<UserId, Track>,
    /// Users heard after [`MAX_SPEAKERS`] were reached.
    left_out: std::collections::HashSet<UserId>,
    tick: u64,
    pad_ticks: u64,
    silence: Vec<i16>,
}

impl Mixer {
    /// A mixer padding each track with `pad` of silence after its last audio.
    pub fn new(pad: Duration) -> Self {
        Self {
            tracks: HashMap::new(),
            left_out: std::collections::HashSet::new(),
            tick: 0,
            pad_ticks: (pad.as_millis() as u64).div_ceil(TICK_MS),
            silence: vec![0; TICK_SAMPLES],
        }
    }

    /// The frames to send for `tick`: each speaking user's audio, then silence for the
    /// users heard within the pad.
    pub fn frames(&mut self, tick: &Tick) -> Vec<Vec<u8>> {
        self.tick += 1;
        let mut out = Vec::new();
        for (user, pcm) in &tick.speaking {
            if pcm.is_empty() {
                continue;
            }
            if !self.tracks.contains_key(user) && self.tracks.len() >= MAX_SPEAKERS {
                if self.left_out.insert(*user) {
                    tracing::warn!(
                        user,
                        "{MAX_SPEAKERS} speakers are transcribed already; this one is left out"
                    );
                }
                continue;
            }
            self.tracks.entry(*user).or_default().last_audio = self.tick;
            out.extend(realtime::frame(&user.to_string(), pcm));
        }
        for (user, track) in &self.tracks {
            let quiet = self.tick - track.last_audio;
            if quiet > 0 && quiet <= self.pad_ticks {
                out.extend(realtime::frame(&user.to_string(), &self.silence));
            }
        }
        out
    }

    /// Notes a server event about a track.
    pub fn observe(&mut self, event: &ServerEvent) {
        let user = |track: &str| track.parse::<UserId>().ok();
        match event {
            ServerEvent::SpeechStarted { track } => {
                if let Some(t) = user(track).and_then(|u| self.tracks.get_mut(&u)) {
                    t.open = true;
                }
            }
            ServerEvent::Committed { track } => {
                if let Some(t) = user(track).and_then(|u| self.tracks.get_mut(&u)) {
                    t.open = false;
                }
            }
            _ => {}
        }
    }

    /// The tracks still speaking, now marked committed.
    pub fn take_open(&mut self) -> Vec<UserId> {
        let mut open: Vec<_> = self
            .tracks
            .iter_mut()
            .filter(|(_, t)| t.open)
            .map(|(u, t)| {
                t.open = false;
                *u
            })
            .collect();
        open.sort_unstable();
        open
    }

    /// Forgets the tracks' speech state (a new connection starts afresh).
    pub fn reset(&mut self) {
        for t in self.tracks.values_mut() {
            t.open = false;
        }
    }
}

/// What the session was given to run.
pub struct SessionParts {
    /// Where it listens and posts.
    pub placement: Placement,
    /// The bridge's settings.
    pub config: Arc<BridgeConfig>,
    /// Display names.
    pub connector: Arc<dyn VoiceConnector>,
    /// Posting.
    pub poster: Poster,
    /// The open realtime connection.
    pub connection: Connection,
    /// The voice channel's ticks.
    pub ticks: mpsc::Receiver<Tick>,
    /// Fires when the session should stop.
    pub stop: oneshot::Receiver<()>,
}

/// Runs a session until it is stopped or its ticks end, then drains its last transcripts.
pub async fn run(parts: SessionParts) {
    let SessionParts {
        placement,
        config,
        connector,
        poster,
        connection,
        mut ticks,
        mut stop,
    } = parts;
    let (lines_tx, lines_rx) = mpsc::unbounded_channel::<(UserId, String)>();
    let posting = tokio::spawn(post_lines(placement, connector, poster, lines_rx));
    let mut conn = Some(connection);
    let mut mixer = Mixer::new(config.pad());
    let mut pending = 0usize;
    let mut last_tick = Instant::now();
    let mut stalled_committed = false;
    let mut retry_at = Instant::now();
    let mut failures = 0u32;
    let mut watchdog = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = &mut stop => break,
            tick = ticks.recv() => {
                let Some(tick) = tick else { break };
                last_tick = Instant::now();
                stalled_committed = false;
                let frames = mixer.frames(&tick);
                if let Some(c) = conn.as_mut() {
                    for frame in frames {
                        if let Err(e) = c.sink.send(Message::Binary(frame.into())).await {
                            tracing::warn!(error = %e, "the realtime connection failed; audio is lost until it is back");
                            conn = None;
                            break;
                        }
                    }
                }
            }
            msg = next(&mut conn) => match msg {
                Some(event) => {
                    handle(&event, &mut mixer, &mut pending, &lines_tx);
                }
                None => {
                    tracing::warn!("the realtime connection closed; audio is lost until it is back");
                    conn = None;
                }
            },
            _ = watchdog.tick() => {
                if conn.is_none() && Instant::now() >= retry_at {
                    match connect(&config, &placement).await {
                        Ok(c) => {
                            tracing::info!("the realtime connection is back");
                            conn = Some(c);
                            mixer.reset();
                            pending = 0;
                            failures = 0;
                        }
                        Err(e) => {
                            failures += 1;
                            let wait = Duration::from_secs(1 << failures.min(5));
                            tracing::warn!(error = %e, retry_in_s = wait.as_secs(), "could not reconnect");
                            retry_at = Instant::now() + wait;
                        }
                    }
                }
                if !stalled_committed && last_tick.elapsed() >= TICKS_STALLED {
                    stalled_committed = true;
                    commit_open(&mut conn, &mut mixer).await;
                }
            }
        }
    }
    // Stopping: what is still being said becomes an utterance, and its text is awaited.
    // Each commit is answered (in order, at once) by `committed` or an error; then the
    // transcripts of everything committed.
    let mut unanswered = commit_open(&mut conn, &mut mixer).await;
    let deadline = tokio::time::Instant::now() + DRAIN;
    while pending > 0 || unanswered > 0 {
        match tokio::time::timeout_at(deadline, next(&mut conn)).await {
            Ok(Some(event)) => {
                if matches!(
                    event,
                    ServerEvent::Committed { .. } | ServerEvent::Error { .. }
                ) {
                    unanswered = unanswered.saturating_sub(1);
                }
                handle(&event, &mut mixer, &mut pending, &lines_tx);
            }
            Ok(None) | Err(_) => break,
        }
    }
    if pending > 0 {
        tracing::warn!(
            pending,
            "the session stopped before its last utterances were transcribed"
        );
    }
    if let Some(mut c) = conn {
        let _ = c.sink.send(Message::Close(None)).await;
    }
    drop(lines_tx);
    let _ = posting.await;
    tracing::info!(guild = placement.guild, "voice session ended");
}

/// The next server event (`None`: the connection is gone); pending for ever without one.
async fn next(conn: &mut Option<Connection>) -> Option<ServerEvent> {
    let Some(c) = conn.as_mut() else {
        return std::future::pending().await;
    };
    loop {
        match c.stream.next().await? {
            Ok(Message::Text(text)) => {
                let v: serde_json::Value = serde_json::from_str(text.as_str()).ok()?;
                return Some(ServerEvent::parse(&v));
            }
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

fn handle(
    event: &ServerEvent,
    mixer: &mut Mixer,
    pending: &mut usize,
    lines: &mpsc::UnboundedSender<(UserId, String)>,
) {
    mixer.observe(event);
    match event {
        ServerEvent::Committed { .. } => *pending += 1,
        ServerEvent::Completed { track, text } => {
            *pending = pending.saturating_sub(1);
            let text = text.trim();
            match track.parse::<UserId>() {
                Ok(user) if !text.is_empty() => {
                    let _ = lines.send((user, text.to_string()));
                }
                Ok(_) => {}
                Err(_) => tracing::warn!(%track, "a transcript on a track the bridge did not open"),
            }
        }
        ServerEvent::Failed { track, message } => {
            *pending = pending.saturating_sub(1);
            tracing::warn!(%track, %message, "an utterance could not be transcribed");
        }
        ServerEvent::Error { code, message } => {
            tracing::warn!(%code, %message, "the realtime endpoint refused an event");
        }
        _ => {}
    }
}

/// Commits the tracks still speaking; how many commits were sent.
async fn commit_open(conn: &mut Option<Connection>, mixer: &mut Mixer) -> usize {
    let open = mixer.take_open();
    let Some(c) = conn.as_mut() else { return 0 };
    let mut sent = 0;
    for user in open {
        let commit = realtime::commit(&user.to_string()).to_string();
        if c.sink.send(Message::Text(commit.into())).await.is_err() {
            *conn = None;
            break;
        }
        sent += 1;
    }
    sent
}

/// Posts the session's lines in order: the Discord message, then the gateway's transcript.
async fn post_lines(
    placement: Placement,
    connector: Arc<dyn VoiceConnector>,
    poster: Poster,
    mut lines: mpsc::UnboundedReceiver<(UserId, String)>,
) {
    let mut names: HashMap<UserId, String> = HashMap::new();
    while let Some((user, text)) = lines.recv().await {
        let name = match names.get(&user) {
            Some(n) => n.clone(),
            None => {
                let n = connector.display_name(placement.guild, user).await;
                names.insert(user, n.clone());
                n
            }
        };
        if let Err(e) = poster.message(placement.text_channel, &name, &text).await {
            tracing::warn!(error = %e, "could not post an utterance to Discord");
        }
        if let Err(e) = poster
            .transcript(placement.guild, placement.text_channel, &name, user, &text)
            .await
        {
            tracing::warn!(error = %e, "could not add an utterance to the gateway's transcript");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tick(users: &[u64]) -> Tick {
        Tick {
            speaking: users
                .iter()
                .map(|&u| (u, vec![100; TICK_SAMPLES]))
                .collect(),
        }
    }

    #[test]
    fn silent_users_get_silence_for_the_pad_only() {
        let mut m = Mixer::new(Duration::from_millis(60));
        assert_eq!(m.frames(&tick(&[1, 2])).len(), 2);
        // User 2 stops: three ticks of silence (60 ms), then nothing.
        let frames: Vec<usize> = (0..5).map(|_| m.frames(&tick(&[1])).len()).collect();
        assert_eq!(frames, [2, 2, 2, 1, 1]);
        let f = m.frames(&tick(&[]));
        assert_eq!(f.len(), 1, "user 1's first silent tick");
        assert_eq!(&f[0][..2], &[1, b'1']);
        assert!(f[0][2..].iter().all(|&b| b == 0));
        assert_eq!(f[0].len(), 2 + TICK_SAMPLES * 2);
    }

    #[test]
    fn speakers_past_the_cap_are_left_out() {
        let mut m = Mixer::new(Duration::from_millis(20));
        let users: Vec<u64> = (1..=MAX_SPEAKERS as u64 + 2).collect();
        assert_eq!(m.frames(&tick(&users)).len(), MAX_SPEAKERS);
        assert_eq!(m.frames(&tick(&users)).len(), MAX_SPEAKERS);
    }

    #[test]
    fn open_tracks_are_committed_once() {
        let mut m = Mixer::new(Duration::from_millis(60));
        m.frames(&tick(&[5, 6]));
        m.observe(&ServerEvent::SpeechStarted { track: "5".into() });
        m.observe(&ServerEvent::SpeechStarted { track: "6".into() });
        m.observe(&ServerEvent::Committed { track: "6".into() });
        assert_eq!(m.take_open(), [5]);
        assert!(m.take_open().is_empty());
    }
}
