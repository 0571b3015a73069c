//! Times the diarisation models on this machine: segmentation of one window, fbank and CAM++
//! embeddings of typical lengths, one worst-case streaming step (a 5 s window plus three 1.5 s
//! embeddings) on one and on two threads, and the whole streaming pipeline over a file.
//!
//! ```text
//! cargo run --release -p aigw-audio --example diarisation_timing [-- RUNS [FILTER [WAV]]]
//! ```
//!
//! FILTER keeps only the figures whose name contains it (e.g. `segmentation`; empty for all).
//! WAV is the file the pipeline runs over (any format `decode` reads; default the 10 s
//! fixture), at step 0.5 s, latency 0.5 s, with one and with two step threads; its figure is
//! per 0.5 s step (the run's time over its steps).
//!
//! Needs `aigw models fetch pyannote-segmentation-3.0 campplus-sv`; reads `$AIGW_MODEL_DIR`
//! (default `~/.cache/aigw/models`). The audio is the 10 s cut of pyannote's sample that the
//! parity tests use. Each figure is the median (and the minimum) of RUNS runs after one
//! warm-up run, then the process's CPU time per run (which a busy machine inflates less).
//! Set `RAYON_NUM_THREADS` to bound candle's threads (e.g. 2 for the target).

#![allow(clippy::print_stdout, reason = "an example that reports timings")]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use std::sync::Arc;

use aigw_audio::campplus::CamPlusPlus;
use aigw_audio::decode::decode;
use aigw_audio::diarize::{DiarizationConfig, DiarizationModels, diarize_file};
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
    let segmentation_path = root.join("pyannote-segmentation-3.0/pytorch_model.bin");
    let campplus_path = root.join("campplus-sv/campplus_cn_en_common.pt");
    let segmentation = Segmentation::load(&segmentation_path)?;
    let campplus = CamPlusPlus::load(&campplus_path)?;
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference/sample_10s.wav");
    let audio = read_fixture(&fixture)?;
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
    let embed = |speaker: usize| {
        let start = seconds(1.5 * speaker as f64);
        campplus.embed_samples(&window[start..start + seconds(1.5)])
    };
    report(
        "streaming step: 5 s segmentation + 3 × 1.5 s embeddings",
        runs,
        &wanted,
        || {
            segmentation.segment(window)?;
            for speaker in 0..3 {
                embed(speaker)?;
            }
            Ok(())
        },
    )?;
    // The same step as a session with two step threads runs it: the LSTM's directions side
    // by side, two embeddings side by side, then the third with its head on both threads.
    let segmentation = segmentation.with_threads(2);
    let campplus_2 = CamPlusPlus::load(&campplus_path)?.with_threads(2);
    report("the same step on 2 threads", runs, &wanted, || {
        segmentation.segment(window)?;
        std::thread::scope(|scope| {
            let second = scope.spawn(|| embed(1));
            embed(0)?;
            second.join().map_err(|_| {
                aigw_audio::segmentation::ModelError::Input("embedding thread panicked".into())
            })??;
            let start = seconds(3.0);
            campplus_2.embed_samples(&window[start..start + seconds(1.5)])
        })
        .map(drop)
    })?;
    report(
        "segmentation, 5 s window, on 2 threads",
        runs,
        &wanted,
        || segmentation.segment(window).map(drop),
    )?;
    report(
        "CAM++ embedding, 1.5 s, on 2 threads",
        runs,
        &wanted,
        || campplus_2.embed_samples(&audio[..seconds(1.5)]).map(drop),
    )?;
    drop((segmentation, campplus_2));

    let wav = std::env::args().nth(3).map_or(fixture, PathBuf::from);
    let samples = decode(std::fs::read(&wav)?, wav.to_str(), 3600.0)?.samples;
    let config = DiarizationConfig {
        step_s: 0.5,
        latency_s: 0.5,
        ..DiarizationConfig::default()
    };
    let steps = samples.len().div_ceil(seconds(config.step_s)) as f64;
    for threads in [1, 2] {
        let models = Arc::new(
            DiarizationModels::load(&segmentation_path, &campplus_path)?.with_threads(threads),
        );
        report(
            &format!("streaming over the file, {threads} step thread(s)"),
            runs,
            &wanted,
            || diarize_file(&models, &config, &samples).map(drop),
        )
        .map(|total| {
            if let Some((wall, cpu)) = total {
                println!(
                    "{:<58} {:>8.1} ms          {:>8.1} ms",
                    format!("  per 0.5 s step ({steps} steps)"),
                    wall / steps,
                    cpu / steps
                );
            }
        })?;
    }
    Ok(())
}

fn report(
    what: &str,
    runs: usize,
    wanted: &dyn Fn(&str) -> bool,
    mut f: impl FnMut() -> Result<(), aigw_audio::segmentation::ModelError>,
) -> Result<Option<(f64, f64)>, aigw_audio::segmentation::ModelError> {
    if !wanted(what) {
        return Ok(None);
    }
    f()?;
    let mut times: Vec<Duration> = Vec::with_capacity(runs);
    let cpu_before = process_cpu_seconds();
    for _ in 0..runs.max(1) {
        let started = Instant::now();
        f()?;
        times.push(started.elapsed());
    }
    let cpu_ms = process_cpu_seconds()
        .zip(cpu_before)
        .map(|(after, before)| (after - before) * 1e3 / runs.max(1) as f64);
    let cpu = cpu_ms.map(|ms| format!("{ms:>8.1} ms")).unwrap_or_default();
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let median = ms(times[times.len() / 2]);
    println!("{what:<58} {median:>8.1} ms ({:>5.1}) {cpu}", ms(times[0]));
    Ok(Some((median, cpu_ms.unwrap_or(f64::NAN))))
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
