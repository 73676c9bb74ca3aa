"""tierkv as llama.cpp's prefix cache against llama.cpp's own server prompt cache
(``llama-server --cache-ram``: in-process, whole prompts, oldest first out), one run.

1. Time to first token for prompts sharing a long prefix (the help desk prompt of
   tests/e2e/prompts.py, four new questions after four others warmed the cache):
   (a) no cache (the tierkv host with ``--no-cache``: everything computed);
   (b) llama.cpp's cache: one ``llama-server`` process, warmed by the first four
       prompts, then the four measured (wall time of a ``/completion`` request with
       ``n_predict`` 1, over loopback);
   (c) tierkv from a fresh process: process A runs the first four, process B (new)
       the measured four (its own TTFT figure: tokenize, lookup, load, import,
       decode the rest);
   (d) tierkv from disk after a restart: as (c) with a disk tier, and the host
       arena removed between A and B (B finds the blocks only on disk).
2. Hit ratio on an interleaved multi-conversation trace, where whole-prompt caching
   loses: 12 conversations sharing the system prompt, 3 turns each, turns
   interleaved (every conversation's first turn, then every second turn...); each
   turn's prompt is the conversation so far. Tokens served from a cache over prompt
   tokens: llama-server's ``timings.cache_n`` (one slot, ``--cache-ram`` 64 MiB,
   i.e. room for a few whole prompts) against tierkv's loaded blocks (host tier of
   the same 64 MiB), each in one process.

Run:
    python3 integration/bench/llamacpp_bench.py   (builds llama.cpp and the host first
    if needed, through scripts/build-llamacpp-host.sh)
Every engine gets the same threads (--threads, default 2). Prints one tab-separated
line per figure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
import prompts as prompt_sets  # noqa: E402

SHM = Path(os.environ.get("TIERKV_SHM_DIR", "/dev/shm"))


def build() -> tuple[Path, Path]:
    out = subprocess.run(
        [str(ROOT / "scripts" / "build-llamacpp-host.sh")], check=True, capture_output=True, text=True
    ).stdout.split("\n")
    lines = [line for line in out if line.strip()]
    return Path(lines[-2]), Path(lines[-1])


def host(args, prompts: list[str], store: str, *extra: str, env_extra: dict | None = None) -> list[dict]:
    tmp = Path(tempfile.mkdtemp())
    pf = tmp / "prompts.txt"
    pf.write_text("".join(p.replace("\n", "\\n") + "\n" for p in prompts))
    out = tmp / "out.jsonl"
    env = dict(os.environ, TIERKV_STORE_NAME=store, TIERKV_CPU_BYTES=args.cache_mib + "MiB")
    env.pop("TIERKV_METRICS_ADDR", None)
    env.update(env_extra or {})
    cmd = [str(args.host), "--model", str(args.model), "--prompts", str(pf), "--out", str(out)]
    cmd += ["--max-tokens", "1", "--threads", str(args.threads), *extra]
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    res = [json.loads(line) for line in out.read_text().splitlines()]
    shutil.rmtree(tmp)
    return res


class Server:
    """One llama-server process (one slot, the prompt cache of --cache-ram MiB)."""

    def __init__(self, args):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        cmd = [str(args.server), "-m", str(args.model), "--host", "127.0.0.1", "--port", str(self.port)]
        cmd += ["-c", "4096", "-np", "1", "-t", str(args.threads), "--cache-ram", args.cache_mib]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 300
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise SystemExit("llama-server did not start")
            time.sleep(0.5)

    def complete(self, prompt: str) -> tuple[float, dict]:
        body = json.dumps({"prompt": prompt, "n_predict": 1, "temperature": 0, "cache_prompt": True}).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/completion", body, {"Content-Type": "application/json"}
        )
        t = time.perf_counter()
        with urllib.request.urlopen(req, timeout=300) as r:
            out = json.loads(r.read())
        return time.perf_counter() - t, out["timings"]

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def ttft(args) -> None:
    warm = [prompt_sets.prompt(q) for q in prompt_sets.QUESTIONS_A]
    measured = [prompt_sets.prompt(q) for q in prompt_sets.QUESTIONS_B]
    ms = {}
    ms["a_no_cache"] = [r["ttft_ms"] for r in host(args, measured, f"bench-{uuid.uuid4().hex[:8]}", "--no-cache")]
    srv = Server(args)
    try:
        for p in warm:
            srv.complete(p)
        ms["b_llama_server_same_process"] = [srv.complete(p)[0] * 1e3 for p in measured]
    finally:
        srv.close()
    store = f"bench-{uuid.uuid4().hex[:8]}"
    host(args, warm, store)
    got = host(args, measured, store)
    ms["c_tierkv_fresh_process"] = [r["ttft_ms"] for r in got]
    (SHM / f"tierkv-{store}.arena").unlink(missing_ok=True)
    disk = Path(tempfile.mkdtemp(dir=args.disk_dir))
    store = f"bench-{uuid.uuid4().hex[:8]}"
    denv = {"TIERKV_DISK_PATH": str(disk), "TIERKV_DISK_BYTES": "1GiB", "TIERKV_DISK_ADMIT": "always"}
    host(args, warm, store, env_extra=denv)
    (SHM / f"tierkv-{store}.arena").unlink(missing_ok=True)  # the restart: the host tier is gone
    got_disk = host(args, measured, store, env_extra=denv)
    ms["d_tierkv_disk_after_restart"] = [r["ttft_ms"] for r in got_disk]
    (SHM / f"tierkv-{store}.arena").unlink(missing_ok=True)
    shutil.rmtree(disk)
    print(f"ttft\tprompt_tokens\t{statistics.median(r['prompt_tokens'] for r in got):.0f}")
    print(f"ttft\tloaded_blocks_fresh\t{[r['loaded_blocks'] for r in got]}")
    print(f"ttft\tloaded_blocks_disk\t{[r['loaded_blocks'] for r in got_disk]}")
    base = statistics.median(ms["b_llama_server_same_process"])
    for name, v in ms.items():
        med = statistics.median(v)
        print(f"ttft\t{name}\tmedian_ms\t{med:.1f}\tvs_llama_server\t{med / base:.2f}")


def conversations(n: int, turns: int) -> list[list[str]]:
    """Prompts per turn: every conversation's turn t, for t = 1..turns."""
    qs = prompt_sets.QUESTIONS_A + prompt_sets.QUESTIONS_B
    out = []
    history = [prompt_sets.SYSTEM for _ in range(n)]
    for t in range(turns):
        row = []
        for c in range(n):
            q = f"(conversation {c}, turn {t}) {qs[(c + t) % len(qs)]}"
            history[c] += f"\n\nQuestion: {q}\nAnswer:"
            row.append(history[c])
            history[c] += f" Thank you for asking about point {c * turns + t}; see the policy above."
        out.append(row)
    return out


