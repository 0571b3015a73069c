//! Incoming audio → 16 kHz mono f32, as a stream: PCM16 little-endian samples at 16, 24 or
//! 48 kHz, mono or interleaved stereo (averaged), resampled with the `audio` crate's
//! windowed-sinc resampler one block at a time.
//!
//! The resampler works on whole signals; a stream is cut into blocks that each see
//! [`CONTEXT`] input samples of real audio on both sides, and only the block's own outputs
//! are kept, so the joins are seamless (the kernel reaches 51 samples at 24 kHz, 81 at
//! 48 kHz). The price is [`CONTEXT`] samples of latency (4 ms at 24 kHz).

use aigw_audio::decode::resample;

/// The rate everything downstream works at.
pub const TARGET_RATE: u32 = 16_000;
/// Input samples of context each side of a block: a multiple of 3 (24 and 48 kHz periods)
/// wider than the resampler's kernel.
const CONTEXT: usize = 96;

/// The format of the incoming audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputFormat {
    /// 16000, 24000 or 48000.
    pub rate: u32,
    /// 1 or 2 (interleaved).
    pub channels: u16,
}

impl Default for InputFormat {
    /// OpenAI's `pcm16`: 24 kHz mono.
    fn default() -> Self {
        Self {
            rate: 24_000,
            channels: 1,
        }
    }
}

/// One track's converter.
#[derive(Debug)]
pub struct Converter {
    format: InputFormat,
    /// Mono input not yet turned into output, preceded by up to [`CONTEXT`] samples already
    /// used (the left context).
    pending: Vec<f32>,
    /// How many of `pending`'s first samples are left context.
    left: usize,
    /// An odd trailing byte or stereo half-frame from the last chunk.
    carry: Vec<u8>,
}

impl Converter {
    /// A converter for `format`.
    pub fn new(format: InputFormat) -> Self {
        Self {
            format,
            pending: Vec::new(),
            left: 0,
            carry: Vec::new(),
        }
    }

    /// The period of the rate ratio, in input samples (blocks are multiples of it).
    fn period(&self) -> usize {
        (self.format.rate / gcd(self.format.rate, TARGET_RATE)) as usize
    }

    /// Converts `bytes` of PCM16; returns the 16 kHz samples now complete.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<f32> {
        let frame = 2 * usize::from(self.format.channels.max(1));
        self.carry.extend_from_slice(bytes);
        let whole = self.carry.len() / frame * frame;
        for f in self.carry[..whole].chunks_exact(frame) {
            let sum: f32 = f
                .chunks_exact(2)
                .map(|s| f32::from(i16::from_le_bytes([s[0], s[1]])) / 32768.0)
                .sum();
            self.pending
                .push(sum / f32::from(self.format.channels.max(1)));
        }
        self.carry.drain(..whole);
        if self.format.rate == TARGET_RATE {
            return std::mem::take(&mut self.pending);
        }
        let period = self.period();
        let fresh = self.pending.len() - self.left;
        if fresh <= CONTEXT {
            return Vec::new();
        }
        let block = (fresh - CONTEXT) / period * period;
        if block == 0 {
            return Vec::new();
        }
        self.convert(block)
    }

    /// Converts what is left, as if silence followed (the end of the stream).
    pub fn flush(&mut self) -> Vec<f32> {
        if self.format.rate == TARGET_RATE {
            return std::mem::take(&mut self.pending);
        }
        let fresh = self.pending.len() - self.left;
        let period = self.period();
        let block = fresh.div_ceil(period) * period;
        if block == 0 {
            return Vec::new();
        }
        self.pending.resize(self.left + block + CONTEXT, 0.0);
        let out = self.convert(block);
        self.pending.clear();
        self.left = 0;
        out
    }

    /// Resamples `block` samples after the left context, keeping [`CONTEXT`] samples of
    /// context for the next call.
    fn convert(&mut self, block: usize) -> Vec<f32> {
        let (rate, to) = (self.format.rate as usize, TARGET_RATE as usize);
        let end = (self.left + block + CONTEXT).min(self.pending.len());
        let out = resample(&self.pending[..end], self.format.rate, TARGET_RATE);
        let from = self.left * to / rate;
        let upto = ((self.left + block) * to / rate).min(out.len());
        let kept = out[from..upto].to_vec();
        let used = self.left + block;
        let keep_from = used.saturating_sub(CONTEXT);
        self.pending.drain(..keep_from);
        self.left = used - keep_from;
        kept
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pcm(samples: &[f32], channels: usize) -> Vec<u8> {
        samples
            .iter()
            .flat_map(|s| {
                let v = (s * 32767.0) as i16;
                std::iter::repeat_n(v.to_le_bytes(), channels).flatten()
            })
            .collect()
    }

    fn sine(rate: u32, secs: f64) -> Vec<f32> {
        let n = (f64::from(rate) * secs) as usize;
        (0..n)
            .map(|i| {
                (0.5 * (2.0 * std::f64::consts::PI * 440.0 * i as f64 / f64::from(rate)).sin())
                    as f32
            })
            .collect()
    }

    #[test]
    fn streamed_equals_whole_for_every_rate() {
        for (rate, channels) in [(16_000, 1), (24_000, 1), (48_000, 2), (24_000, 2)] {
            let signal = sine(rate, 0.5);
            let bytes = pcm(&signal, channels);
            let whole = resample(&signal, rate, TARGET_RATE);
            let mut conv = Converter::new(InputFormat {
                rate,
                channels: channels as u16,
            });
            let mut streamed = Vec::new();
            // Odd chunk sizes split samples and stereo frames.
            for chunk in bytes.chunks(331) {
                streamed.extend(conv.push(chunk));
            }
            streamed.extend(conv.flush());
            assert_eq!(streamed.len(), whole.len(), "{rate} Hz x{channels}");
            let worst = streamed
                .iter()
                .zip(&whole)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(worst < 1e-3, "{rate} Hz x{channels}: {worst}");
        }
    }
}
