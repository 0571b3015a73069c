"""Conformance of aigw with the real openai Python SDK.

Run by gateway/tests/api/sdk.rs against a live gateway (AIGW_BASE_URL, AIGW_API_KEY) whose
models are served by the scripted mock upstream of the Rust tests. Every check asserts what
the SDK hands to its caller: parsed objects, decoded embeddings and exception classes.
"""

import os
import sys

import openai
from openai import OpenAI

BASE_URL = os.environ["AIGW_BASE_URL"]
API_KEY = os.environ["AIGW_API_KEY"]
# "mock": models served by the scripted upstream; "local": the in-process default models.
MODE = sys.argv[1] if len(sys.argv) > 1 else "mock"

client = OpenAI(base_url=BASE_URL, api_key=API_KEY, max_retries=0, timeout=20)
USER = [{"role": "user", "content": "hello from the sdk"}]
checks = []


def check(fn):
    checks.append(fn)
    return fn


def expect_error(exc_class, status, fn):
    try:
        fn()
    except exc_class as e:
        assert e.status_code == status, f"{exc_class.__name__}: status {e.status_code} != {status}"
        assert isinstance(e.body, dict) and "message" in e.body, f"OpenAI-shaped body, got {e.body!r}"
        return e
    except Exception as e:  # noqa: BLE001 - report the wrong class clearly
        raise AssertionError(f"expected {exc_class.__name__}, got {type(e).__name__}: {e}") from e
    raise AssertionError(f"expected {exc_class.__name__}, nothing was raised")


@check
def models_list():
    ids = [m.id for m in client.models.list()]
    assert "echo" in ids and "tools" in ids, ids
    assert client.models.retrieve("echo").id == "echo"


@check
def chat_plain():
    r = client.chat.completions.create(model="echo", messages=USER, temperature=0.2, seed=1)
    assert r.object == "chat.completion"
    assert r.model == "echo"
    assert r.choices[0].message.content == "echo: hello from the sdk"
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.prompt_tokens == 4 and r.usage.total_tokens == 9, r.usage


@check
def chat_raw_headers():
    raw = client.chat.completions.with_raw_response.create(model="echo", messages=USER)
    assert raw.headers.get("x-request-id"), "x-request-id header"
    assert float(raw.headers["x-aigw-overhead-ms"]) >= 0
    assert raw.parse().choices[0].message.content.startswith("echo:")


@check
def chat_streaming_with_usage():
    stream = client.chat.completions.create(
        model="echo", messages=USER, stream=True, stream_options={"include_usage": True}
    )
    text, usage, chunks = "", None, 0
    for chunk in stream:
        chunks += 1
        assert chunk.model == "echo"
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        if chunk.usage is not None:
            assert chunk.choices == [], "usage arrives on a chunk with empty choices"
            usage = chunk.usage
    assert text == "echo: hello from the sdk", text
    assert usage is not None and usage.completion_tokens == 5, usage
    assert chunks > 3, "streamed in pieces"


@check
def chat_tool_calls():
    tools = [{"type": "function", "function": {"name": "roll_dice", "parameters": {"type": "object"}}}]
    r = client.chat.completions.create(model="tools", messages=USER, tools=tools, tool_choice="auto")
    call = r.choices[0].message.tool_calls[0]
    assert call.function.name == "roll_dice" and call.function.arguments == '{"sides":20}'
    assert r.choices[0].finish_reason == "tool_calls"


@check
def completions_legacy():
    r = client.completions.create(model="echo", prompt="the dragon", max_tokens=5)
    assert r.choices[0].text == " and then the dragon"


@check
def embeddings_default_base64():
    # The SDK asks for base64 by default and decodes it itself.
    r = client.embeddings.create(model="echo", input=["a", "b"])
    assert [list(d.embedding) for d in r.data] == [[1.0, 0.5, -0.25], [2.0, 0.5, -0.25]], r.data
    f = client.embeddings.create(model="echo", input="a", encoding_format="float")
    assert list(f.data[0].embedding) == [1.0, 0.5, -0.25]