def interleaved(args) -> None:
    trace = [p for row in conversations(12, 3) for p in row]
    srv = Server(args)
    try:
        cached = total = 0
        for p in trace:
            _, t = srv.complete(p)
            cached += t.get("cache_n", 0)
            total += t.get("cache_n", 0) + t["prompt_n"]
    finally:
        srv.close()
    store = f"bench-{uuid.uuid4().hex[:8]}"
    got = host(args, trace, store)
    (SHM / f"tierkv-{store}.arena").unlink(missing_ok=True)
    ours = sum(r["loaded_blocks"] * 32 for r in got)
    ours_total = sum(r["prompt_tokens"] for r in got)
    print(f"interleaved\trequests\t{len(trace)}")
    print(f"interleaved\tllama_server_cache_ram\thit_ratio\t{cached / total:.3f}")
    print(f"interleaved\ttierkv\thit_ratio\t{ours / ours_total:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache-mib", default="64", help="llama-server --cache-ram and tierkv's host tier, MiB")
    ap.add_argument("--disk-dir", default=None, help="where the disk tier of case (d) lives (default: /tmp)")
    ap.add_argument("--only", choices=["ttft", "interleaved"])
    args = ap.parse_args()
    llama, args.host = build()
    args.model = llama / "model.gguf"
    args.server = llama / "prefix" / "bin" / "llama-server"
    if args.only in (None, "ttft"):
        ttft(args)
    if args.only in (None, "interleaved"):
        interleaved(args)


if __name__ == "__main__":
    main()
