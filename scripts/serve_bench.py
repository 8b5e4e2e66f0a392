#!/usr/bin/env python3
"""Load on a running `lamina serve`: C concurrent streaming clients, each
sending R requests one after another; per client count, the aggregate
decode tokens/s (completion tokens of all requests over the wall time) and
the p50 / p95 time to first token (request sent to first text chunk).

    python3 scripts/serve_bench.py --url http://127.0.0.1:8080 --clients 1,2,4,8

Standard library only. Each request asks for --max-tokens tokens with
ignore_eos (a Lamina extension), so every request generates the same count.
"""

import argparse
import http.client
import json
import statistics
import threading
import time
import urllib.parse


def one(url, model, prompt, max_tokens, seed):
    u = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
    body = json.dumps({
        "model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.8,
        "seed": seed, "stream": True, "ignore_eos": True,
        "stream_options": {"include_usage": True},
    })
    t0 = time.monotonic()
    conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    r = conn.getresponse()
    if r.status != 200:
        raise RuntimeError(f"HTTP {r.status}: {r.read()[:200]!r}")
    ttft, tokens = None, 0
    for raw in r:
        line = raw.decode().strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        ev = json.loads(line[6:])
        if "error" in ev:
            raise RuntimeError(ev["error"])
        if ev.get("usage"):
            tokens = ev["usage"]["completion_tokens"]
        if ttft is None and any(c.get("text") for c in ev.get("choices", [])):
            ttft = time.monotonic() - t0
    conn.close()
    return ttft, tokens


def run(args, clients):
    ttfts, tokens, errors = [], [], []
    lock = threading.Lock()

    def client(c):
        for r in range(args.requests):
            try:
                t, n = one(args.url, args.model, args.prompt, args.max_tokens, 1000 * c + r)
                with lock:
                    ttfts.append(t)
                    tokens.append(n)
            except Exception as e:  # noqa: BLE001 - counted and printed
                with lock:
                    errors.append(repr(e))

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    q = statistics.quantiles(ttfts, n=20) if len(ttfts) > 1 else [ttfts[0]] * 19
    return {
        "clients": clients, "requests": len(ttfts), "errors": len(errors),
        "tokens": sum(tokens), "wall_s": wall, "agg_tps": sum(tokens) / wall,
        "ttft_p50": statistics.median(ttfts), "ttft_p95": q[18],
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--model", default="SmolLM2-135M-Instruct.Q4_1")
    ap.add_argument("--clients", default="1,2,4,8")
    ap.add_argument("--requests", type=int, default=3, help="requests per client")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--prompt", default="Once upon a time, in a small village by the sea,")
    args = ap.parse_args()
    one(args.url, args.model, args.prompt, 4, 0)  # warm-up
    print("| clients | requests | tokens | wall s | aggregate t/s | TTFT p50 s | TTFT p95 s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    base = None
    for c in [int(x) for x in args.clients.split(",")]:
        r = run(args, c)
        base = base or r["agg_tps"]
        print(f"| {c} | {r['requests']} | {r['tokens']} | {r['wall_s']:.1f} | {r['agg_tps']:.1f} "
              f"({r['agg_tps'] / base:.2f}x) | {r['ttft_p50']:.2f} | {r['ttft_p95']:.2f} |"
              + (f" {r['errors']} errors" if r["errors"] else ""), flush=True)


if __name__ == "__main__":
    main()
