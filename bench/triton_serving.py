"""Triton serving: load test of the server-side pipeline, and Triton's per-call overhead on the UNet.

1. Throughput and p50/p95/p99 latency of ``txt2img`` requests against concurrency (1, 2, 4, 8, 16) on the
   small demo checkpoint, with the UNet batch sizes the server executed meanwhile.
2. One guided UNet call (batch 2) in-process on ONNX Runtime vs through the server (gRPC + system shared
   memory), interleaved, median of several calls: on the demo UNet and, with ``--full-size``, the SD 1.5 UNet.
3. With ``--perf-analyzer``, where NVIDIA's ``perf_analyzer`` runs (bench/perf_analyzer.py): the demo
   ``unet``, ``text_encoder`` and ``vae_decoder`` at batch 2 over gRPC, with and without system shared
   memory, concurrency 1 and 4: throughput, p50/p95/p99 latency and the server's queue / compute times.
   If it cannot be set up or fails, one line says why and the rest of the bench goes on.

    python -m fashiongen.bench.triton_serving [--full-size] [--requests-per-client 2] [--perf-analyzer]

writes ``bench/results/triton_serving.{md,json}``. Every loop is bounded in count and time.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from statistics import median

import numpy as np

from fashiongen.bench.txt2img import CACHE, RESULTS, prepare
from fashiongen.runtime.contracts import UNET
from fashiongen.runtime.engines import OrtEngine
from fashiongen.runtime.manifest import load_manifest
from fashiongen.runtime.triton_engine import TritonEngine
from fashiongen.runtime.txt2img import Txt2ImgRequest
from fashiongen.bench import perf_analyzer
from fashiongen.triton_repo.build import write_repository
from fashiongen.triton_repo.client import request_pipeline
from fashiongen.triton_repo.server import ServerOptions, TritonServer, free_port

CONCURRENCY = (1, 2, 4, 8, 16)


def start_server(engines: Path, workdir: Path) -> TritonServer:
    repo = workdir / f"repo-{engines.name}"
    write_repository([engines], repo, max_batch_size=8, pipeline_instances=4)
    options = ServerOptions(repo=repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
                            startup_timeout=300)
    return TritonServer(options)  # started by `with`


def unet_batches(server: TritonServer) -> dict[int, int]:
    import tritonclient.grpc as grpcclient

    stats = grpcclient.InferenceServerClient(server.grpc_url).get_inference_statistics("unet", as_json=True)
    return {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in stats["model_stats"][0].get("batch_stats", [])}


def load_test(server: TritonServer, size: int, steps: int, per_client: int, budget_s: float) -> list[dict]:
    url = f"grpc://{server.grpc_url}"
    rows = []
    for concurrency in CONCURRENCY:
        before = unet_batches(server)
        latencies: list[float] = []
        deadline = time.monotonic() + budget_s

        def client(i: int) -> None:
            for j in range(per_client):
                if time.monotonic() > deadline:
                    return
                request = Txt2ImgRequest(prompt="black short sleeve crewneck crop top", seed=i * 100 + j,
                                         steps=steps, height=size, width=size)
                start = time.perf_counter()
                request_pipeline(url, "txt2img", request, timeout_s=budget_s)
                latencies.append(time.perf_counter() - start)

        start = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(client, range(concurrency)))
        wall = time.perf_counter() - start
        after = unet_batches(server)
        executed = {b: after.get(b, 0) - before.get(b, 0) for b in sorted(after) if after.get(b, 0) > before.get(b, 0)}
        p = np.percentile(latencies, [50, 95, 99])
        rows.append({"concurrency": concurrency, "requests": len(latencies), "throughput_rps": len(latencies) / wall,
                     "p50_s": p[0], "p95_s": p[1], "p99_s": p[2], "unet_batches": executed})
        print(f"concurrency {concurrency}: {rows[-1]['throughput_rps']:.2f} req/s, p50 {p[0]:.2f} s", flush=True)
    return rows


def unet_overhead(server: TritonServer, engines: Path, size: int, calls: int) -> dict:
    manifest = load_manifest(engines)
    dims = manifest.dims
    latent = size // manifest.vae.downscale
    rng = np.random.default_rng(0)
    feeds = {"sample": rng.standard_normal((2, dims["unet_in_channels"], latent, latent), dtype=np.float32),
             "timestep": np.full((2,), 500.0, np.float32),
             "encoder_hidden_states": rng.standard_normal((2, dims["text_length"], dims["text_hidden"]),
                                                          dtype=np.float32)}
    local = OrtEngine(engines / manifest.networks["unet"].file, UNET, dims)
    remote = TritonEngine(f"grpc://{server.grpc_url}", "unet", UNET, dims, shared_memory=True)
    local.run(feeds), remote.run(feeds)  # warm-up
    times = {"in_process": [], "triton": []}
    for _ in range(calls):
        for name, engine in (("in_process", local), ("triton", remote)):
            start = time.perf_counter()
            engine.run(feeds)
            times[name].append(time.perf_counter() - start)
    remote.close()
    a, b = median(times["in_process"]), median(times["triton"])
    return {"size": size, "calls": calls, "in_process_s": a, "triton_s": b, "overhead_s": b - a,
            "overhead_pct": 100 * (b - a) / a}


PA_CONCURRENCY = (1, 4)


def perf_analyzer_profile(server: TritonServer, engines: Path, size: int, interval_ms: int, budget_s: float) -> dict:
    """perf_analyzer on the demo networks (batch 2, gRPC, shm and not, concurrency 1 and 4), within budget_s.

    Returns ``{"rows": [...], "errors": [...]}`` or ``{"unavailable": reason}``; never raises for perf_analyzer.
    """
    try:
        binary, env = perf_analyzer.setup()
    except perf_analyzer.PerfAnalyzerUnavailable as error:
        print(f"perf_analyzer: not run: {error}", flush=True)
        return {"unavailable": str(error)}
    manifest = load_manifest(engines)
    dims = manifest.dims
    latent = size // manifest.vae.downscale
    hidden = (dims["text_length"], dims["text_hidden"])
    runs = (("unet", {"sample": (dims["unet_in_channels"], latent, latent), "timestep": (1,),
                      "encoder_hidden_states": hidden}, "random"),
            # token ids: zeros, as random int32 would index past the vocabulary
            ("text_encoder", {"input_ids": (dims["text_length"],)}, "zero"),
            ("vae_decoder", {"latent": (dims["latent_channels"], latent, latent)}, "random"))
    deadline = time.monotonic() + budget_s
    rows, errors = [], []
    for model, shapes, data in runs:
        for shm in (False, True):
            for concurrency in PA_CONCURRENCY:
                left = deadline - time.monotonic()
                if left < 10:
                    errors.append(f"{model} shm={shm} concurrency {concurrency}: skipped, perf_analyzer budget "
                                  f"({budget_s:.0f} s) spent")
                    print(f"perf_analyzer: {errors[-1]}", flush=True)
                    continue
                try:
                    row = perf_analyzer.run(binary, env, server.grpc_url, model, shapes, 2, concurrency, shm,
                                            interval_ms=interval_ms, input_data=data, timeout_s=min(180, left))
                except perf_analyzer.PerfAnalyzerUnavailable as error:
                    errors.append(f"shm={shm}: {error}")
                    print(f"perf_analyzer: {errors[-1]}", flush=True)
                    continue
                row.update(model=model, shared_memory=shm, batch_size=2, shapes=shapes)
                print(f"perf_analyzer {model} shm={shm} c={concurrency}: {row['throughput']:.1f} infer/s, "
                      f"p50 {row['p50_ms']:.2f} ms", flush=True)
                rows.append(row)
    return {"rows": rows, "errors": errors, "latent": latent, "interval_ms": interval_ms}


def report(load_rows: list[dict], overheads: dict[str, dict], meta: dict, perf: dict | None = None) -> str:
    lines = [f"# Triton serving (tritonserver {meta['server']}, python backend + ONNX Runtime, CPU)", "",
             json.dumps(meta), "", "## Server-side txt2img pipeline, demo checkpoint", "",
             "| concurrency | requests | throughput req/s | p50 s | p95 s | p99 s | UNet batch sizes executed |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in load_rows:
        lines.append(f"| {r['concurrency']} | {r['requests']} | {r['throughput_rps']:.2f} | {r['p50_s']:.2f} | "
                     f"{r['p95_s']:.2f} | {r['p99_s']:.2f} | {r['unet_batches']} |")
    lines += ["", "## One guided UNet call (batch 2): in-process ONNX Runtime vs through Triton (gRPC + shm)", "",
              "| UNet | size | in-process s | Triton s | overhead s | overhead % |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, o in overheads.items():
        lines.append(f"| {name} | {o['size']} | {o['in_process_s']:.4f} | {o['triton_s']:.4f} | "
                     f"{o['overhead_s'] * 1000:.1f} ms | {o['overhead_pct']:.2f}% |")
    if perf is not None:
        lines += ["", "## perf_analyzer (tritonclient 2.50.0), demo networks, gRPC, batch 2", ""]
        if "unavailable" in perf:
            lines.append(f"Not run: {perf['unavailable']}")
        else:
            lines += [f"Latent {perf['latent']}x{perf['latent']}, measurement window {perf['interval_ms']} ms, at most 4 "
                      "windows, stable = last 3 within 100%; one perf_analyzer run per row; times per request "
                      "in ms (server figures from Triton's statistics); text_encoder token ids are zeros.", ""]
            lines += perf_analyzer.table(perf["rows"])
            if perf["errors"]:
                lines += ["", *(f"- {e}" for e in perf["errors"])]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full-size", action="store_true", help="also measure the SD 1.5 UNet's overhead at 256 px")
    parser.add_argument("--size", type=int, default=128, help="image side for the load test (default 128)")
    parser.add_argument("--steps", type=int, default=10, help="steps per load-test request (default 10)")
    parser.add_argument("--requests-per-client", type=int, default=2)
    parser.add_argument("--calls", type=int, default=10, help="UNet calls per contender (default 10)")
    parser.add_argument("--budget", type=float, default=300, help="seconds allowed per concurrency level")
    parser.add_argument("--perf-analyzer", action="store_true",
                        help="also profile the demo networks with NVIDIA perf_analyzer (installed once into "
                             "bench/.cache/venv-perf-analyzer); skipped with a note where it cannot run")
    parser.add_argument("--pa-interval", type=int, default=3000, help="perf_analyzer window in ms (default 3000)")
    parser.add_argument("--pa-budget", type=float, default=600, help="seconds allowed for all perf_analyzer runs")
    args = parser.parse_args(argv)

    overheads, perf = {}, None
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        _, tiny, _ = prepare(False)
        with start_server(tiny, Path(tmp)) as server:
            load_rows = load_test(server, args.size, args.steps, args.requests_per_client, args.budget)
            overheads["demo (tiny)"] = unet_overhead(server, tiny, 256, args.calls)
            if args.perf_analyzer:
                perf = perf_analyzer_profile(server, tiny, 256, args.pa_interval, args.pa_budget)
        if args.full_size:
            _, full, _ = prepare(True)
            with start_server(full, Path(tmp)) as server:
                overheads["SD 1.5 (full)"] = unet_overhead(server, full, 256, args.calls)
    meta = {"server": "2.51 (nvidia-pytriton 0.7.0)", "cpus": os.cpu_count(), "load_size": args.size,
            "load_steps": args.steps, "requests_per_client": args.requests_per_client}
    text = report(load_rows, overheads, meta, perf)
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "triton_serving.md").write_text(text + "\n")
    results = {"meta": meta, "load": load_rows, "unet": overheads, "perf_analyzer": perf}
    (RESULTS / "triton_serving.json").write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
