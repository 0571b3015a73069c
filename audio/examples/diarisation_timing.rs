//! Times the diarisation models on this machine: segmentation of one window, fbank and CAM++
//! embeddings of typical lengths, and one streaming step (a 5 s window plus three 1.5 s
//! embeddings).
//!
//! ```text
//! cargo run --release -p aigw-audio --example diarisation_timing [-- RUNS [FILTER]]
//! ```
//!
//! FILTER keeps only the figures whose name contains it (e.g. `segmentation`).
//!
//! Needs `aigw models fetch pyannote-segmentation-3.0 campplus-sv`; reads `$AIGW_MODEL_DIR`
//! (default `~/.cache/aigw/models`). The audio is the 10 s cut of pyannote's sample that the
//! parity tests use. Each figure is the median (and the minimum) of RUNS runs after one
//! warm-up run, then the process's CPU time per run (which a busy machine inflates less).
//! Set `RAYON_NUM_THREADS` to bound candle's threads (e.g. 2 for the target).

#![allow(clippy::print_stdout, reason = "an example that reports timings")]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aigw_audio::campplus::CamPlusPlus;
use aigw_audio::fbank::Fbank;
use aigw_audio::segmentation::Segmentation;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let runs: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(10);
    let filter = std::env::args().nth(2).unwrap_or_default();
    let wanted = |what: &str| what.contains(filter.as_str());
    let root = std::env::var_os("AIGW_MODEL_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/aigw/models")
        });
    let segmentation =
        Segmentation::load(&root.join("pyannote-segmentation-3.0/pytorch_model.bin"))?;
    let campplus = CamPlusPlus::load(&root.join("campplus-sv/campplus_cn_en_common.pt"))?;
    let audio = read_fixture(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference/sample_10s.wav"),
    )?;
    let seconds = |s: f64| (s * 16_000.0) as usize;
    println!(
        "wall-clock median (min) of {runs} runs, then CPU time per run (all threads); \
         {} candle threads",
        candle_core::utils::get_num_threads()
    );

    for window in [5.0, 10.0] {
        let samples = &audio[..seconds(window)];
        report(
            &format!("segmentation, {window} s window"),
            runs,
            &wanted,
            || segmentation.segment(samples).map(drop),
        )?;
    }
    let fbank = Fbank::default();
    report("fbank, 5 s", runs, &wanted, || {
        fbank.compute(&audio[..seconds(5.0)]);
        Ok(())
    })?;
    for length in [1.5, 3.0, 5.0] {
        let samples = &audio[..seconds(length)];
        report(
            &format!("CAM++ embedding, {length} s"),
            runs,
            &wanted,
            || campplus.embed_samples(samples).map(drop),
        )?;
    }
    let window = &audio[seconds(5.0)..];
    report(
        "streaming step: 5 s segmentation + 3 × 1.5 s embeddings",
        runs,
        &wanted,
        || {
            segmentation.segment(window)?;
            for speaker in 0..3 {
                let start = seconds(1.5 * speaker as f64);
                campplus.embed_samples(&window[start..start + seconds(1.5)])?;
            }
            Ok(())
        },
    )?;
    Ok(())
}

fn report(
    what: &str,
    runs: usize,
    wanted: &dyn Fn(&str) -> bool,
    mut f: impl FnMut() -> Result<(), aigw_audio::segmentation::ModelError>,
) -> Result<(), aigw_audio::segmentation::ModelError> {
    if !wanted(what) {
        return Ok(());
    }
    f()?;
    let mut times: Vec<Duration> = Vec::with_capacity(runs);
    let cpu_before = process_cpu_seconds();
    for _ in 0..runs.max(1) {
        let started = Instant::now();
        f()?;
        times.push(started.elapsed());
    }
    let cpu = process_cpu_seconds()
        .zip(cpu_before)
        .map(|(after, before)| format!("{:>8.1} ms", (after - before) * 1e3 / runs as f64))
        .unwrap_or_default();
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{what:<58} {:>8.1} ms ({:>5.1}) {cpu}",
        ms(times[times.len() / 2]),
        ms(times[0])
    );
    Ok(())
}

/// User + system CPU time of the whole process (all threads) from `/proc/self/stat`, in
/// seconds (clock ticks of 10 ms), on Linux.
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which ends with the last ')'): utime and stime are the
    // 12th and 13th.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// The fixture's PCM16 mono samples after the 44-byte header `make_fixtures.py` writes.
fn read_fixture(path: &Path) -> std::io::Result<Vec<f32>> {
    let bytes = std::fs::read(path)?;
    Ok(bytes
        .get(44..)
        .unwrap_or_default()
        .chunks_exact(2)
        .map(|s| f32::from(i16::from_le_bytes([s[0], s[1]])) / 32768.0)
        .collect())
}
