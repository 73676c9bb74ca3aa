"""Two revisions of tierkv side by side in one run: the Rust hot-path benches
(`core`, `disk`) of each, and the engine's whole path through each one's
libtierkv.so (`abi_path.py`: store, lookup, load through the C ABI, host tier alone
and with the disk tier), interleaved round by round (base, head, then head, base)
so that the machine's drift hits both alike. Prints medians per case and the ratio
head / base (above 1: head is faster).

Run: python3 integration/bench/ab_bench.py --base REV [--rounds 3] [--only core,abi]
     [--ttft MODEL --python VENV_PYTHON]   (also time to first token in real vLLM:
     each revision's own ttft_bench.py, connector and library)
The base revision is checked out in target/ab/<rev> and built there
(CARGO_TARGET_DIR=target/ab/target, kept between runs); head is the working tree,
built with `cargo bench --no-run` and `cargo build --release -p tierkv`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCHES = ["core", "disk"]
LOWER_IS_BETTER = {"ns_per_block", "us_per_call", "s/GB", "s"}


def run(cmd: list[str], cwd: Path, env: dict | None = None) -> str:
    out = subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True, text=True)
    return out.stdout


def build(tree: Path, target: Path | None) -> dict[str, Path]:
    """Builds the benches and the release library of `tree`; returns their paths."""
    env = dict(os.environ)
    if target is not None:
        env["CARGO_TARGET_DIR"] = str(target)
    exes = {}
    args = ["cargo", "bench", "-p", "tierkv", "--no-run", "--message-format=json"]
    for b in BENCHES:
        args += ["--bench", b]
    for line in run(args, tree, env).splitlines():
        msg = json.loads(line)
        if msg.get("reason") == "compiler-artifact" and msg.get("executable"):
            name = msg["target"]["name"]
            if name in BENCHES:
                exes[name] = Path(msg["executable"])
    subprocess.run(["cargo", "build", "--release", "-p", "tierkv"], cwd=tree, env=env, check=True)
    exes["lib"] = (target or tree / "target") / "release" / "libtierkv.so"
    return exes


def base_tree(rev: str) -> Path:
    sha = run(["git", "rev-parse", "--short", rev], ROOT).strip()
    tree = ROOT / "target" / "ab" / sha
    if not (tree / "Cargo.toml").is_file():
        subprocess.run(
            ["git", "worktree", "add", "--force", "--detach", str(tree), sha], cwd=ROOT, check=True, stdout=sys.stderr
        )
    return tree


def parse(text: str, into: dict[str, list[float]], units: dict[str, str]) -> None:
    for line in text.splitlines():
        f = line.split("\t")
        if len(f) < 3 or f[0] == "case":
            continue
        try:
            v = float(f[2])
        except ValueError:
            continue
        into.setdefault(f[0], []).append(v)
        units[f[0]] = f[1]


def once(side: dict[str, Path], only: set[str], disk_dir: Path) -> str:
    out = []
    env = dict(os.environ, TIERKV_BENCH_DIR=str(disk_dir))
    for b in BENCHES:
        if b in only:
            out.append(run([str(side[b]), "--bench"], ROOT, env))
    if "abi" in only:
        py = [sys.executable, str(ROOT / "integration/bench/abi_path.py"), "--lib", str(side["lib"])]
        out.append(run(py, ROOT))
        with tempfile.TemporaryDirectory(dir=disk_dir) as d:
            out.append(run(py + ["--disk", d], ROOT))
    return "\n".join(out)


def ttft(tree: Path, side: dict[str, Path], model: str, python: str) -> str:
    """One run of `tree`'s ttft_bench.py with its own connector and library, as
    `case<TAB>unit<TAB>median` lines (cases prefixed `ttft_`)."""
    env = dict(os.environ, TIERKV_LIB=str(side["lib"]), PYTHONPATH=str(tree / "integration" / "vllm"))
    out = run([python, str(tree / "integration/bench/ttft_bench.py"), "--model", model], tree, env)
    lines = []
    for line in out.splitlines():
        f = line.split()
        if len(f) >= 5 and f[-1] in ("True", "False"):
            lines.append(f"ttft_{f[0]}\ts\t{f[1]}")
            if f[-1] != "True":
                raise SystemExit(f"{tree}: outputs of {f[0]} differ from the cold run")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True, help="the revision to compare with (e.g. a commit)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", default="core,disk,abi", help="comma-separated: core, disk, abi")
    ap.add_argument("--ttft", metavar="MODEL", help="also time to first token in real vLLM with this model")
    ap.add_argument("--python", default=sys.executable, help="the vLLM environment's python (for --ttft)")
    args = ap.parse_args()
    only = set(args.only.split(","))
    disk_dir = ROOT / "target" / "bench-disk"
    disk_dir.mkdir(parents=True, exist_ok=True)
    trees = {"base": base_tree(args.base), "head": ROOT}
    sides = {
        "base": build(trees["base"], ROOT / "target" / "ab" / "target"),
        "head": build(ROOT, None),
    }
    values: dict[str, dict[str, list[float]]] = {"base": {}, "head": {}}
    units: dict[str, str] = {}
    for r in range(args.rounds):
        order = ["base", "head"] if r % 2 == 0 else ["head", "base"]
        for name in order:
            parse(once(sides[name], only, disk_dir), values[name], units)
            if args.ttft:
                parse(ttft(trees[name], sides[name], args.ttft, args.python), values[name], units)
            print(f"round {r + 1}/{args.rounds}: {name} done", file=sys.stderr)
    print(f"base {args.base} against the working tree; medians of {args.rounds} rounds\n")
    print("| Case | Unit | Base | Head | Head vs base |")
    print("|---|---|---:|---:|---:|")
    for case in values["head"]:
        if case not in values["base"]:
            continue
        b, h = statistics.median(values["base"][case]), statistics.median(values["head"][case])
        speed = (b / h if units[case] in LOWER_IS_BETTER else h / b) if b and h else float("nan")
        print(f"| {case} | {units[case]} | {b:.3f} | {h:.3f} | {speed:.2f}x |")


if __name__ == "__main__":
    main()
