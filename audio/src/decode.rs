//! Audio files in, 16 kHz mono f32 out: what every engine of this crate consumes.
//!
//! [`decode`] probes the container (wav, mp3, flac, ogg/vorbis; the file name's extension is
//! only a hint) with symphonia, decodes the first audio track, averages its channels and
//! converts the rate with [`resample`] (a polyphase windowed-sinc resampler, see there).
//! Packets that fail to decode are skipped (a damaged frame in a long mp3 is not fatal), but a
//! file in which most packets fail, or that yields no samples, is refused. Decoding stops with
//! [`DecodeError::TooLong`] as soon as the audio passes the caller's duration limit, so a huge
//! upload never becomes a huge buffer.

pub mod resample;

use std::io::Cursor;

use symphonia::core::audio::SampleBuffer;
use symphonia::core::codecs::{CODEC_TYPE_NULL, DecoderOptions};
use symphonia::core::errors::Error as SymphoniaError;
use symphonia::core::formats::FormatOptions;
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::Hint;

pub use resample::resample;

/// The rate every engine works at.
pub const SAMPLE_RATE: u32 = 16_000;

/// Why a file could not be turned into samples.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    /// Nothing was uploaded.
    #[error("the audio file is empty")]
    Empty,
    /// The bytes are not a container symphonia knows (wav, mp3, flac, ogg).
    #[error("the file is not a supported audio format (wav, mp3, flac, ogg/vorbis): {0}")]
    Unsupported(String),
    /// The container was recognised but its audio could not be decoded.
    #[error("the audio could not be decoded: {0}")]
    Corrupt(String),
    /// The file holds no audio samples.
    #[error("the audio file contains no audio")]
    NoAudio,
    /// The audio is longer than allowed.
    #[error("the audio is longer than the limit of {limit_secs} seconds")]
    TooLong {
        /// The limit, in seconds.
        limit_secs: f64,
    },
}

/// Decoded audio: mono samples at [`SAMPLE_RATE`].
#[derive(Debug, Clone, PartialEq)]
pub struct Audio {
    /// The samples, in [-1, 1].
    pub samples: Vec<f32>,
    /// The source's sample rate.
    pub source_rate: u32,
    /// The source's channel count.
    pub source_channels: usize,
}

impl Audio {
    /// Length in seconds.
    pub fn duration_secs(&self) -> f64 {
        self.samples.len() as f64 / f64::from(SAMPLE_RATE)
    }
}

/// Decodes `bytes` (a whole file, e.g. a `Vec<u8>` or `bytes::Bytes`, read in place) to 16 kHz
/// mono. `name_hint` is the upload's file name (its extension helps the probe); `max_secs`
/// bounds the audio's duration.
pub fn decode<B>(bytes: B, name_hint: Option<&str>, max_secs: f64) -> Result<Audio, DecodeError>
where
    B: AsRef<[u8]> + Send + Sync + 'static,
{
    if bytes.as_ref().is_empty() {
        return Err(DecodeError::Empty);
    }
    let mut hint = Hint::new();
    if let Some(ext) = name_hint.and_then(|n| n.rsplit_once('.')).map(|(_, e)| e) {
        hint.with_extension(&ext.to_ascii_lowercase());
    }
    let source = MediaSourceStream::new(Box::new(Cursor::new(bytes)), Default::default());
    let probed = symphonia::default::get_probe()
        .format(
            &hint,
            source,
            &FormatOptions::default(),
            &MetadataOptions::default(),
        )
        .map_err(|e| DecodeError::Unsupported(describe(&e)))?;
    let mut format = probed.format;
    let track = format
        .tracks()
        .iter()
        .find(|t| t.codec_params.codec != CODEC_TYPE_NULL)
        .ok_or(DecodeError::NoAudio)?;
    let track_id = track.id;
    let params = track.codec_params.clone();
    let rate = params
        .sample_rate
        .ok_or_else(|| DecodeError::Corrupt("the track has no sample rate".into()))?;
    let too_long = DecodeError::TooLong {
        limit_secs: max_secs,
    };
    let max_frames = (max_secs * f64::from(rate)).ceil() as u64;
    if params.n_frames.is_some_and(|n| n > max_frames) {
        return Err(too_long);
    }
    let mut decoder = symphonia::default::get_codecs()
        .make(&params, &DecoderOptions::default())
        .map_err(|e| DecodeError::Unsupported(describe(&e)))?;

    let mut mono: Vec<f32> = Vec::new();
    let mut channels = params.channels.map_or(0, |c| c.count());
    let (mut good, mut bad) = (0usize, 0usize);
    let mut last_error = String::new();
    let mut buffer: Option<SampleBuffer<f32>> = None;
    loop {
        let packet = match format.next_packet() {
            Ok(packet) => packet,
            Err(SymphoniaError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                break;
            }
            Err(SymphoniaError::ResetRequired) => break,
            Err(e) => {
                // A damaged container after good audio ends the stream; before any, it is fatal.
                if good == 0 {
                    return Err(DecodeError::Corrupt(describe(&e)));
                }
                break;
            }
        };
        if packet.track_id() != track_id {
            continue;
        }
        let decoded = match decoder.decode(&packet) {
            Ok(decoded) => decoded,
            Err(SymphoniaError::DecodeError(e)) => {
                bad += 1;
                last_error = e.to_string();
                continue;
            }
            Err(SymphoniaError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                break;
            }
            Err(e) => return Err(DecodeError::Corrupt(describe(&e))),
        };
        good += 1;
        let spec = *decoded.spec();
        channels = spec.channels.count().max(1);
        let frames = decoded.frames();
        if frames == 0 {
            continue;
        }
        let buf = match &mut buffer {
            Some(buf) if buf.capacity() >= decoded.capacity() * channels => buf,
            slot => slot.insert(SampleBuffer::new(decoded.capacity() as u64, spec)),
        };
        buf.copy_interleaved_ref(decoded);
        let samples = buf.samples();
        if channels == 1 {
            mono.extend_from_slice(&samples[..frames]);
        } else {
            let scale = 1.0 / channels as f32;
            mono.extend(
                samples[..frames * channels]
                    .chunks_exact(channels)
                    .map(|frame| frame.iter().sum::<f32>() * scale),
            );
        }
        if mono.len() as u64 > max_frames {
            return Err(too_long);
        }
    }
    if good == 0 && bad > 0 {
        return Err(DecodeError::Corrupt(last_error));
    }
    // Mostly undecodable: random bytes that happened to look like an mp3 frame header.
    if bad > good {
        return Err(DecodeError::Corrupt(format!(
            "{bad} of {} packets could not be decoded ({last_error})",
            good + bad
        )));
    }
    if mono.is_empty() {
        return Err(DecodeError::NoAudio);
    }
    if mono.iter().any(|x| !x.is_finite()) {
        return Err(DecodeError::Corrupt(
            "the audio holds non-finite samples".into(),
        ));
    }
    Ok(Audio {
        samples: resample(&mono, rate, SAMPLE_RATE),
        source_rate: rate,
        source_channels: channels.max(1),
    })
}

