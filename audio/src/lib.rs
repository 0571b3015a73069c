//! Audio engines of aigw, knowing nothing of HTTP.
//!
//! Layout (one module per concern):
//! - transcription: [`decode`] (symphonia decoding, downmix, windowed-sinc resampling to
//!   16 kHz mono) and [`whisper`] (whisper-rs on a bounded pool of its own threads);
//! - diarisation models in candle: PyanNet segmentation-3.0 with powerset decoding, CAM++
//!   speaker embeddings over a Kaldi-compatible fbank front end;
//! - streaming diarisation (rolling buffer, clustering) on top of those.

pub mod decode;
pub mod whisper;
