//! Audio engines of aigw, knowing nothing of HTTP.
//!
//! Layout (one module per concern):
//! - transcription: input decoding and resampling to 16 kHz mono, whisper (whisper-rs);
//! - diarisation models in candle: PyanNet segmentation-3.0 with powerset decoding, CAM++
//!   speaker embeddings over a Kaldi-compatible fbank front end;
//! - streaming diarisation (rolling buffer, clustering) on top of those.
