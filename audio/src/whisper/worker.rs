//! A worker thread of the pool: takes jobs off the queue, runs whisper.cpp on its own state,
//! and turns the result into a [`Transcript`] (segments, words, language).

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use whisper_rs::{FullParams, SamplingStrategy, WhisperContext, WhisperState};

use super::{Job, Segment, Transcript, WhisperError, WhisperStats, Word};
use crate::decode::SAMPLE_RATE;

pub(super) struct Worker {
    pub(super) ctx: Arc<WhisperContext>,
    pub(super) state: WhisperState,
    pub(super) threads: usize,
    pub(super) stats: Arc<WhisperStats>,
}

impl Worker {
    pub(super) fn run(mut self, jobs: &Mutex<Receiver<Job>>) {
        loop {
            let job = match jobs.lock() {
                Ok(rx) => rx.recv(),
                Err(_) => return,
            };
            let Ok(job) = job else { return };
            self.stats.queued.fetch_sub(1, Ordering::Relaxed);
            if job.cancelled.load(Ordering::Relaxed) || job.reply.is_closed() {
                continue;
            }
            self.stats.active.fetch_add(1, Ordering::Relaxed);
            let queued = job.enqueued.elapsed();
            let start = Instant::now();
            let result = self.transcribe(&job).map(|mut t| {
                t.queued = queued;
                t.elapsed = start.elapsed();
                t
            });
            self.stats.active.fetch_sub(1, Ordering::Relaxed);
            if let Ok(t) = &result {
                self.stats
                    .audio_ms
                    .fetch_add((t.duration * 1000.0) as u64, Ordering::Relaxed);
                self.stats.completed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    audio_secs = t.duration,
                    elapsed_ms = t.elapsed.as_millis() as u64,
                    queued_ms = queued.as_millis() as u64,
                    "transcribed"
                );
            }
            // The caller may have gone: nobody to tell.
            let _ = job.reply.send(result);
        }
    }

    fn transcribe(&mut self, job: &Job) -> Result<Transcript, WhisperError> {
        let o = &job.options;
        let mut params = FullParams::new(SamplingStrategy::Greedy { best_of: 1 });
        params.set_n_threads(i32::try_from(self.threads).unwrap_or(1));
        params.set_translate(o.translate);
        params.set_language(Some(o.language.as_deref().unwrap_or(
            if self.ctx.is_multilingual() {
                "auto"
            } else {
                "en"
            },
        )));
        if let Some(prompt) = o.prompt.as_deref().filter(|p| !p.is_empty()) {
            params.set_initial_prompt(prompt);
        }
        params.set_temperature(o.temperature);
        if o.temperature > 0.0 {
            // A fixed temperature: no fallback schedule.
            params.set_temperature_inc(0.0);
        }
        params.set_token_timestamps(o.words);
        params.set_print_progress(false);
        params.set_print_realtime(false);
        params.set_print_special(false);
        params.set_print_timestamps(false);
        set_abort_flag(&mut params, &job.cancelled);

        let result = self.state.full(params, &job.samples);
        if job.cancelled.load(Ordering::Relaxed) {
            return Err(WhisperError::Cancelled);
        }
        result.map_err(|e| WhisperError::Failed(e.to_string()))?;

        let eot = self.ctx.token_eot();
        let mut segments = Vec::new();
        let mut words: Vec<Word> = Vec::new();
        for (id, segment) in self.state.as_iter().enumerate() {
            let text = segment
                .to_str_lossy()
                .map_err(|e| WhisperError::Failed(e.to_string()))?
                .into_owned();
            let mut tokens = Vec::new();
            let mut logprob = 0f64;
            let mut word: Option<(Vec<u8>, f64, f64)> = None;
            for i in 0..segment.n_tokens() {
                let Some(token) = segment.get_token(i) else {
                    continue;
                };
                let data = token.token_data();
                if data.id >= eot {
                    continue;
                }
                tokens.push(data.id);
                logprob += f64::from(data.plog);
                if o.words {
                    let bytes = token.to_bytes().unwrap_or_default();
                    let (t0, t1) = (data.t0 as f64 / 100.0, data.t1 as f64 / 100.0);
                    match &mut word {
                        Some((text, _, end)) if !bytes.starts_with(b" ") => {
                            text.extend_from_slice(bytes);
                            *end = t1.max(*end);
                        }
                        _ => {
                            if let Some(done) = word.take() {
                                push_word(&mut words, done);
                            }
                            word = Some((bytes.to_vec(), t0, t1));
                        }
                    }
                }
            }
            if let Some(done) = word.take() {
                push_word(&mut words, done);
            }
            segments.push(Segment {
                id,
                start: segment.start_timestamp() as f64 / 100.0,
                end: segment.end_timestamp() as f64 / 100.0,
                avg_logprob: if tokens.is_empty() {
                    0.0
                } else {
                    logprob / tokens.len() as f64
                },
                compression_ratio: compression_ratio(&text),
                no_speech_prob: f64::from(segment.no_speech_probability()),
                temperature: f64::from(o.temperature),
                tokens,
                text,
            });
        }
        let text = segments
            .iter()
            .map(|s| s.text.as_str())
            .collect::<String>()
            .trim()
            .to_owned();
        let lang_id = self.state.full_lang_id_from_state();
        let language = whisper_rs::get_lang_str(lang_id).unwrap_or("en").to_owned();
        let language_name = whisper_rs::get_lang_str_full(lang_id)
            .unwrap_or("english")
            .to_owned();
        Ok(Transcript {
            text,
            language,
            language_name,
            duration: job.samples.len() as f64 / f64::from(SAMPLE_RATE),
            segments,
            words,
            queued: Duration::ZERO,
            elapsed: Duration::ZERO,
        })
    }
}

