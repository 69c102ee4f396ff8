"""NVIDIA ``perf_analyzer`` against a running Triton server, where it runs.

``tritonclient[all]==2.50.0`` is installed into a venv of its own (``bench/.cache/venv-perf-analyzer``,
once); its ``perf_analyzer`` binary needs ``libb64.so.0d`` and ``libcudart.so.12``, which resolve through
symlinks (in the perf venv's ``triton-libs/``) to the mangled copies that the nvidia-pytriton wheel ships in
``nvidia_pytriton.libs``. Each run is bounded: a measurement window of a few seconds, a few trials, and a
subprocess timeout. The CSV it writes (``-f``) is parsed into rows; times are microseconds there and
milliseconds here.
"""
from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fashiongen.bench.txt2img import CACHE

PERF_VENV = CACHE / "venv-perf-analyzer"
REQUIREMENT = "tritonclient[all]==2.50.0"
INSTALLED = ".fashiongen-installed"  # written once pip has succeeded: the venv is complete
LIBS = {"libb64.so.0d": "libb64-*.so.0d", "libcudart.so.12": "libcudart-*.so.12*"}


class PerfAnalyzerUnavailable(RuntimeError):
    """perf_analyzer cannot be set up or run here; the message says why in one line."""


def _pytriton_libs() -> Path:
    try:
        import pytriton
    except ImportError:
        raise PerfAnalyzerUnavailable("nvidia-pytriton is not installed in this environment") from None
    libs = Path(pytriton.__file__).parent.parent / "nvidia_pytriton.libs"
    if not libs.is_dir():
        raise PerfAnalyzerUnavailable(f"{libs} is missing")
    return libs


