"""Triton commands: ``triton-repo`` (write a model repository), ``serve`` (run tritonserver on it), and the
``generate|edit --triton URL [--server-side]`` options that send the work to a running server."""
from __future__ import annotations

from pathlib import Path

from fashiongen.runtime.denoise import MAX_STEPS
from fashiongen.runtime.errors import InputError


def register(sub) -> None:
    p = sub.add_parser("triton-repo", help="write a Triton model repository from engine folders",
                       description="One Triton model per exported network (config.pbtxt generated from the "
                       "networks' I/O contracts, model files hard-linked into version folder 1/), plus the "
                       "server-side pipeline models (txt2img). Target cpu serves each network as a python-backend "
                       "model running ONNX Runtime (the CPU server has no onnxruntime backend); onnxruntime and "
                       "tensorrt write platform configs for the GPU Triton container.")
    p.add_argument("--engines", required=True, type=Path, action="append",
                   help="engine folder from `fashiongen export` (repeatable: e.g. a txt2img and a pix2pix folder)")
    p.add_argument("--out", required=True, type=Path, help="repository folder to write (replaced if it is one)")
    p.add_argument("--target", default="cpu", help="cpu (default), onnxruntime or tensorrt")
    p.add_argument("--max-batch-size", type=int, default=8,
                   help="largest batch a network's dynamic batcher forms (default 8: four guided UNet calls)")
    p.add_argument("--instances", type=int, default=1, help="instances per network model (default 1)")
    p.add_argument("--pipeline-instances", type=int, default=4,
                   help="concurrent server-side pipelines per pipeline model (default 4)")
    p.add_argument("--max-steps", type=int, default=MAX_STEPS,
                   help=f"largest `steps` a pipeline request may ask (default {MAX_STEPS}, as in-process)")
    p.add_argument("--max-side", type=int, default=None,
                   help="largest height or width (pixels) of a pipeline request's image (default: twice the "
                        "checkpoint's native side, 1024 for SD 1.5; 4096 for the input of cutout alone)")
    p.add_argument("--max-images", type=int, default=4, help="largest num_images of one request (default 4)")
    p.set_defaults(run=_run_triton_repo)

    p = sub.add_parser("serve", help="run the bundled tritonserver on a model repository",
                       description="Start the tritonserver binary bundled in nvidia-pytriton (python backend) on a "
                       "repository written by `fashiongen triton-repo`; bind 127.0.0.1 by default, wait until every "
                       "model is ready, stop cleanly on Ctrl-C / SIGTERM. Exits non-zero when a port is taken or a "
                       "model fails to load.")
    p.add_argument("--repo", required=True, type=Path, help="model repository folder")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--http-port", type=int, default=8000, help="HTTP port (default 8000)")
    p.add_argument("--grpc-port", type=int, default=8001, help="gRPC port (default 8001)")
    p.add_argument("--metrics-port", type=int, default=8002, help="metrics port (default 8002)")
    p.add_argument("--startup-timeout", type=float, default=180.0, help="seconds to wait for readiness (default 180)")
    p.set_defaults(run=_run_serve)


def _run_triton_repo(args) -> int:
    from fashiongen.triton_repo.build import write_repository

    models = write_repository(args.engines, args.out, args.target, args.max_batch_size, args.instances,
                              args.pipeline_instances, args.max_steps, args.max_side, args.max_images)
    print(f"wrote {args.out}: {', '.join(models)} (target {args.target})")
    return 0


def _run_serve(args) -> int:
    from fashiongen.triton_repo.server import ServerOptions, serve_forever

    return serve_forever(ServerOptions(repo=args.repo, host=args.host, http_port=args.http_port,
                                       grpc_port=args.grpc_port, metrics_port=args.metrics_port,
                                       startup_timeout=args.startup_timeout))


def add_triton_arguments(p, service: str) -> None:
    """``--triton``, ``--server-side`` and ``--no-shm`` for a command whose server-side model is ``service``."""
    p.add_argument("--triton", default=None, metavar="URL",
                   help="run the networks on a Triton server (grpc://HOST:PORT or http://HOST:PORT); the loop stays "
                   "here and --engines still provides the tokenizer and manifest")
    p.add_argument("--server-side", action="store_true",
                   help=f"with --triton: one request to the server's {service} pipeline model (no --engines needed)")
    p.add_argument("--no-shm", action="store_true", help="with --triton: no system shared memory for tensors")


def engine_factory(args, kind: str):
    """The backend for ``generate``: ONNX Runtime or OpenVINO in-process (``--backend``), or the Triton
    server's network models (``--triton``)."""
    from fashiongen.runtime.engines import backend_factory

    backend = getattr(args, "backend", "ort")
    if args.triton:
        if backend != "ort":
            raise InputError(f"--backend {backend} runs in-process; drop it with --triton")
        from fashiongen.runtime.triton_engine import triton_factory
        return triton_factory(args.triton, kind, shared_memory=not args.no_shm, arg="--triton")
    if backend == "openvino":
        return backend_factory("openvino", args.threads)
    return backend_factory("ort", args.threads, args.providers.split(","))


def request_server_side(args, service: str, request):
    """One request to the server's ``service`` model (with its cutout when asked); N x H x W x 3 uint8 images."""
    from fashiongen.runtime.triton_engine import require_server
    from fashiongen.triton_repo.client import request_pipeline

    if not args.triton:
        raise InputError("--server-side needs --triton URL")
    local_only = [flag for flag, value in (("--keep-raw", args.keep_raw), ("--transparent", args.transparent),
                                           ("--feather", args.feather), ("--frame", args.frame),
                                           ("--mask-out", args.mask_out), ("--min-area", args.min_area is not None))
                  if value]
    if local_only:
        raise InputError(f"{local_only[0]} is not available with --server-side (the server returns the shot on white)")
    require_server(args.triton, "--triton")
    return request_pipeline(args.triton, service, request, cutout=args.cutout)["image"]
