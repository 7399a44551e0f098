"""Serving benchmark: townsquare's /v1 streaming against the raw engine and llama.cpp's own
server, in one script, on the same machine, one thing generating at a time.

    .venv/bin/python bench/serving.py [--runs 9] [--max-tokens 128] [--llama-server PATH]

1. Single stream: decode tokens/s and time to first token through a live `townsquare serve`
   (a subprocess on loopback, default settings: the bundled model, continuous batching) versus
   the same weights file loaded with llama-cpp-python in this script, same prompt and greedy
   sampling, runs interleaved so machine noise hits both alike.
2. Concurrency: 1 and 8 simultaneous streaming clients (distinct questions after a shared
   system prompt), aggregate tokens/s (from each stream's `usage`) and TTFT percentiles,
   through townsquare, then through llama.cpp's `llama-server -np 8` built from the same
   vendored llama.cpp (scripts/llama-server.sh), on the same weights and on the bundled Q4_1
   file as shipped.
3. Peak RSS of the townsquare server process (VmHWM).

Figures go to stdout and to bench/results/serving.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

import _serve  # noqa: E402
from tests.llama_server import llama_server_binary  # noqa: E402

SYSTEM = "You are a helpful assistant for a neighbourhood community app."
SINGLE = [
    {"role": "system", "content": SYSTEM},
    {
        "role": "user",
        "content": "Write a long, detailed story about a lighthouse keeper and a storm.",
    },
]
TOPICS = [
    "a lighthouse keeper and a storm",
    "a baker who opens a shop in Alfama",
    "two neighbours sharing a garden",
    "a lost cat found by the river",
    "a street market on a rainy Sunday",
    "a cyclist who fixes old bikes",
    "a choir rehearsing in a church hall",
    "a child learning to swim at the beach",
]


def messages_for(n: int) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": SYSTEM},
        {
            "role": "user",
            "content": f"Write a long, detailed story about {TOPICS[n % len(TOPICS)]}.",
        },
    ]


def start_llama_server(
    binary: str, model: Path, port: int, parallel: int, n_ctx: int
) -> subprocess.Popen[bytes]:
    server = subprocess.Popen(
        [
            binary,
            "-m",
            str(model),
            "--port",
            str(port),
            "--host",
            "127.0.0.1",
            "-np",
            str(parallel),
            "-c",
            str(parallel * n_ctx),
            "-t",
            str(os.cpu_count() or 1),
            "-fa",
            "on",
            "--no-webui",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _serve.wait_ready(f"http://127.0.0.1:{port}", "/health", server)
    return server


def stream_one(
    http: httpx.Client, model: str, messages: list[dict[str, str]], max_tokens: int
) -> dict[str, Any]:
    body = {
        "model": model,
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    first = last = None
    chunks = 0
    usage_tokens = None
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            response.read()
            return {"status": response.status_code}
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage_tokens = chunk["usage"]["completion_tokens"]
            if chunk.get("choices") and (chunk["choices"][0].get("delta") or {}).get("content"):
                now = time.perf_counter()
                first = first or now
                last = now
                chunks += 1
    assert first is not None and last is not None and chunks > 1, "no tokens were generated"
    tokens = usage_tokens or chunks
    return {
        "status": 200,
        "ttft_s": first - start,
        "decode_tok_s": (tokens - 1) / (last - first),
        "tokens": tokens,
        "end": last,
        "start": start,
    }


def stream_raw(llama: Any, max_tokens: int) -> dict[str, Any]:
    start = time.perf_counter()
    first = last = None
    tokens = 0
    for chunk in llama.create_chat_completion(
        messages=SINGLE, max_tokens=max_tokens, temperature=0, top_p=1, stream=True
    ):
        if chunk["choices"][0]["delta"].get("content"):
            now = time.perf_counter()
            first = first or now
            last = now
            tokens += 1
    assert first is not None and last is not None and tokens > 1
    return {
        "ttft_s": first - start,
        "decode_tok_s": (tokens - 1) / (last - first),
        "tokens": tokens,
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def concurrent(
    url: str, key: str | None, model: str, clients: int, max_tokens: int
) -> dict[str, Any]:
    """``clients`` streams started together (one round), aggregate tokens/s over the round."""
    results: list[dict[str, Any]] = []
    barrier = threading.Barrier(clients)
    headers = {"Authorization": f"Bearer {key}"} if key else {}

    def one(n: int) -> None:
        with httpx.Client(base_url=url, headers=headers, timeout=600) as http:
            barrier.wait()
            results.append(stream_one(http, model, messages_for(n), max_tokens))

    threads = [threading.Thread(target=one, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ok = [r for r in results if r["status"] == 200]
    wall = max(r["end"] for r in ok) - min(r["start"] for r in ok)
    ttfts = [r["ttft_s"] * 1000 for r in ok]
    return {
        "clients": clients,
        "ok": len(ok),
        "rejected_429": sum(1 for r in results if r["status"] == 429),
        "tokens": sum(r["tokens"] for r in ok),
        "aggregate_tok_s": sum(r["tokens"] for r in ok) / wall,
        "ttft_p50_ms": statistics.median(ttfts),
        "ttft_p95_ms": percentile(ttfts, 0.95),
    }


def compare(url: str, key: str | None, model: str, max_tokens: int, rounds: int) -> dict[str, Any]:
    """1 vs 8 concurrent streams, ``rounds`` rounds each, interleaved; medians."""
    singles, eights = [], []
    concurrent(url, key, model, 2, 16)  # warm-up
    for _ in range(rounds):
        singles.append(concurrent(url, key, model, 1, max_tokens))
        eights.append(concurrent(url, key, model, 8, max_tokens))
    single = statistics.median(r["aggregate_tok_s"] for r in singles)
    eight = statistics.median(r["aggregate_tok_s"] for r in eights)
    return {
        "single_tok_s": round(single, 1),
        "concurrent8_tok_s": round(eight, 1),
        "concurrent8_vs_single": round(eight / single, 3),
        "single_ttft_ms": round(statistics.median(r["ttft_p50_ms"] for r in singles), 1),
        "concurrent8_ttft_p50_ms": round(statistics.median(r["ttft_p50_ms"] for r in eights), 1),
        "concurrent8_ttft_p95_ms": round(statistics.median(r["ttft_p95_ms"] for r in eights), 1),
        "concurrent8_rejected_429": sum(r["rejected_429"] for r in eights),
        "rounds": rounds,
        "per_round_vs_single": [
            round(e["aggregate_tok_s"] / s["aggregate_tok_s"], 3)
            for s, e in zip(singles, eights, strict=True)
        ],
    }


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument(
        "--llama-server", default=None, help="path of llama-server (default: build/cache it)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "serving.json")
    args = parser.parse_args()

    import llama_cpp

    from townsquare.backends.llamacpp import bundled_model_path, default_cache_dir, prepare_weights

    bundled = bundled_model_path()
    weights = prepare_weights(bundled, "auto", default_cache_dir())  # the file the server loads
    threads = os.cpu_count() or 1
    binary = args.llama_server or llama_server_binary(build=True)
    result: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "model": bundled.name,
        "weights_loaded": weights.name,
        "runs": args.runs,
        "max_tokens": args.max_tokens,
    }

    with tempfile.TemporaryDirectory() as tmp:
        key = _serve.init(Path(tmp))
        server = _serve.start(Path(tmp), args.port)
        url = f"http://127.0.0.1:{args.port}"
        try:
            http = httpx.Client(
                base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=300
            )
            model = http.get("/v1/models").json()["data"][0]["id"]
            raw = llama_cpp.Llama(
                model_path=str(weights),
                n_ctx=2048,
                n_threads=threads,
                n_threads_batch=threads,
                flash_attn=True,
                verbose=False,
            )
            # warm both (first-call allocation), then interleave
            stream_raw(raw, 16)
            stream_one(http, model, SINGLE, 16)
            raw_runs, served_runs = [], []
            for _ in range(args.runs):
                raw_runs.append(stream_raw(raw, args.max_tokens))
                served_runs.append(stream_one(http, model, SINGLE, args.max_tokens))
            raw.close()
            townsquare = compare(url, key, model, args.max_tokens // 2, args.rounds)
            rss = peak_rss_mb(server.pid)
        finally:
            server.terminate()
            server.wait(timeout=60)

    pair_ratios = [
        s["decode_tok_s"] / r["decode_tok_s"] for r, s in zip(raw_runs, served_runs, strict=True)
    ]
    pair_ttft = [
        (s["ttft_s"] - r["ttft_s"]) * 1000 for r, s in zip(raw_runs, served_runs, strict=True)
    ]
    result.update(
        {
            "raw_tok_s": round(statistics.median(r["decode_tok_s"] for r in raw_runs), 1),
            "served_tok_s": round(statistics.median(r["decode_tok_s"] for r in served_runs), 1),
            "tok_s_ratio": round(statistics.median(pair_ratios), 3),
            "tok_s_pair_ratios": [round(r, 3) for r in pair_ratios],
            "raw_ttft_ms": round(statistics.median(r["ttft_s"] for r in raw_runs) * 1000, 1),
            "served_ttft_ms": round(statistics.median(r["ttft_s"] for r in served_runs) * 1000, 1),
            "ttft_overhead_ms": round(statistics.median(pair_ttft), 1),
            **townsquare,
            "peak_rss_mb": round(rss, 1),
        }
    )
    print(json.dumps(result, indent=2), flush=True)

    port = args.port + 1
    for label, path in (("llama_server", weights), ("llama_server_q4_1", bundled)):
        server = start_llama_server(binary, path, port, 8, 2048)
        try:
            figures = compare(
                f"http://127.0.0.1:{port}", None, "model", args.max_tokens // 2, args.rounds
            )
        finally:
            server.terminate()
            server.wait(timeout=60)
        result[f"{label}_np8_vs_single"] = figures["concurrent8_vs_single"]
        result[label] = figures
        print(label, json.dumps(figures), flush=True)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