fn describe(e: &SymphoniaError) -> String {
    match e {
        SymphoniaError::IoError(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            "the file ends too early".into()
        }
        SymphoniaError::Unsupported(what) => format!("unsupported {what}"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A PCM16 wav of `samples` (interleaved when `channels` > 1).
    pub(crate) fn wav(samples: &[i16], rate: u32, channels: u16) -> Vec<u8> {
        let data_len = (samples.len() * 2) as u32;
        let mut out = Vec::new();
        out.extend_from_slice(b"RIFF");
        out.extend_from_slice(&(36 + data_len).to_le_bytes());
        out.extend_from_slice(b"WAVEfmt ");
        out.extend_from_slice(&16u32.to_le_bytes());
        out.extend_from_slice(&1u16.to_le_bytes());
        out.extend_from_slice(&channels.to_le_bytes());
        out.extend_from_slice(&rate.to_le_bytes());
        out.extend_from_slice(&(rate * u32::from(channels) * 2).to_le_bytes());
        out.extend_from_slice(&(channels * 2).to_le_bytes());
        out.extend_from_slice(&16u16.to_le_bytes());
        out.extend_from_slice(b"data");
        out.extend_from_slice(&data_len.to_le_bytes());
        for s in samples {
            out.extend_from_slice(&s.to_le_bytes());
        }
        out
    }

    fn tone(freq: f64, rate: u32, secs: f64) -> Vec<i16> {
        (0..(f64::from(rate) * secs) as usize)
            .map(|i| {
                let t = i as f64 / f64::from(rate);
                ((2.0 * std::f64::consts::PI * freq * t).sin() * 16_000.0) as i16
            })
            .collect()
    }

    #[test]
    fn a_stereo_wav_is_downmixed_and_resampled() {
        let left = tone(440.0, 44_100, 1.0);
        let interleaved: Vec<i16> = left.iter().flat_map(|&s| [s, 0]).collect();
        let audio = decode(wav(&interleaved, 44_100, 2), Some("x.WAV"), 60.0).unwrap();
        assert_eq!((audio.source_rate, audio.source_channels), (44_100, 2));
        assert!(
            (audio.duration_secs() - 1.0).abs() < 1e-3,
            "{}",
            audio.duration_secs()
        );
        // Half the left channel's amplitude: 16000/32768/2 ≈ 0.244.
        let peak = audio.samples.iter().fold(0f32, |m, x| m.max(x.abs()));
        assert!((peak - 0.244).abs() < 0.01, "peak {peak}");
    }

    #[test]
    fn bad_inputs_get_clear_errors() {
        assert_eq!(decode(Vec::new(), None, 60.0), Err(DecodeError::Empty));
        let garbage = b"this is certainly not an audio file, just some text".repeat(100);
        assert!(matches!(
            decode(garbage, Some("a.mp3"), 60.0),
            Err(DecodeError::Unsupported(_))
        ));
        let noise: Vec<u8> = (0u32..200_000)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let err = decode(noise, Some("noise.mp3"), 60.0).unwrap_err();
        assert!(
            matches!(err, DecodeError::Unsupported(_) | DecodeError::Corrupt(_)),
            "{err:?}"
        );
        let empty_wav = wav(&[], 16_000, 1);
        assert_eq!(decode(empty_wav, None, 60.0), Err(DecodeError::NoAudio));
        let mut cut = wav(&tone(440.0, 16_000, 1.0), 16_000, 1);
        cut.truncate(30);
        assert!(decode(cut, None, 60.0).is_err());
    }

    #[test]
    fn the_duration_limit_is_enforced_before_decoding_it_all() {
        let long = wav(&tone(300.0, 8_000, 3.0), 8_000, 1);
        assert_eq!(
            decode(long.clone(), None, 2.5),
            Err(DecodeError::TooLong { limit_secs: 2.5 })
        );
        assert!(decode(long, None, 3.0).is_ok());
    }
}
