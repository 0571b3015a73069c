#!/usr/bin/env python3
"""llama.cpp single-stream baseline for `aigw-bench engine`.

Loads a GGUF chat model with llama-cpp-python, wraps one user prompt in the
SmolLM2 chat template (the text the gateway builds for the same request),
and measures, for exactly MAX_TOKENS greedy tokens with EOS ignored:

- ttft_ms: prefill of the whole prompt plus sampling the first token;
- decode_tok_s: (MAX_TOKENS - 1) / (time of the last token - time of the first),
  the definition aigw-bench uses for a stream through the gateway.

It uses the low-level loop (`eval` a token, `sample` the next) so nothing
stops at EOS, and `reset()` between runs so every run prefills the prompt
again. One warm-up run is not counted; of the measured runs the MEDIAN of
each figure is reported (runs are listed too). The result is one JSON object
on the last line of stdout.

Usage: python llamacpp_baseline.py --model FILE.gguf [--threads N]
       [--max-tokens 128] [--runs 3] [--warmup 1] [--prompt TEXT]
"""

import argparse
import json
import os
import statistics
import sys
import time

TEMPLATE = (
    "<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "<|im_start|>user\n{prompt}<|im_end|>\n"
    "<|im_start|>assistant\n"
)


def default_threads():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def one_run(llm, prompt_tokens, max_tokens):
    """Prefill, then greedy decode of exactly max_tokens tokens."""
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(prompt_tokens)
    token = llm.sample(temp=0.0, repeat_penalty=1.0)
    t_first = time.perf_counter()
    generated = [token]
    while len(generated) < max_tokens:
        llm.eval([token])
        token = llm.sample(temp=0.0, repeat_penalty=1.0)
        generated.append(token)
    t_last = time.perf_counter()
    decode = (len(generated) - 1) / (t_last - t_first) if t_last > t_first else 0.0
    return {
        "ttft_ms": (t_first - t0) * 1e3,
        "decode_tok_s": decode,
        "tokens": len(generated),
        "total_s": t_last - t0,
    }, generated


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="GGUF file")
    parser.add_argument("--threads", type=int, default=default_threads())
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument(
        "--prompt", default="Tell me a story about dragon number 0."
    )
    args = parser.parse_args()
    if args.max_tokens < 2 or args.runs < 1:
        parser.error("--max-tokens must be >= 2 and --runs >= 1")

    import llama_cpp
    from llama_cpp import Llama

    text = TEMPLATE.format(prompt=args.prompt)
    llm = Llama(
        model_path=args.model,
        n_threads=args.threads,
        n_threads_batch=args.threads,
        n_ctx=max(512, 64 * ((len(text) + args.max_tokens + 64) // 64)),
        n_batch=512,
        n_gpu_layers=0,
        seed=0,
        verbose=False,
    )
    prompt_tokens = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
    if len(prompt_tokens) + args.max_tokens > llm.n_ctx():
        sys.exit(f"context {llm.n_ctx()} too small for {len(prompt_tokens)} + {args.max_tokens}")

    runs = []
    generated = []
    for i in range(args.warmup + args.runs):
        run, tokens = one_run(llm, prompt_tokens, args.max_tokens)
        print(
            f"{'warm-up' if i < args.warmup else 'run'} {i}: ttft {run['ttft_ms']:.1f} ms, "
            f"decode {run['decode_tok_s']:.1f} tok/s",
            file=sys.stderr,
        )
        if i >= args.warmup:
            runs.append(run)
            generated = tokens

    result = {
        "engine": "llama.cpp",
        "llama_cpp_python": llama_cpp.__version__,
        "model": os.path.abspath(args.model),
        "threads": args.threads,
        "prompt_tokens": len(prompt_tokens),
        "max_tokens": args.max_tokens,
        "warmup_runs": args.warmup,
        "statistic": f"median of {len(runs)} runs",
        "ttft_ms": statistics.median(r["ttft_ms"] for r in runs),
        "decode_tok_s": statistics.median(r["decode_tok_s"] for r in runs),
        "best_decode_tok_s": max(r["decode_tok_s"] for r in runs),
        "runs": runs,
        "text_head": llm.detokenize(generated).decode("utf-8", "replace")[:100],
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