/// whisper.cpp polls this during a transcription; `true` aborts it.
extern "C" fn abort_if_set(flag: *mut std::ffi::c_void) -> bool {
    #[allow(
        unsafe_code,
        reason = "FFI: the pointer is the job's AtomicBool (see set_abort_flag)"
    )]
    // SAFETY: `flag` is the `AtomicBool` given to `set_abort_flag`, which outlives the call.
    let flag = unsafe { &*flag.cast::<AtomicBool>() };
    flag.load(Ordering::Relaxed)
}

/// Makes whisper.cpp abort when `flag` is set. (whisper-rs's `set_abort_callback_safe` casts
/// its boxed closure to the wrong type, so it reads garbage and aborts at random: the raw
/// callback is used instead.)
fn set_abort_flag(params: &mut FullParams<'_, '_>, flag: &Arc<AtomicBool>) {
    #[allow(
        unsafe_code,
        reason = "FFI: a C callback with a pointer to the job's flag"
    )]
    // SAFETY: the callback only reads the AtomicBool behind the pointer; the job holds the Arc
    // (and so the flag) until `full` has returned and the params are dropped.
    unsafe {
        params.set_abort_callback(Some(abort_if_set));
        params.set_abort_callback_user_data(Arc::as_ptr(flag).cast_mut().cast());
    }
}

/// Adds a finished word, without its spaces and surrounding punctuation (as OpenAI's words
/// are); punctuation alone is no word.
fn push_word(words: &mut Vec<Word>, (bytes, start, end): (Vec<u8>, f64, f64)) {
    let text = String::from_utf8_lossy(&bytes);
    let word = text
        .trim()
        .trim_matches(|c: char| c.is_ascii_punctuation() && c != '\'')
        .to_owned();
    if !word.is_empty() {
        words.push(Word { word, start, end });
    }
}

/// `len(text) / len(zlib(text))`, as openai-whisper computes it.
fn compression_ratio(text: &str) -> f64 {
    if text.is_empty() {
        return 0.0;
    }
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    if z.write_all(text.as_bytes()).is_err() {
        return 0.0;
    }
    match z.finish() {
        Ok(compressed) if !compressed.is_empty() => text.len() as f64 / compressed.len() as f64,
        _ => 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_lose_their_spaces_and_punctuation() {
        let mut words = Vec::new();
        for w in [" dog.", " \"Hello,", " don't", " -", " 5%"] {
            push_word(&mut words, (w.as_bytes().to_vec(), 1.0, 2.0));
        }
        let got: Vec<&str> = words.iter().map(|w| w.word.as_str()).collect();
        assert_eq!(got, ["dog", "Hello", "don't", "5"]);
    }

    #[test]
    fn compression_ratio_flags_repetition() {
        let plain = compression_ratio(" The quick brown fox jumps over the lazy dog.");
        let repeated = compression_ratio(&" the the the".repeat(40));
        assert!(plain > 0.5 && plain < 1.5, "{plain}");
        assert!(repeated > 2.4, "{repeated}");
        assert_eq!(compression_ratio(""), 0.0);
    }
}
