#!/usr/bin/env python3
"""A bounded load test for an OpenAI-compatible server (ledge serve, llama-server).

Sends a fixed number of streaming chat requests, a fixed number at a time, stops issuing new
ones after --max-seconds, and reports p50/p99 time to first token (request sent -> first
text delta), the total generated tokens per second over the wall time, and errors. Exits 1
if any request failed. Standard library only.

    # against a running server
    python scripts/load_test.py --url http://127.0.0.1:8080 -n 64 -c 8 --max-tokens 128
    # start `ledge serve` itself on a free port (what scripts/test.sh does, small)
    python scripts/load_test.py --serve target/release/ledge --serve-args "--parallel 4" -n 8 -c 4
"""

import argparse
import http.client
import json
import shlex
import signal
import subprocess
import sys
import threading
import time
import urllib.parse

PROMPTS = [
    "Write a short poem about the sea.",
    "Explain how a bicycle works.",
    "List some good habits for programmers.",
    "Describe the water cycle.",
    "Tell me a story about a lost cat.",
    "What makes a good breakfast?",
    "Give advice for a first job interview.",
    "Why is the sky blue?",
]


def one_request(host, port, key, i, a):
    body = json.dumps({
        "model": "default",
        "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
        "max_tokens": a.max_tokens,
        "temperature": a.temperature,
        "seed": i,
        "stream": True,
        "stream_options": {"include_usage": True},
    })
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    conn = http.client.HTTPConnection(host, port, timeout=600)
    t0 = time.perf_counter()
    ttft = None
    chunks = 0
    usage = None
    try:
        conn.request("POST", "/v1/chat/completions", body, headers)
        r = conn.getresponse()
        if r.status != 200:
            return {"error": f"HTTP {r.status}: {r.read()[:200]!r}"}
        done = False
        for raw in r:
            line = raw.decode().strip()
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                done = True
                break
            ev = json.loads(data)
            if "error" in ev:
                return {"error": json.dumps(ev)}
            if ev.get("usage"):
                usage = ev["usage"]
            for ch in ev.get("choices") or []:
                if (ch.get("delta") or {}).get("content"):
                    chunks += 1
                    if ttft is None:
                        ttft = time.perf_counter() - t0
        if not done:
            return {"error": "stream ended without [DONE]"}
    except Exception as e:  # a refused or dropped connection is a failed request
        return {"error": repr(e)}
    finally:
        conn.close()
    tokens = usage["completion_tokens"] if usage else chunks
    return {"ttft": ttft, "tokens": tokens, "total": time.perf_counter() - t0}


def percentile(xs, p):
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = min(len(xs) - 1, max(0, round(p / 100 * (len(xs) - 1))))
    return xs[k]


def run_load(url, key, a):
    u = urllib.parse.urlparse(url)
    results = []
    lock = threading.Lock()
    next_i = [0]
    t_start = time.perf_counter()

    def worker():
        while True:
            with lock:
                i = next_i[0]
                if i >= a.requests or time.perf_counter() - t_start > a.max_seconds:
                    return
                next_i[0] += 1
            r = one_request(u.hostname, u.port or 80, key, i, a)
            with lock:
                results.append(r)

    threads = [threading.Thread(target=worker) for _ in range(a.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t_start
    ok = [r for r in results if "error" not in r]
    errors = [r["error"] for r in results if "error" in r]
    ttfts = [r["ttft"] for r in ok if r["ttft"] is not None]
    tokens = sum(r["tokens"] for r in ok)
    report = {
        "url": url,
        "requests": len(results),
        "ok": len(ok),
        "errors": len(errors),
        "concurrency": a.concurrency,
        "max_tokens": a.max_tokens,
        "wall_s": round(wall, 2),
        "ttft_p50_ms": round(percentile(ttfts, 50) * 1e3, 1),
        "ttft_p99_ms": round(percentile(ttfts, 99) * 1e3, 1),
        "tokens": tokens,
        "tokens_per_s": round(tokens / wall, 1),
    }
    return report, errors


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", help="a running server, e.g. http://127.0.0.1:8080")
    ap.add_argument("--serve", help="start this ledge binary's `serve` on a free port instead")
    ap.add_argument("--serve-args", default="", help="extra flags for `ledge serve`")
    ap.add_argument("--api-key")
    ap.add_argument("-n", "--requests", type=int, default=64)
    ap.add_argument("-c", "--concurrency", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--max-seconds", type=float, default=600,
                    help="issue no new request after this long")
    ap.add_argument("--json", action="store_true", help="print the report as JSON only")
    a = ap.parse_args()
    if bool(a.url) == bool(a.serve):
        ap.error("give exactly one of --url and --serve")

    proc = None
    url = a.url
    if a.serve:
        proc = subprocess.Popen([a.serve, "serve", "--port", "0", *shlex.split(a.serve_args)],
                                stderr=subprocess.PIPE, text=True)
        for line in proc.stderr:
            if line.startswith("listening on http://"):
                url = line.split()[2]
                break
            sys.stderr.write(line)
        if url is None:
            raise SystemExit("ledge serve exited before listening")
        threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
        import urllib.request
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=5):
                    break
            except Exception:
                if time.time() > deadline:
                    raise SystemExit("ledge serve never became ready")
                time.sleep(0.05)
    try:
        report, errors = run_load(url, a.api_key, a)
    finally:
        if proc:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
    if a.json:
        print(json.dumps(report))
    else:
        print(f"{report['requests']} requests ({report['ok']} ok, {report['errors']} errors) at "
              f"{report['concurrency']} concurrent streams, max_tokens {report['max_tokens']}, "
              f"in {report['wall_s']} s")
        print(f"time to first token: p50 {report['ttft_p50_ms']} ms, "
              f"p99 {report['ttft_p99_ms']} ms")
        print(f"generated {report['tokens']} tokens: {report['tokens_per_s']} tokens/s in total")
    for e in errors[:5]:
        print("error:", e, file=sys.stderr)
    sys.exit(1 if errors or report["ok"] == 0 else 0)


if __name__ == "__main__":
    main()
