#!/usr/bin/env python3
"""Diarisation error rate of aigw's streaming diariser on pyannote.audio's sample clip and on
a synthetic set of espeak-ng conversations.

The clip is the real two-speaker recording shipped in the pyannote.audio wheel
(`pyannote/audio/sample/sample.wav`, 30 s, 16 kHz mono, with `sample.rttm`). This script:

1. fetches the wheel with pip (`pip download pyannote.audio==4.0.7 --no-deps`) unless
   `--sample-dir` already holds `sample.wav`, `sample.rttm` and `sample.stm`;
2. starts `aigw serve` (default `target/release/aigw`: `cargo build --release -p aigw-gateway --bin aigw` first) on a free port with only
   the diarisation model (`pyannote-segmentation-3.0` + `campplus-sv`) and `whisper-tiny.en` (installed by
   `aigw models fetch --default`), or uses `--url` of a running server;
3. posts the clip to `POST /v1/audio/diarizations` (`response_format=rttm`) at each latency
   (0.5 s and 5 s, step 0.5 s, the other settings at their defaults), timing each request;
4. scores each answer against `sample.rttm` with pyannote.metrics' DiarizationErrorRate
   (optimal speaker mapping), collar 0 s and overlapping speech scored (`skip_overlap=False`),
   i.e. the strictest convention; also the standard-NIST variant (collar 0.25 s, overlap
   still scored) for comparison;
5. does the same for a synthetic set made here with espeak-ng (`--synthetic`, on by default):
   for 2, 3 and 4 speakers, two conversations each of 10 turns by distinct voices (a fixed
   seed picks who speaks and the gaps, from -0.6 s, an overlap, to 0.8 s), with an exact
   reference (each utterance trimmed to its first and last sample above 1 % of full scale);
   DER is accumulated over the conversations of each size;
6. transcribes the clip through `/v1/audio/transcriptions` (whisper-tiny.en, one warm-up and
   three timed requests) and scores the WER against `sample.stm` (normalisation: see
   `normalise`) and the real-time factor (median request time / 30 s);
7. writes `bench/results/<date>-diarization.json` and `.md` (keeping the "Realtime sessions"
   section that `realtime_sessions.py`, run afterwards, writes).

Run it with a Python that has `pyannote.metrics` (e.g. `python3 -m venv .venv-diarization &&
.venv-diarization/bin/pip install pyannote.metrics`):

    cargo build --release -p aigw-gateway --bin aigw
    .venv-diarization/bin/python bench/diarization/evaluate.py
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
import zipfile
from pathlib import Path

import random
import wave

import numpy as np
from pyannote.core import Annotation, Segment
from pyannote.metrics.diarization import DiarizationErrorRate

from common import ROOT, free_port, shown

WHEEL = "pyannote.audio==4.0.7"
LATENCIES = (0.5, 5.0)
STEP = 0.5
EXTRA: dict[str, str] = {}
LOAD_START = 0.0

CONFIG = """
[server]
listen = "127.0.0.1:{port}"

[local]
max_audio_secs = 600

[[local.models]]
name = "diarization"
model = "pyannote-segmentation-3.0"
embedding_model = "campplus-sv"