@check
def errors_map_to_sdk_exceptions():
    e = expect_error(openai.BadRequestError, 400,
                     lambda: client.chat.completions.create(model="echo", messages=USER, temperature=7))
    assert e.param == "temperature", e.param
    expect_error(openai.BadRequestError, 400,
                 lambda: client.chat.completions.create(model="echo", messages=[]))
    bad_key = OpenAI(base_url=BASE_URL, api_key="sk-wrong", max_retries=0)
    expect_error(openai.AuthenticationError, 401, lambda: bad_key.models.list())
    e = expect_error(openai.NotFoundError, 404,
                     lambda: client.chat.completions.create(model="gpt-nope", messages=USER))
    assert e.code == "model_not_found"
    expect_error(openai.APIStatusError, 413,
                 lambda: client.chat.completions.create(
                     model="echo", messages=[{"role": "user", "content": "x" * 70000}]))
    expect_error(openai.UnprocessableEntityError, 422,
                 lambda: client.chat.completions.create(model="422", messages=USER))
    e = expect_error(openai.RateLimitError, 429,
                     lambda: client.chat.completions.create(model="429", messages=USER))
    assert e.response.headers.get("retry-after") == "7"
    expect_error(openai.InternalServerError, 502,
                 lambda: client.chat.completions.create(model="500", messages=USER))
    expect_error(openai.InternalServerError, 504,
                 lambda: client.chat.completions.create(model="slow", messages=USER))


@check
def error_mid_stream_raises():
    stream = client.chat.completions.create(model="midstream-fail", messages=USER, stream=True)
    got_text = False
    try:
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                got_text = True
    except openai.APIError as e:
        assert got_text, "some text arrived before the error"
        assert "upstream" in str(e).lower() or e.message, e
        return
    raise AssertionError("a mid-stream error must raise")


local_checks = []


def local_check(fn):
    local_checks.append(fn)
    return fn


@local_check
def local_models_listed():
    ids = [m.id for m in client.models.list()]
    assert ids == [
        "smollm2-135m-instruct", "all-minilm-l6-v2", "whisper-tiny.en", "pyannote-segmentation-3.0",
    ], ids


@local_check
def local_chat_streams():
    messages = [{"role": "user", "content": "What is 2 + 2?"}]
    plain = client.chat.completions.create(
        model="smollm2-135m-instruct", messages=messages, temperature=0, max_tokens=32
    )
    # The engine's own stream, not the cached answer of the request above.
    stream = client.chat.completions.create(
        model="smollm2-135m-instruct", messages=messages, temperature=0, max_tokens=32,
        stream=True, stream_options={"include_usage": True},
        extra_headers={"x-aigw-cache": "off"},
    )
    text, usage, pieces = "", None, 0
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
            pieces += 1
        if chunk.usage is not None:
            usage = chunk.usage
    assert "4" in text, text
    assert pieces > 3, pieces
    assert text == plain.choices[0].message.content, (text, plain.choices[0].message.content)
    assert usage.completion_tokens == plain.usage.completion_tokens, (usage, plain.usage)


@local_check
def local_chat_cache_replays_a_stream():
    messages = [{"role": "user", "content": "What is 3 + 3?"}]
    plain = client.chat.completions.with_raw_response.create(
        model="smollm2-135m-instruct", messages=messages, temperature=0, max_tokens=64
    )
    answer = plain.parse()
    assert answer.choices[0].finish_reason == "stop", answer  # only complete answers are kept
    raw = client.chat.completions.with_raw_response.create(
        model="smollm2-135m-instruct", messages=messages, temperature=0, max_tokens=64,
        stream=True, stream_options={"include_usage": True},
    )
    assert raw.headers["x-cache"] == "hit", raw.headers.get("x-cache")
    text, usage = "", None
    for chunk in raw.parse():
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
        if chunk.usage is not None:
            usage = chunk.usage
    assert text == answer.choices[0].message.content, (text, answer)
    assert usage.total_tokens == answer.usage.total_tokens, (usage, answer.usage)


