"""Serving benchmark: townsquare's /v1 streaming against raw llama-cpp-python, same script.

    .venv/bin/python bench/serving.py [--runs 5] [--max-tokens 128]

1. Single stream: decode tokens/s and time to first token through a live `townsquare serve`
   (a subprocess on loopback, default bundled model, streaming /v1/chat/completions) versus the
   same model loaded with llama-cpp-python in this script, same prompt and sampling
   (temperature 0), runs interleaved so machine noise hits both alike. Only one of the two
   generates at any moment.
2. Eight concurrent streaming clients: aggregate tokens/s, p50/p95 TTFT, how many got 429,
   versus one client.
3. Peak RSS of the server process (VmHWM).

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
MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {
        "role": "user",
        "content": "Write a long, detailed story about a lighthouse keeper and a storm.",
    },
]


def start_server(data_dir: Path, port: int) -> tuple[subprocess.Popen[bytes], str]:
    env = {**os.environ, "TOWNSQUARE_DATA_DIR": str(data_dir), "TOWNSQUARE_LOG_LEVEL": "WARNING"}
    init = subprocess.run(
        [sys.executable, "-m", "townsquare", "init"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    key = next(w for w in init.stdout.split() if w.startswith("ts_"))
    server = subprocess.Popen(
        [sys.executable, "-m", "townsquare", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return server, key
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    server.kill()
    raise SystemExit("the server did not become ready in 60 s")


def stream_server(http: httpx.Client, model: str, max_tokens: int) -> dict[str, Any]:
    body = {
        "model": model,
        "messages": MESSAGES,
        "max_tokens": max_tokens,
        "temperature": 0,
        "top_p": 1,
        "stream": True,
    }
    start = time.perf_counter()
    first = last = None
    tokens = 0
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            response.read()
            return {"status": response.status_code}
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                now = time.perf_counter()
                first = first or now
                last = now
                tokens += 1
    return timing(start, first, last, tokens)


def stream_raw(llama: Any, max_tokens: int) -> dict[str, Any]:
    start = time.perf_counter()
    first = last = None
    tokens = 0
    for chunk in llama.create_chat_completion(
        messages=MESSAGES, max_tokens=max_tokens, temperature=0, top_p=1, stream=True
    ):
        if chunk["choices"][0]["delta"].get("content"):
            now = time.perf_counter()
            first = first or now
            last = now
            tokens += 1
    return timing(start, first, last, tokens)


def timing(start: float, first: float | None, last: float | None, tokens: int) -> dict[str, Any]:
    assert first is not None and last is not None and tokens > 1, "no tokens were generated"
    return {
        "status": 200,
        "ttft_s": first - start,
        "decode_tok_s": (tokens - 1) / (last - first),
        "tokens": tokens,
        "total_s": last - start,
    }


def concurrent(url: str, key: str, model: str, clients: int, max_tokens: int) -> dict[str, Any]:
    results: list[dict[str, Any]] = []
    barrier = threading.Barrier(clients)

    def one() -> None:
        with httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=300
        ) as http:
            barrier.wait()
            results.append(stream_server(http, model, max_tokens))

    start = time.perf_counter()
    threads = [threading.Thread(target=one) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    ok = [r for r in results if r["status"] == 200]
    ttfts = sorted(r["ttft_s"] for r in ok)
    return {
        "clients": clients,
        "ok": len(ok),
        "rejected_429": sum(1 for r in results if r["status"] == 429),
        "aggregate_tok_s": sum(r["tokens"] for r in ok) / wall,
        "ttft_p50_s": statistics.median(ttfts),
        "ttft_p95_s": ttfts[min(len(ttfts) - 1, round(0.95 * (len(ttfts) - 1)))],
        "wall_s": wall,
    }


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "serving.json")
    args = parser.parse_args()

    import llama_cpp

    from townsquare.backends.llamacpp import bundled_model_path

    model_path = bundled_model_path()
    threads = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        server, key = start_server(Path(tmp), args.port)
        url = f"http://127.0.0.1:{args.port}"
        try:
            http = httpx.Client(
                base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=300
            )
            model = http.get("/v1/models").json()["data"][0]["id"]
            raw_llama = llama_cpp.Llama(
                model_path=str(model_path),
                n_ctx=2048,
                n_threads=threads,
                n_threads_batch=threads,
                flash_attn=True,
                verbose=False,
            )
            # warm both (first-call allocation), then interleave
            stream_raw(raw_llama, 16)
            stream_server(http, model, 16)
            raw_runs, served_runs = [], []
            for _ in range(args.runs):
                raw_runs.append(stream_raw(raw_llama, args.max_tokens))
                served_runs.append(stream_server(http, model, args.max_tokens))
            raw_llama.close()
            single = concurrent(url, key, model, 1, 64)
            eight = concurrent(url, key, model, 8, 64)
            rss = peak_rss_mb(server.pid)
        finally:
            server.terminate()
            server.wait(timeout=30)

    def med(runs: list[dict[str, Any]], key: str) -> float:
        return statistics.median(r[key] for r in runs)

    raw_tok_s, served_tok_s = med(raw_runs, "decode_tok_s"), med(served_runs, "decode_tok_s")
    raw_ttft, served_ttft = med(raw_runs, "ttft_s"), med(served_runs, "ttft_s")
    # Each served run follows its raw twin within a second: the ratio within a pair cancels the
    # machine's drift (other tenants), so the median of pair ratios is the headline figure.
    pair_ratios = [
        s["decode_tok_s"] / r["decode_tok_s"] for r, s in zip(raw_runs, served_runs, strict=True)
    ]
    pair_ttft = [
        (s["ttft_s"] - r["ttft_s"]) * 1000 for r, s in zip(raw_runs, served_runs, strict=True)
    ]
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "model": model_path.name,
        "runs": args.runs,
        "max_tokens": args.max_tokens,
        "tokens_per_run": [r["tokens"] for r in served_runs],
        "raw_tok_s": round(raw_tok_s, 1),
        "served_tok_s": round(served_tok_s, 1),
        "tok_s_ratio": round(statistics.median(pair_ratios), 3),
        "tok_s_ratio_of_medians": round(served_tok_s / raw_tok_s, 3),
        "tok_s_pair_ratios": [round(r, 3) for r in pair_ratios],
        "raw_ttft_ms": round(raw_ttft * 1000, 1),
        "served_ttft_ms": round(served_ttft * 1000, 1),
        "ttft_overhead_ms": round(statistics.median(pair_ttft), 1),
        "single_tok_s": round(single["aggregate_tok_s"], 1),
        "single_ttft_ms": round(single["ttft_p50_s"] * 1000, 1),
        "concurrent8_tok_s": round(eight["aggregate_tok_s"], 1),
        "concurrent8_ttft_p50_ms": round(eight["ttft_p50_s"] * 1000, 1),
        "concurrent8_ttft_p95_ms": round(eight["ttft_p95_s"] * 1000, 1),
        "concurrent8_rejected_429": eight["rejected_429"],
        "concurrent8_ok": eight["ok"],
        "concurrent8_vs_single": round(eight["aggregate_tok_s"] / single["aggregate_tok_s"], 3),
        "peak_rss_mb": round(rss, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