[[local.models]]
name = "whisper"
model = "whisper-tiny.en"
"""


def fetch_sample(dest: Path) -> Path:
    """sample.wav, sample.rttm and sample.stm from the pyannote.audio wheel, unpacked into `dest`."""
    if all((dest / f"sample.{ext}").exists() for ext in ("wav", "rttm", "stm")):
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
         WHEEL, "-d", str(dest)],
        check=True, stdout=subprocess.DEVNULL,
    )
    wheel = next(dest.glob("pyannote_audio-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        for name in ("sample.wav", "sample.rttm", "sample.stm"):
            (dest / name).write_bytes(z.read(f"pyannote/audio/sample/{name}"))
    return dest


def read_rttm(text: str, uri: str = "sample") -> Annotation:
    ann = Annotation(uri=uri)
    for i, line in enumerate(text.splitlines()):
        f = line.split()
        if len(f) < 8 or f[0] != "SPEAKER":
            continue
        start, dur = float(f[3]), float(f[4])
        ann[Segment(start, start + dur), i] = f[7]
    return ann


VOICES = ["en-us+m3", "en+f3", "en-gb-scotland+m1", "en-us+f4"]
LINES = [
    "The dragon sleeps under the mountain and nobody dares to wake it.",
    "Then we shall sneak past it quietly and take the golden cup.",
    "That is a terrible plan, but I have nothing better to offer.",
    "Roll for initiative, everyone, the goblins are coming closer.",
    "I cast a shield spell on the wizard before the arrows land.",
    "We should rest at the inn and ask the innkeeper about the road north.",
    "My character does not trust the merchant with the silver ring.",
    "The bridge is broken, so we need to find another way across the river.",
    "I search the chest for traps before anyone touches the lock.",
    "Let us split the treasure evenly and move on before nightfall.",
]


def speak(voice: str, text: str, tmp: Path) -> np.ndarray:
    path = tmp / "say.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-s", "160", "-w", str(path), text], check=True)
    with wave.open(str(path)) as w:
        assert w.getframerate() == 22050 and w.getsampwidth() == 2
        x = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768
    loud = np.flatnonzero(np.abs(x) > 0.01)
    return x[loud[0]:loud[-1] + 1]


def conversation(n_speakers: int, seed: int, tmp: Path) -> tuple[bytes, Annotation]:
    """A 22.05 kHz wav of 10 turns among `n_speakers` voices, and its reference."""
    rng = random.Random(seed)
    rate = 22050
    turns = []
    speaker = rng.randrange(n_speakers)
    for i in range(10):
        if i > 0:
            speaker = rng.choice([s for s in range(n_speakers) if s != speaker])
        turns.append((speaker, rng.choice(LINES), rng.uniform(-0.6, 0.8)))
    clips = [(s, speak(VOICES[s], text, tmp), gap) for s, text, gap in turns]
    mix = np.zeros(int(rate * (sum(len(c) / rate + max(g, 0) for _, c, g in clips) + 1)), np.float32)
    ref = Annotation(uri="synthetic")
    at = int(0.5 * rate)
    for i, (s, clip, gap) in enumerate(clips):
        if i > 0:
            at = max(int(0.3 * rate), at + int(gap * rate))
        mix[at:at + len(clip)] += clip
        ref[Segment(at / rate, (at + len(clip)) / rate), i] = f"voice{s}"
        at += len(clip)
    mix = mix[:at + int(0.5 * rate)]
    pcm = (np.clip(mix, -1, 1) * 32767).astype("<i2").tobytes()
    out = tmp / "mix.wav"
    with wave.open(str(out), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)
    return out.read_bytes(), ref


def start_server(aigw: Path) -> tuple[subprocess.Popen, str, Path]:
    port = free_port()
    cfg = Path(tempfile.mkdtemp()) / "diarization.toml"
    cfg.write_text(CONFIG.format(port=port))
    log = cfg.with_suffix(".log")
    proc = subprocess.Popen(
        [str(aigw), "serve", "--config", str(cfg)],
        stdout=log.open("w"), stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            urllib.request.urlopen(f"{url}/health", timeout=1)
            return proc, url, log
        except OSError:
            if proc.poll() is not None:
                sys.exit(f"aigw exited: see {log}")
            time.sleep(0.2)
    proc.kill()
    sys.exit(f"aigw did not start: see {log}")


def post(url: str, wav: bytes, fields: dict[str, str], path: str = "/v1/audio/diarizations") -> tuple[str, float]:
    boundary = uuid.uuid4().hex
    parts = []
    for k, v in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode())
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="sample.wav"\r\n'
        "Content-Type: audio/wav\r\n\r\n".encode() + wav + b"\r\n"
    )
    parts.append(f"--{boundary}--\r\n".encode())
    req = urllib.request.Request(
        f"{url}{path}", data=b"".join(parts), method="POST",
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=600) as resp:
        body = resp.read().decode()
    return body, time.perf_counter() - t0


def normalise(text: str) -> list[str]:
    """Lowercase, every character that is not a letter, digit, apostrophe or space becomes a
    space, apostrophes kept only inside words ("didn't"), then split on whitespace. No number,
    spelling or contraction normalisation ("okay" and "ok" differ)."""
    text = "".join(c if c.isalnum() or c in "' " else " " for c in text.lower())
    return [w.strip("'") for w in text.split() if w.strip("'")]


def word_errors(ref: list[str], hyp: list[str]) -> tuple[int, int, int]:
    """(substitutions, deletions, insertions) of a minimum edit-distance alignment."""
    # d[j] = (cost, subs, dels, ins) aligning ref[:i] with hyp[:j]
    prev = [(j, 0, 0, j) for j in range(len(hyp) + 1)]
    for i in range(1, len(ref) + 1):
        cur = [(i, 0, i, 0)]
        for j in range(1, len(hyp) + 1):
            same = ref[i - 1] == hyp[j - 1]
            c, s_, d_, n_ = prev[j - 1]
            options = [(c + (0 if same else 1), s_ + (0 if same else 1), d_, n_)]
            c, s_, d_, n_ = prev[j]
            options.append((c + 1, s_, d_ + 1, n_))
            c, s_, d_, n_ = cur[j - 1]
            options.append((c + 1, s_, d_, n_ + 1))
            cur.append(min(options))
        prev = cur
    return prev[-1][1:]


def evaluate_transcription(url: str, wav: bytes, stm: str, duration: float) -> dict:
    """WER of whisper-tiny.en on the sample's .stm transcript and the real-time factor."""
    fields = {"model": "whisper", "response_format": "json", "language": "en", "temperature": "0"}
    post(url, wav, fields, "/v1/audio/transcriptions")  # warm-up
    times = []
    for _ in range(3):
        body, secs = post(url, wav, fields, "/v1/audio/transcriptions")
        times.append(secs)
    text = json.loads(body)["text"]
    lines = sorted((float(l.split()[3]), l.split(None, 5)[5]) for l in stm.splitlines() if len(l.split()) >= 6)
    reference = " ".join(t for _, t in lines)
    ref, hyp = normalise(reference), normalise(text)
    subs, dels, ins = word_errors(ref, hyp)
    secs = sorted(times)[len(times) // 2]
    row = {
        "model": "whisper-tiny.en",
        "reference": "pyannote/audio/sample/sample.stm (13 lines, in start order, joined)",
        "normalisation": "lowercase; every character other than a letter, digit, apostrophe or space "
                         "replaced by a space; apostrophes kept only inside words; no number, spelling "
                         "or contraction normalisation",
        "reference_words": len(ref),
        "hypothesis_words": len(hyp),
        "substitutions": subs,
        "deletions": dels,
        "insertions": ins,
        "wer": round((subs + dels + ins) / len(ref), 4),
        "request_s": [round(t, 3) for t in times],
        "rtf": round(secs / duration, 4),
        "reference_text": " ".join(ref),
        "hypothesis_text": text.strip(),
    }
    print(f"whisper-tiny.en: WER {row['wer']:.1%} ({subs} S, {dels} D, {ins} I of {len(ref)}), "
          f"RTF {row['rtf']:.3f}", file=sys.stderr)
    return row


def evaluate_synthetic(url: str) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        sets = {n: [conversation(n, 100 * n + k, Path(tmp)) for k in range(2)] for n in (2, 3, 4)}
        for n, convs in sets.items():
            for latency in LATENCIES:
                metric = DiarizationErrorRate(collar=0.0, skip_overlap=False)
                found = []
                for wav, ref in convs:
                    fields = {"response_format": "rttm", "step_s": str(STEP), "latency_s": str(latency), **EXTRA}
                    rttm, _ = post(url, wav, fields)
                    hyp = read_rttm(rttm, uri="synthetic")
                    metric(ref, hyp)
                    found.append(len(hyp.labels()))
                d = metric[:]
                rows.append({
                    "speakers": n,
                    "conversations": len(convs),
                    "latency_s": latency,
                    "der": round(abs(metric), 4),
                    "false_alarm_s": round(d["false alarm"], 3),
                    "missed_s": round(d["missed detection"], 3),
                    "confusion_s": round(d["confusion"], 3),
                    "scored_s": round(d["total"], 3),
                    "speakers_found": "/".join(map(str, found)),
                })
                print(f"synthetic {n} speakers, latency {latency} s: DER {abs(metric):.1%}", file=sys.stderr)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--aigw", type=Path, default=ROOT / "target/release/aigw",
                    help="the aigw binary to serve with (default: the release build, as scripts/run serves)")
    ap.add_argument("--url", help="a running aigw serving a diarisation model (skips starting one)")
    ap.add_argument("--sample-dir", type=Path, default=ROOT / "bench/results/tmp/pyannote-sample")
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results")
    ap.add_argument("--no-synthetic", action="store_true", help="only pyannote's sample")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="another diarisation setting for every request (e.g. delta_new=0.8)")
    args = ap.parse_args()
    args.aigw = args.aigw.resolve()
    EXTRA.update(kv.split("=", 1) for kv in args.set)

    global LOAD_START
    LOAD_START = os.getloadavg()[0]
    sample = fetch_sample(args.sample_dir)
    wav = (sample / "sample.wav").read_bytes()
    reference = read_rttm((sample / "sample.rttm").read_text())
    duration = 30.0
    proc = None
    url = args.url
    if url is None:
        proc, url, _ = start_server(args.aigw)
    rows = []
    try:
        for latency in LATENCIES:
            fields = {"response_format": "rttm", "step_s": str(STEP), "latency_s": str(latency), **EXTRA}
            post(url, wav, fields)  # warm-up
            rttm, secs = post(url, wav, fields)
            hyp = read_rttm(rttm)
            strict = DiarizationErrorRate(collar=0.0, skip_overlap=False)
            der = strict(reference, hyp, detailed=True)
            nist = DiarizationErrorRate(collar=0.25, skip_overlap=False)(reference, hyp)
            rows.append({
                "latency_s": latency,
                "step_s": STEP,
                "der": round(der["diarization error rate"], 4),
                "false_alarm_s": round(der["false alarm"], 3),
                "missed_s": round(der["missed detection"], 3),
                "confusion_s": round(der["confusion"], 3),
                "scored_s": round(der["total"], 3),
                "der_collar_0.25": round(nist, 4),
                "speakers_found": len(hyp.labels()),
                "turns": len(list(hyp.itertracks())),
                "request_s": round(secs, 3),
                "ms_per_step": round(1000 * secs / (duration / STEP), 1),
                "rttm": rttm,
            })
            print(f"latency {latency} s: DER {der['diarization error rate']:.1%} "
                  f"(collar 0, overlap scored), {len(hyp.labels())} speakers, "
                  f"{secs:.2f} s for {duration:.0f} s of audio", file=sys.stderr)
        transcription = evaluate_transcription(url, wav, (sample / "sample.stm").read_text(), duration)
        synthetic = [] if args.no_synthetic else evaluate_synthetic(url)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)

    today = dt.date.today().isoformat()
    cpu = platform.processor() or platform.machine()
    result = {
        "date": today,
        "clip": f"pyannote/audio/sample/sample.wav from {WHEEL} (30 s, 2 speakers, 10 reference turns)",
        "metric": "pyannote.metrics DiarizationErrorRate, optimal mapping",
        "convention": "collar 0 s, overlapping speech scored (skip_overlap=False); der_collar_0.25 is the same with a 0.25 s collar",
        "settings": "step 0.5 s, " + (", ".join(f"{k} {v}" for k, v in EXTRA.items()) + ", other settings at their defaults" if EXTRA else "tau_active 0.6, rho_update 0.3, delta_new 1.0, max_speakers 20 (defaults)"),
        "server": "aigw serve (" + (str(shown(args.aigw)) if args.url is None else args.url) + "), CANDLE_NUM_THREADS=" + os.environ.get("CANDLE_NUM_THREADS", "unset"),
        "machine": f"{platform.system()} {cpu}, {os.cpu_count()} cores (load average {LOAD_START:.2f} at the start, {os.getloadavg()[0]:.2f} at the end)",
        "results": rows,
        "transcription": transcription,
        "synthetic": synthetic,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{today}-diarization.json").write_text(json.dumps(result, indent=2) + "\n")
    md = [
        f"# Diarisation on pyannote's sample clip ({today})",
        "",
        f"Clip: {result['clip']}. Scored with {result['metric']}; **{result['convention']}**.",
        f"Settings: {result['settings']}. Server: {result['server']}; {result['machine']}.",
        "",
        "| latency | DER (collar 0, overlap scored) | false alarm | missed | confusion | DER (collar 0.25) | speakers | turns | request | per 0.5 s step |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        md.append(
            f"| {r['latency_s']} s | **{r['der']:.1%}** | {r['false_alarm_s']:.2f} s | {r['missed_s']:.2f} s "
            f"| {r['confusion_s']:.2f} s | {r['der_collar_0.25']:.1%} | {r['speakers_found']} | {r['turns']} "
            f"| {r['request_s']:.2f} s | {r['ms_per_step']:.0f} ms |"
        )
    t = transcription
    md += [
        "",
        f"Transcription: {t['model']} through `/v1/audio/transcriptions` (json, language en,",
        f"temperature 0; whisper.cpp with the server's defaults: 1 transcription worker of",
        f"{os.cpu_count()} threads, `transcription_threads` 0 = cores / workers) on the whole 30 s clip,",
        f"against {t['reference']}. Normalisation: {t['normalisation']}.",
        "",
        "| WER | substitutions | deletions | insertions | reference words | request (median of 3, warm) | real-time factor |",
        "|---|---|---|---|---|---|---|",
        f"| **{t['wer']:.1%}** | {t['substitutions']} | {t['deletions']} | {t['insertions']} | {t['reference_words']} "
        f"| {sorted(t['request_s'])[1]:.2f} s | **{t['rtf']:.3f}** |",
        "",
        f"Reference: {t['reference_text']}",
        "",
        f"Hypothesis: {t['hypothesis_text']}",
    ]
    if synthetic:
        md += [
            "",
            "Synthetic set: espeak-ng conversations (10 turns each, gaps from -0.6 s to 0.8 s, so some",
            "turns overlap), DER over the conversations of each size, same convention (collar 0,",
            "overlap scored):",
            "",
            "| speakers | conversations | speech | latency | DER | false alarm | missed | confusion | speakers found |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in synthetic:
            md.append(
                f"| {r['speakers']} | {r['conversations']} | {r['scored_s']:.0f} s | {r['latency_s']} s | **{r['der']:.1%}** "
                f"| {r['false_alarm_s']:.2f} s | {r['missed_s']:.2f} s | {r['confusion_s']:.2f} s | {r['speakers_found']} |"
            )
    md += [
        "",
        f"Scored speech: {rows[0]['scored_s']:.2f} s. The request time covers decoding and the whole",
        "streaming pipeline over the file (60 windows of 5 s); per step = request time / 60.",
        f"Compute per 0.5 s step against the target of at most 50 ms: {rows[0]['ms_per_step']:.0f} ms "
        f"(latency 0.5 s) and {rows[-1]['ms_per_step']:.0f} ms (latency 5 s), "
        + ("met." if max(r["ms_per_step"] for r in rows) <= 50 else "**not met**")
        + f" (load average {LOAD_START:.2f} when the run began).",
        "Reproduce: `cargo build --release -p aigw-gateway --bin aigw && .venv-diarization/bin/python bench/diarization/evaluate.py`.",
        "",
    ]
    path = args.out / f"{today}-diarization.md"
    # Keep the section realtime_sessions.py writes.
    keep = path.read_text().partition("\n## Realtime sessions\n") if path.exists() else ("", "", "")
    path.write_text("\n".join(md) + (keep[1] + keep[2] if keep[1] else ""))
    print("\n".join(md))


if __name__ == "__main__":
    main()