@local_check
def local_embeddings():
    # The SDK's default base64 encoding, decoded by the SDK.
    r = client.embeddings.create(model="all-minilm-l6-v2", input=["a red dragon", "a crimson wyrm", "tax law"])
    vecs = [list(d.embedding) for d in r.data]
    assert all(len(v) == 384 for v in vecs)
    dot = lambda a, b: sum(x * y for x, y in zip(a, b))  # noqa: E731 - unit vectors
    assert abs(dot(vecs[0], vecs[0]) - 1) < 1e-4
    assert dot(vecs[0], vecs[1]) > dot(vecs[0], vecs[2]), "paraphrases are closer"
    assert r.usage.prompt_tokens > 6


def speech_wav():
    """espeak-ng's rendering of a sentence tiny.en hears well, as wav bytes."""
    import subprocess
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".wav") as f:
        subprocess.run(
            ["espeak-ng", "-v", "en-us", "-s", "120", "-w", f.name,
             "The quick brown fox jumps over the lazy dog. A game master rolls the dice for the party."],
            check=True,
        )
        return f.read()


def heard(text):
    words = "".join(c if c.isalnum() else " " for c in text.lower()).split()
    missing = [w for w in ("quick", "fox", "lazy", "dog", "dice", "party") if w not in words]
    assert not missing, f"{missing} not heard in {text!r}"


@local_check
def local_transcriptions():
    wav = speech_wav()
    audio = client.audio.transcriptions
    r = audio.create(model="whisper-tiny.en", file=("clip.wav", wav))
    heard(r.text)
    assert r.usage.type == "duration" and r.usage.seconds == 9, r.usage
    text = audio.create(model="whisper-tiny.en", file=("clip.wav", wav), response_format="text")
    assert isinstance(text, str) and text.strip() == r.text, (text, r.text)
    for fmt, start in (("srt", "1\n00:00:00,000 --> "), ("vtt", "WEBVTT\n\n00:00:00.000 --> ")):
        sub = audio.create(model="whisper-tiny.en", file=("clip.wav", wav), response_format=fmt)
        assert isinstance(sub, str) and sub.startswith(start), (fmt, sub)
        heard(sub)
    v = audio.create(
        model="whisper-tiny.en", file=("clip.wav", wav), response_format="verbose_json",
        timestamp_granularities=["word", "segment"], language="en", temperature=0,
    )
    assert v.language == "english" and 8.0 < v.duration < 8.1, (v.language, v.duration)
    heard(v.text)
    assert v.segments and v.segments[0].start == 0.0 and v.segments[-1].end <= 8.5, v.segments
    assert all(s.avg_logprob < 0 and 0 <= s.no_speech_prob <= 1 for s in v.segments)
    heard(" ".join(w.word for w in v.words))
    assert all(a.start <= b.start for a, b in zip(v.words, v.words[1:])), v.words
    d = audio.create(model="whisper-tiny.en", file=("clip.wav", wav), response_format="diarized_json")
    assert d.task == "transcribe" and d.segments, d
    assert all(s.type == "transcript.text.segment" and s.speaker == "speaker_0" for s in d.segments), d
    heard(d.text)
    e = expect_error(openai.BadRequestError, 400, lambda: client.audio.translations.create(
        model="whisper-tiny.en", file=("clip.wav", wav)))
    assert "English-only" in e.body["message"], e.body
    e = expect_error(openai.BadRequestError, 400, lambda: audio.create(
        model="whisper-tiny.en", file=("clip.mp3", b"not audio at all" * 100)))
    assert e.body["param"] == "file", e.body


if MODE == "local":
    checks = local_checks

failed = 0
for fn in checks:
    try:
        fn()
        print(f"ok   {fn.__name__}")
    except Exception as e:  # noqa: BLE001
        failed += 1
        print(f"FAIL {fn.__name__}: {type(e).__name__}: {e}")
print(f"openai {openai.__version__}: {len(checks) - failed}/{len(checks)} checks passed")
if failed:
    sys.exit(1)
print("all SDK checks passed")
