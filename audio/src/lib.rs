//! Audio engines of aigw, knowing nothing of HTTP.
//!
//! Layout (one module per concern):
//! - transcription: [`decode`] (symphonia decoding, downmix, windowed-sinc resampling to
//!   16 kHz mono) and [`whisper`] (whisper-rs on a bounded pool of its own threads);
//! - diarisation models in candle: [`segmentation`] (PyanNet segmentation-3.0 with powerset
//!   decoding), [`campplus`] (CAM++ speaker embeddings) over [`fbank`] (Kaldi-compatible
//!   log-mel filterbanks);
//! - [`diarize`]: streaming speaker diarisation (diart's rolling windows, incremental
//!   clustering with the Hungarian method, delayed aggregation) on top of those, and
//!   whole-file diarisation through the same pipeline; `parallel` (private) holds the scoped
//!   threads with which a step uses more than one core.

pub mod campplus;
pub mod decode;
pub mod diarize;
pub mod fbank;
mod parallel;
pub mod segmentation;
mod weights;
pub mod whisper;
