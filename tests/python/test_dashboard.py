"""The Grafana dashboard (``docs/grafana/tierkv.json``) over the metrics as the
library exports them: every query names series a real scrape has, with labels those
series carry, and a real Prometheus (Debian's package) scraping a real exporter
evaluates every query to data.

Grafana itself is not in Debian's archive, so the dashboard is not loaded into a
running Grafana here; its structure is checked as a dashboard model instead.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "integration" / "vllm"))

from tierkv_vllm import TierKV  # noqa: E402

DASHBOARD = ROOT / "docs" / "grafana" / "tierkv.json"
BLOCK = 8192
# Families exported only where NVML sees a GPU (docs/metrics.md documents them).
GPU_ONLY = {"tierkv_gpu_utilization_percent", "tierkv_pcie_throughput_bytes_per_second"}
NAME = re.compile(r"\b(tierkv_[a-z0-9_]+)(\{[^}]*\})?")


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def queries(dash: dict) -> list[str]:
    out = []
    for p in dash["panels"]:
        for t in p.get("targets", []):
            out.append(t["expr"])
    return out


def promql(expr: str) -> str:
    """A dashboard query as Prometheus runs it (Grafana's variables filled in)."""
    return expr.replace("$__rate_interval", "1m").replace("$instance", ".*")


def scrape_families(text: str) -> dict[str, tuple[str, set[str]]]:
    """Family name -> (type, label names seen on its series)."""
    fams: dict[str, tuple[str, set[str]]] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            fams[name] = (kind, set())
    for line in text.splitlines():
        if line.startswith("#") or not line:
            continue
        series = line.rsplit(" ", 1)[0]
        name = series.split("{")[0]
        base = re.sub(r"_(bucket|sum|count)$", "", name) if name not in fams else name
        labels = set(re.findall(r'(\w+)="', series[len(name):]))
        if base in fams:
            fams[base][1].update(labels)
    return fams


def busy_manager(tmp: Path, monkeypatch, **env: str) -> tuple[TierKV, ctypes.Array]:
    """A manager with every part that has metrics (host and disk tiers, pool,
    semantic sharing, telemetry), some traffic, an adapter error and a sample;
    with the engine memory its layout names (keep it while the manager lives)."""
    settings = dict(
        TIERKV_SEMANTIC="on",
        TIERKV_DISK_PATH=str(tmp / "disk"),
        TIERKV_DISK_BYTES="8MiB",
        TIERKV_DISK_ADMIT="always",
        TIERKV_HW_INTERVAL="100ms",
        **env,
    )
    for k, v in settings.items():
        monkeypatch.setenv(k, v)
    tkv = TierKV(block_tokens=4, block_bytes=BLOCK, pool_blocks=8)
    engine = ctypes.create_string_buffer(BLOCK * 8)
    tkv.register_layout([(ctypes.addressof(engine), BLOCK, BLOCK)], 8)
    traffic(tkv, 0)
    tkv.record_error(1, 4)
    deadline = time.monotonic() + 10
    while "tierkv_host_memory_bytes" not in tkv.metrics_text():
        assert time.monotonic() < deadline, "no telemetry sample within 10 s"
        time.sleep(0.05)
    return tkv, engine


def traffic(tkv: TierKV, seed: int) -> None:
    hashes = tkv.hash_tokens([seed * 100 + i for i in range(8)])
    tkv.store_blocks(hashes, [0, 1])
    tkv.lookup(hashes)
    tkv.load_blocks(hashes, [2, 3])
    tkv.disk_flush(10.0)


def test_the_dashboard_is_a_grafana_dashboard():
    d = dashboard()
    assert d["uid"] == "tierkv" and d["schemaVersion"] >= 36
    names = [v["name"] for v in d["templating"]["list"]]
    assert names == ["datasource", "instance"]
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for p in d["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["refId"] and t["expr"], p["title"]
            assert 'instance=~"$instance"' in t["expr"], f"{p['title']}: filters by the instance variable"


def test_every_query_names_series_the_library_exports(env, monkeypatch):
    tkv, _engine = busy_manager(env, monkeypatch)
    try:
        fams = scrape_families(tkv.metrics_text())
    finally:
        tkv.close()
    docs = (ROOT / "docs" / "metrics.md").read_text()
    for expr in queries(dashboard()):
        refs = NAME.findall(expr)
        assert refs, expr
        seen_labels: set[str] = {"instance", "job"}
        for name, matchers in refs:
            base = name
            if name not in fams and name not in GPU_ONLY:
                base = re.sub(r"_(bucket|sum|count)$", "", name)
                assert fams.get(base, ("",))[0] == "histogram", f"{name} is not exported ({expr})"
            if name in GPU_ONLY:
                assert f"`{name}`" in docs, f"{name} is not documented"
                continue
            labels = fams[base][1] | ({"le"} if name.endswith("_bucket") else set())
            seen_labels |= labels
            for label in re.findall(r"(\w+)=~?\"", matchers):
                assert label == "instance" or label in labels, f"{name} has no label {label} ({expr})"
        for group in re.findall(r"by \(([^)]*)\)", expr):
            for label in (x.strip() for x in group.split(",")):
                if not any(n in GPU_ONLY for n, _ in refs):
                    assert label in seen_labels, f"no series of {expr} has label {label}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prometheus_binary() -> str | None:
    return os.environ.get("TIERKV_PROMETHEUS") or shutil.which("prometheus")


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def test_prometheus_evaluates_every_query_to_data(env, monkeypatch):
    binary = prometheus_binary()
    if binary is None:
        if os.environ.get("TIERKV_REQUIRE_PROMETHEUS") == "1":
            pytest.fail("prometheus not found (scripts/test.sh installs Debian's package)")
        pytest.skip("prometheus not installed (Debian package `prometheus`)")
    tkv, _engine = busy_manager(env, monkeypatch, TIERKV_METRICS_ADDR="0")
    port = tkv.info()["metrics_port"]
    assert port, "the exporter runs"
    web = free_port()
    cfg = env / "prometheus.yml"
    cfg.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"scrape_configs:\n  - job_name: tierkv\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
    )
    log = open(env / "prometheus.log", "w")
    proc = subprocess.Popen(
        [binary, f"--config.file={cfg}", f"--storage.tsdb.path={env / 'tsdb'}", f"--web.listen-address=127.0.0.1:{web}"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    api = f"http://127.0.0.1:{web}/api/v1"
    try:
        deadline = time.monotonic() + 60
        # Several scrapes with traffic between them, so that rates have two samples.
        samples = 0
        while samples < 4:
            assert proc.poll() is None, (env / "prometheus.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "Prometheus did not scrape 4 times in 60 s"
            time.sleep(0.5)
            traffic(tkv, samples + 1)
            try:
                r = get(f"{api}/query?query=" + urllib.parse.quote("count_over_time(tierkv_lookups_total[1m])"))
            except OSError:
                continue
            result = r["data"]["result"]
            samples = int(float(result[0]["value"][1])) if result else 0
        for expr in queries(dashboard()):
            r = get(f"{api}/query?query=" + urllib.parse.quote(promql(expr)))
            assert r["status"] == "success", (expr, r)
            if not any(n in GPU_ONLY for n, _ in NAME.findall(expr)):
                assert r["data"]["result"], f"no data for {expr}"
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
        tkv.close()