def _install(venv: Path, timeout_s: float) -> None:
    if (venv / INSTALLED).is_file() and (venv / "bin" / "perf_analyzer").is_file():
        return
    shutil.rmtree(venv, ignore_errors=True)  # a half-made venv from an interrupted run
    print(f"perf_analyzer: installing {REQUIREMENT} into {venv} ...", flush=True)
    steps = ([sys.executable, "-m", "venv", str(venv)],
             [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check", REQUIREMENT])
    for step in steps:
        try:
            done = subprocess.run(step, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise PerfAnalyzerUnavailable(f"'{' '.join(step[:4])} ...' took over {timeout_s:.0f} s") from None
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise PerfAnalyzerUnavailable(f"'{' '.join(step[:4])} ...' failed ({done.returncode}): {last[:300]}")
    if not (venv / "bin" / "perf_analyzer").is_file():
        raise PerfAnalyzerUnavailable(f"{REQUIREMENT} installed no bin/perf_analyzer")
    (venv / INSTALLED).write_text(REQUIREMENT + "\n")


def _link_libs(venv: Path) -> Path:
    source, folder = _pytriton_libs(), venv / "triton-libs"
    folder.mkdir(exist_ok=True)
    for name, pattern in LIBS.items():
        matches = sorted(source.glob(pattern))
        if not matches:
            raise PerfAnalyzerUnavailable(f"no {pattern} in {source} to stand in for {name}")
        link = folder / name
        if link.is_symlink() or link.exists():
            if link.resolve() == matches[0].resolve():
                continue
            link.unlink()
        link.symlink_to(matches[0])
    return folder


def setup(venv: Path = PERF_VENV, timeout_s: float = 900) -> tuple[Path, dict[str, str]]:
    """The perf_analyzer binary and the environment it runs in; raises PerfAnalyzerUnavailable."""
    if not sys.platform.startswith("linux"):
        raise PerfAnalyzerUnavailable(f"the perf_analyzer of {REQUIREMENT} is a Linux binary (here: {sys.platform})")
    _install(venv, timeout_s)
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(_link_libs(venv)), env.get("LD_LIBRARY_PATH")) if p)
    binary = venv / "bin" / "perf_analyzer"
    try:
        done = subprocess.run([str(binary), "--help"], capture_output=True, text=True, timeout=60, env=env)
    except subprocess.TimeoutExpired:
        raise PerfAnalyzerUnavailable("'perf_analyzer --help' did not return within 60 s") from None
    except OSError as error:
        raise PerfAnalyzerUnavailable(f"{binary} does not start: {error}") from None
    text = done.stdout + done.stderr
    if "error while loading shared libraries" in text or "--measurement-interval" not in text:
        raise PerfAnalyzerUnavailable(f"{binary} does not start: {text.strip().splitlines()[0][:300] if text.strip() else done.returncode}")
    return binary, env


def _ms(row: dict, key: str) -> float | None:
    value = row.get(key)
    return float(value) / 1000 if value not in (None, "") else None


def parse_csv(path: Path) -> list[dict]:
    """perf_analyzer's ``-f`` report: one row per concurrency level; latencies in ms."""
    rows = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if not row.get("Concurrency"):
                continue
            rows.append({"concurrency": int(row["Concurrency"]), "throughput": float(row["Inferences/Second"]),
                         "p50_ms": _ms(row, "p50 latency"), "p95_ms": _ms(row, "p95 latency"),
                         "p99_ms": _ms(row, "p99 latency"), "avg_ms": _ms(row, "Avg latency"),
                         "client_send_ms": _ms(row, "Client Send"),
                         "network_ms": _ms(row, "Network+Server Send/Recv"),
                         "server_queue_ms": _ms(row, "Server Queue"),
                         "server_compute_input_ms": _ms(row, "Server Compute Input"),
                         "server_compute_infer_ms": _ms(row, "Server Compute Infer"),
                         "server_compute_output_ms": _ms(row, "Server Compute Output"),
                         "client_recv_ms": _ms(row, "Client Recv")})
    return rows


def run(binary: Path, env: dict[str, str], grpc_url: str, model: str, shapes: dict[str, tuple[int, ...]],
        batch_size: int, concurrency: int, shared_memory: bool, interval_ms: int = 3000, max_trials: int = 4,
        stability_pct: int = 100, input_data: str = "random", output_shm_bytes: int = 1 << 24,
        timeout_s: float = 180) -> dict:
    """One perf_analyzer run over gRPC at one concurrency level; its CSV row (times in ms).

    One level per run: perf_analyzer abandons a whole sweep at the first level it finds unstable. On 2 shared
    cores latency varies a lot between windows, hence the loose default stability criterion (max/min of the
    last 3 windows within 100%). Raises PerfAnalyzerUnavailable with perf_analyzer's own words when it fails
    or runs over ``timeout_s``.
    """
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        report = Path(tmp) / "report.csv"
        command = [str(binary), "-m", model, "-u", grpc_url, "-i", "grpc", "-b", str(batch_size),
                   "--concurrency-range", str(concurrency), "--measurement-interval", str(interval_ms),
                   "--max-trials", str(max_trials), "--stability-percentage", str(stability_pct),
                   "--input-data", input_data, "--shared-memory", "system" if shared_memory else "none",
                   "-f", str(report)]
        if shared_memory:
            command += ["--output-shared-memory-size", str(output_shm_bytes)]
        for name, shape in shapes.items():
            command += ["--shape", f"{name}:{','.join(map(str, shape))}"]
        start = time.monotonic()
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, env=env,
                                  start_new_session=True)
        except subprocess.TimeoutExpired:
            raise PerfAnalyzerUnavailable(f"perf_analyzer on {model} ran over {timeout_s:.0f} s") from None
        rows = parse_csv(report) if report.is_file() else []
        if done.returncode != 0 or not rows:
            words = [line.strip() for line in (done.stdout + done.stderr).splitlines() if line.strip()]
            reason = next((line for line in reversed(words) if "rror" in line or "ailed" in line),
                          words[-1] if words else "no output")
            raise PerfAnalyzerUnavailable(f"perf_analyzer on {model} (concurrency {concurrency}) failed "
                                          f"(status {done.returncode}): {reason[:300]}")
        rows[0]["wall_s"] = time.monotonic() - start
        return rows[0]


def table(rows: list[dict]) -> list[str]:
    """Markdown lines for the rows of ``profile``."""
    lines = ["| model | shm | concurrency | batch | throughput infer/s | p50 ms | p95 ms | p99 ms | "
             "server queue ms | server compute ms (input / infer / output) |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]

    def f(value: float | None, digits: int = 2) -> str:
        return "-" if value is None else f"{value:.{digits}f}"
    for r in rows:
        compute = " / ".join(f(r[k], 3) for k in ("server_compute_input_ms", "server_compute_infer_ms",
                                                   "server_compute_output_ms"))
        lines.append(f"| {r['model']} | {'system' if r['shared_memory'] else 'none'} | {r['concurrency']} | "
                     f"{r['batch_size']} | {f(r['throughput'], 1)} | {f(r['p50_ms'])} | {f(r['p95_ms'])} | "
                     f"{f(r['p99_ms'])} | {f(r['server_queue_ms'], 3)} | {compute} |")
    return lines
