"""Concurrent realtime sessions sustained in real time.

Opens N WebSocket sessions (`/v1/realtime?intent=transcription`, whisper-tiny.en transcription
with server VAD, `aigw_diarization` on at step 0.5 s / latency 0.5 s) on one `aigw serve`, each
streaming pyannote's sample.wav (16 kHz mono PCM16, binary frames) at real-time pace in 20 ms
chunks, for N = 1, 2, 4. For every `diarization.speaker_turn` and transcription `.segment` /
`.completed` event it records the lag: the audio seconds sent when the event arrived minus the
end (in audio seconds) of what the event covers. A session keeps up when the diarisation lag
stays bounded (its p95 below latency + step + 1 s) and its last turn arrives within 2 s of the
audio's end.

Run after `evaluate.py` (which fetches the sample and rewrites the .md; this script replaces
its "Realtime sessions" section and writes `<date>-realtime-sessions.json`):

    .venv-test/bin/python bench/diarization/realtime_sessions.py
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import sys
import time
import wave
from pathlib import Path

import websockets

from common import ROOT, free_port, shown

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
STEP, LATENCY, CHUNK_S = 0.5, 0.5, 0.02


async def session(url: str, pcm: bytes, duration: float) -> dict:
    events: list[tuple[str, float, float, float]] = []  # (type, sent_s at arrival, end_s, wall)
    sent = 0.0
    async with websockets.connect(f"{url}/v1/realtime?intent=transcription", max_size=None) as ws:
        await ws.send(json.dumps({"type": "session.update", "session": {
            "input_audio_transcription": {"model": "whisper", "language": "en"},
            "aigw_input": {"sample_rate": 16000, "channels": 1},
            "aigw_diarization": {"enabled": True, "step_s": STEP, "latency_s": LATENCY},
        }}))

        async def reader() -> None:
            async for msg in ws:
                e = json.loads(msg)
                t = e.get("type", "")
                now = time.perf_counter()
                if t == "diarization.speaker_turn":
                    events.append(("turn", sent, float(e["end"]), now))
                elif t.endswith("input_audio_transcription.segment"):
                    events.append(("segment", sent, float(e["end"]), now))
                elif t.endswith("input_audio_transcription.completed"):
                    events.append(("completed", sent, -1.0, now))
                elif t == "error":
                    print("error event:", e, file=sys.stderr)

        task = asyncio.create_task(reader())
        n = int(16000 * CHUNK_S) * 2
        t0 = time.perf_counter()
        for i, off in enumerate(range(0, len(pcm), n)):
            delay = t0 + i * CHUNK_S - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await ws.send(pcm[off:off + n])
            sent = min(duration, (i + 1) * CHUNK_S)
        end_wall = time.perf_counter()
        behind = end_wall - t0 - duration  # how late the sender itself finished
        await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        await asyncio.sleep(8)
        task.cancel()
    turns = [e for e in events if e[0] == "turn"]
    segs = [e for e in events if e[0] == "segment"]
    # Lag at each turn: audio sent when it arrived minus the furthest turn end seen so far.
    lags, furthest = [], 0.0
    for _, s, end, w in turns:
        furthest = max(furthest, end)
        if w <= end_wall:
            lags.append(s - furthest)
    last_turn_after_end = max((w for _, _, _, w in turns), default=end_wall) - end_wall
    lags.sort()
    seg_lags = sorted(s - end for _, s, end, w in segs if w <= end_wall)
    return {
        "turn_events": len(turns),
        "transcript_segments": len(segs),
        "completed": sum(1 for e in events if e[0] == "completed"),
        "turn_lag_p50_s": round(lags[len(lags) // 2], 3) if lags else None,
        "turn_lag_p95_s": round(lags[int(len(lags) * 0.95)], 3) if lags else None,
        "turn_lag_max_s": round(lags[-1], 3) if lags else None,
        "furthest_turn_end_s": round(max((e[2] for e in turns), default=0.0), 3),
        "last_turn_after_audio_end_s": round(last_turn_after_end, 3),
        "segment_lag_max_s": round(seg_lags[-1], 3) if seg_lags else None,
        "sender_late_s": round(behind, 3),
    }


async def run(url: str, pcm: bytes, duration: float, n: int) -> list[dict]:
    return list(await asyncio.gather(*(session(url, pcm, duration) for _ in range(n))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--aigw", type=Path, default=ROOT / "target/release/aigw",
                    help="the aigw binary to serve with (default: the release build, as scripts/run serves)")
    ap.add_argument("--sample", type=Path, default=ROOT / "bench/results/tmp/pyannote-sample/sample.wav")
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results")
    ap.add_argument("--sessions", default="1,2,4")
    args = ap.parse_args()
    args.aigw = args.aigw.resolve()
    with wave.open(str(args.sample)) as w:
        assert w.getframerate() == 16000 and w.getnchannels() == 1 and w.getsampwidth() == 2
        pcm = w.readframes(w.getnframes())
        duration = w.getnframes() / 16000
    import subprocess
    import tempfile
    import urllib.request
    port = free_port()
    cfg = Path(tempfile.mkdtemp()) / "realtime.toml"
    cfg.write_text(CONFIG.format(port=port))
    proc = subprocess.Popen([str(args.aigw), "serve", "--config", str(cfg)],
                            stdout=cfg.with_suffix(".log").open("w"), stderr=subprocess.STDOUT)
    http = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            urllib.request.urlopen(f"{http}/health", timeout=1)
            break
        except OSError:
            time.sleep(0.2)
    rows = []
    try:
        for n in (int(x) for x in args.sessions.split(",")):
            sessions = asyncio.run(run(f"ws://127.0.0.1:{port}", pcm, duration, n))
            ok = all(
                s["turn_lag_p95_s"] is not None and s["turn_lag_p95_s"] <= LATENCY + STEP + 1.0
                and s["last_turn_after_audio_end_s"] <= 2.0 and s["furthest_turn_end_s"] >= duration - 3.0
                for s in sessions
            )
            rows.append({"sessions": n, "keeps_up": ok, "per_session": sessions})
            print(f"N={n}: keeps up {ok}: {sessions}", file=sys.stderr)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    today = dt.date.today().isoformat()
    result = {
        "date": today,
        "audio": f"pyannote sample.wav ({duration:.1f} s), 16 kHz mono PCM16 binary frames of 20 ms at real-time pace",
        "session": f"whisper-tiny.en with server VAD; aigw_diarization step {STEP} s, latency {LATENCY} s",
        "server": f"aigw serve ({shown(args.aigw)}), CANDLE_NUM_THREADS={os.environ.get('CANDLE_NUM_THREADS', 'unset')}",
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores",
        "lag": "audio seconds sent when an event arrived minus the furthest speaker-turn end (or the segment's end)",
        "keeps_up": f"every session's turn lag p95 <= {LATENCY + STEP + 1.0} s, its last turn within 2 s of the audio end and covering up to the last 3 s",
        "results": rows,
    }
    (args.out / f"{today}-realtime-sessions.json").write_text(json.dumps(result, indent=2) + "\n")
    md = [
        "## Realtime sessions",
        "",
        f"{result['audio']}; {result['session']}; {result['server']}; {result['machine']}.",
        f"Lag: {result['lag']}. Keeps up: {result['keeps_up']}.",
        "`bench/diarization/realtime_sessions.py`.",
        "",
        "| sessions | keeps up | turn lag p50 (worst session) | turn lag p95 (worst) | turn lag max (worst) | last turn after audio end (worst) | transcript segment lag max (worst) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        s = r["per_session"]
        worst = lambda k: max((x[k] for x in s if x[k] is not None), default=float("nan"))  # noqa: E731
        md.append(
            f"| {r['sessions']} | **{'yes' if r['keeps_up'] else 'no'}** | {worst('turn_lag_p50_s'):.2f} s "
            f"| {worst('turn_lag_p95_s'):.2f} s | {worst('turn_lag_max_s'):.2f} s "
            f"| {worst('last_turn_after_audio_end_s'):.2f} s | {worst('segment_lag_max_s'):.2f} s |"
        )
    md.append("")
    path = args.out / f"{today}-diarization.md"
    text = path.read_text() if path.exists() else ""
    text = text.split("\n## Realtime sessions\n")[0].rstrip("\n") + "\n\n" + "\n".join(md)
    path.write_text(text)
    print("\n".join(md))


if __name__ == "__main__":
    main()
