"""Serving from a real tritonserver (the binary bundled in nvidia-pytriton) on free loopback ports."""
from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from conftest import NEGATIVE_TOKEN, POSITIVE_TOKEN
from fashiongen.runtime.contracts import network_contract
from fashiongen.runtime.engines import EngineSet
from fashiongen.runtime.manifest import load_manifest
from fashiongen.runtime.txt2img import Txt2ImgPipeline, Txt2ImgRequest

pytest.importorskip("pytriton", reason="the serve extra is part of the test set-up")
pytest.importorskip("tritonclient.grpc")
pytestmark = pytest.mark.triton

from fashiongen.triton_repo import configs  # noqa: E402
from fashiongen.triton_repo.build import write_repository  # noqa: E402
from fashiongen.triton_repo.client import request_pipeline  # noqa: E402
from fashiongen.triton_repo.server import ServerOptions, TritonServer, free_port, port_is_free  # noqa: E402
from fashiongen.runtime.triton_engine import triton_factory  # noqa: E402

PROMPT = f"a {POSITIVE_TOKEN} black short sleeve crewneck crop top"
REQUEST = Txt2ImgRequest(prompt=PROMPT, negative_prompt=NEGATIVE_TOKEN, seed=19687, steps=4, scheduler="euler_a",
                         height=64, width=48)


def options(repo) -> ServerOptions:
    return ServerOptions(repo=repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
                         startup_timeout=120)


@pytest.fixture(scope="module")
def repo(sd_engines, p2p_engines, segmenter_engines, tmp_path_factory):
    out = tmp_path_factory.mktemp("triton") / "repo"
    write_repository([sd_engines, p2p_engines, segmenter_engines], out, max_batch_size=8, pipeline_instances=4,
                     max_steps=50)
    return out


@pytest.fixture(scope="module")
def server(repo):
    with TritonServer(options(repo)) as running:
        yield running


@pytest.fixture(scope="module")
def in_process(sd_engines):
    return Txt2ImgPipeline(EngineSet(sd_engines))


def grpc_url(server) -> str:
    return f"grpc://{server.grpc_url}"


def assert_same_image(a: np.ndarray, b: np.ndarray) -> None:
    assert a.shape == b.shape
    diff = np.abs(a.astype(int) - b.astype(int)).max()
    assert diff <= 1, f"max abs pixel difference {diff}/255 > 1/255"


# -- the repository -------------------------------------------------------------------------------
def test_configs_parse_back_to_the_contracts(repo, sd_engines):
    manifest = load_manifest(sd_engines)
    for name in manifest.networks:
        config = configs.parse((repo / name / "config.pbtxt").read_text())
        contract = network_contract(name, manifest.dims)
        assert config.name == name and config.backend == "python" and config.max_batch_size == 8
        assert [i.name for i in config.input] == [s.name for s in contract.inputs]
        assert [o.name for o in config.output] == [s.name for s in contract.outputs]
        assert config.HasField("dynamic_batching") and config.instance_group[0].count == 1
        for entry, spec in zip(config.input, contract.inputs):
            assert entry.data_type == configs.DATA_TYPES[spec.dtype]
            expected = [manifest.dims.get(d, -1) if isinstance(d, str) else d for d in spec.shape[1:]] or [1]
            assert list(entry.dims) == expected
        assert (repo / name / "1" / manifest.networks[name].file).is_file()
    unet = configs.parse((repo / "unet" / "config.pbtxt").read_text())
    timestep = next(i for i in unet.input if i.name == "timestep")
    assert list(timestep.dims) == [1] and timestep.HasField("reshape") and not timestep.reshape.shape
    pipeline = configs.parse((repo / "txt2img" / "config.pbtxt").read_text())
    assert pipeline.max_batch_size == 0 and pipeline.instance_group[0].count == 4
    optional = {i.name: i.optional for i in pipeline.input}
    assert optional["prompt"] is False and optional["seed"] is True
    limits = {k: v.string_value for k, v in pipeline.parameters.items() if k.startswith("max_")}
    assert limits == {"max_steps": "50", "max_side": "512", "max_images": "4"}


def test_gpu_targets(sd_engines, tmp_path):
    write_repository([sd_engines], tmp_path / "ort", target="onnxruntime")
    config = configs.parse((tmp_path / "ort" / "unet" / "config.pbtxt").read_text())
    assert config.platform == "onnxruntime_onnx" and config.default_model_filename == "unet.onnx"
    assert config.instance_group[0].kind == configs.mc.ModelInstanceGroup.KIND_GPU
    with pytest.raises(ValueError, match="no TensorRT plan 'text_encoder.plan'"):
        write_repository([sd_engines], tmp_path / "trt", target="tensorrt")
    assert not (tmp_path / "trt").exists()


# -- answers equal the in-process runtime -----------------------------------------------------------
@pytest.mark.parametrize("protocol, shm", [("grpc", True), ("http", False)])
def test_client_side_loop_matches_in_process(server, in_process, sd_engines, protocol, shm):
    url = f"grpc://{server.grpc_url}" if protocol == "grpc" else f"http://{server.http_url}"
    remote = Txt2ImgPipeline(EngineSet(sd_engines, triton_factory(url, "txt2img", shared_memory=shm)))
    assert_same_image(remote(REQUEST, progress=False).images, in_process(REQUEST, progress=False).images)


def test_server_side_pipeline_matches_in_process(server, in_process):
    out = request_pipeline(grpc_url(server), "txt2img", REQUEST)
    assert_same_image(out["image"], in_process(REQUEST, progress=False).images)
    assert out["mask"].shape == (1, 0, 0)


def test_cli_server_side(server, in_process, tmp_path, capsys):
    from PIL import Image

    from fashiongen.cli import main

    out = tmp_path / "remote.png"
    assert main(["generate", "--triton", grpc_url(server), "--server-side", "--prompt", PROMPT, "--negative-prompt",
                 NEGATIVE_TOKEN, "--seed", "19687", "--steps", "4", "--scheduler", "euler_a", "--height", "64",
                 "--width", "48", "--out", str(out)]) == 0
    assert_same_image(np.asarray(Image.open(out))[None], in_process(REQUEST, progress=False).images)


# -- load: step-level batching ----------------------------------------------------------------------
def test_concurrent_clients_all_answered_and_unet_batches(server, in_process):
    import tritonclient.grpc as grpcclient

    seeds = [11, 22, 33, 44]
    small = {s: Txt2ImgRequest(prompt=PROMPT, seed=s, steps=3, height=32, width=32) for s in seeds}
    expected = {s: in_process(r, progress=False).images for s, r in small.items()}
    clients, per_client = 16, 2
    deadline = time.monotonic() + 240

    def client(i: int) -> int:
        ok = 0
        for j in range(per_client):
            assert time.monotonic() < deadline, "load test ran out of time"
            seed = seeds[(i + j) % len(seeds)]
            assert_same_image(request_pipeline(grpc_url(server), "txt2img", small[seed], timeout_s=120)["image"],
                              expected[seed])
            ok += 1
        return ok

    with ThreadPoolExecutor(clients) as pool:
        answered = sum(pool.map(client, range(clients)))
    assert answered == clients * per_client
    stats = grpcclient.InferenceServerClient(server.grpc_url).get_inference_statistics("unet", as_json=True)
    batch_sizes = [int(b["batch_size"]) for b in stats["model_stats"][0].get("batch_stats", [])]
    assert max(batch_sizes) > 2, f"UNet calls never met in a batch: executed batch sizes {batch_sizes}"


# -- bad requests ---------------------------------------------------------------------------------
def _infer_error(url_kind, server, inputs: dict) -> tuple[str, str]:
    """Send raw inputs to txt2img; return (status, message) of the refusal."""
    import tritonclient.utils as tu

    module = __import__(f"tritonclient.{url_kind}", fromlist=["x"])
    client = module.InferenceServerClient(server.grpc_url if url_kind == "grpc" else server.http_url)
    entries = []
    for name, value in inputs.items():
        entry = module.InferInput(name, list(value.shape), tu.np_to_triton_dtype(value.dtype))
        entry.set_data_from_numpy(value)
        entries.append(entry)
    with pytest.raises(tu.InferenceServerException) as info:
        client.infer("txt2img", entries)
    return str(info.value.status()), info.value.message()


def _text(s: str) -> np.ndarray:
    return np.array([s.encode()], dtype=np.object_)


# Each kind of bad field a txt2img request can carry, with what the refusal must name.
BAD_FIELDS = [
    ({"prompt": _text("  ")}, "prompt"),
    ({"steps": np.array([0], np.int32)}, "steps"),
    ({"steps": np.array([51], np.int32)}, "steps must be at most 50"),
    ({"height": np.array([100], np.int32)}, "height"),
    ({"height": np.array([1024], np.int32)}, "height must be at most 512 pixels"),  # twice the native 256
    ({"num_images": np.array([5], np.int32)}, "num_images must be at most 4"),
    ({"scheduler": _text("turbo")}, "unknown 'turbo'"),
    ({"decoder": _text("tiny")}, "no tiny VAE"),     # this folder was exported without --tiny-vae
    ({"steps": np.array([2.0], np.float32)}, "steps"),  # wrong dtype: refused by Triton itself
    ({"seed": np.array([1, 2], np.uint64)}, "seed"),    # wrong shape
]


def _assert_refused(protocol, server, extra, field) -> None:
    status, message = _infer_error(protocol, server, {"prompt": _text(PROMPT), **extra})
    assert status in ("StatusCode.INVALID_ARGUMENT", "400"), (status, message)
    assert field in message


@pytest.mark.parametrize("protocol", ["grpc", "http"])
@pytest.mark.parametrize("extra, field", BAD_FIELDS)
def test_bad_request_is_refused_and_server_stays_up(server, in_process, protocol, extra, field):
    _assert_refused(protocol, server, extra, field)
    assert request_pipeline(grpc_url(server), "txt2img", REQUEST)["image"].shape == (1, 64, 48, 3)


def _rss_kib(pid: int) -> int:
    """VmRSS of process ``pid`` in KiB (0 once it is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    return next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)


def _session_rss_kib(pid: int) -> int:
    """VmRSS of ``pid`` and of every process in its session (tritonserver starts one of its own: that is the
    server and the python-backend stubs that run its models), in KiB."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == pid:  # the session id (the 6th field of stat; the 4th after the command name)
            total += _rss_kib(int(stat.parent.name))
    return total


@pytest.mark.slow
def test_soak_good_and_bad_requests_from_16_clients(server, in_process):
    """16 clients, 640 requests: every kind of bad field on both protocols interleaved with good requests.
    Every good one is answered with the in-process image, every bad one refused, all within a time bound (a
    few seconds here; 60 s leaves room for a loaded machine); and after a warm-up of the same mix the server's
    memory stays put: the tritonserver process grows by at most 16 MiB and it with its model stubs by at most
    64 MiB, so a leak of 25 KiB or 100 KiB a request (a latent, an output, a session) is caught."""
    seeds = [5, 6, 7]
    good = {s: Txt2ImgRequest(prompt=PROMPT, seed=s, steps=2, height=32, width=32) for s in seeds}
    expected = {s: in_process(r, progress=False).images for s, r in good.items()}
    bad = [(protocol, extra, field) for extra, field in BAD_FIELDS for protocol in ("grpc", "http")]
    clients, per_client = 16, 40

    def one(k: int, deadline: float) -> str:
        """Request ``k`` of the mix: every third a good one, the others each kind of bad one in turn."""
        assert time.monotonic() < deadline, "the soak ran out of time"
        if k % 3 == 0:
            seed = seeds[k // 3 % len(seeds)]
            out = request_pipeline(grpc_url(server), "txt2img", good[seed], timeout_s=60)
            assert_same_image(out["image"], expected[seed])
            return "good"
        protocol, extra, field = bad[(k - k // 3 - 1) % len(bad)]  # the bad requests before this one, in turn
        _assert_refused(protocol, server, extra, field)
        return "bad"

    def run(requests: int, seconds: float) -> list[str]:
        deadline = time.monotonic() + seconds
        with ThreadPoolExecutor(clients) as pool:
            return list(pool.map(lambda k: one(k, deadline), range(requests)))

    pid = server.process.pid
    run(2 * clients, 60)  # warm-up: every model instance has run and allocated its buffers
    before, before_all = _rss_kib(pid), _session_rss_kib(pid)
    started = time.monotonic()
    kinds = run(clients * per_client, 60)
    elapsed = time.monotonic() - started
    after, after_all = _rss_kib(pid), _session_rss_kib(pid)
    assert len(kinds) == 640 and kinds.count("good") == 214 and kinds.count("bad") == 426
    assert elapsed < 60, f"640 requests took {elapsed:.0f} s"
    assert before > 0 and after - before <= 16 * 1024, f"tritonserver RSS {before} -> {after} KiB"
    assert after_all - before_all <= 64 * 1024, f"server and stubs RSS {before_all} -> {after_all} KiB"


# -- edit and cutout on the server --------------------------------------------------------------------
def test_server_side_edit_with_cutout_matches_in_process(server, p2p_engines, segmenter_engines):
    from fashiongen.runtime.cutout import CutoutPipeline
    from fashiongen.runtime.pix2pix import Pix2PixPipeline, Pix2PixRequest

    image = np.random.default_rng(3).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    request = Pix2PixRequest(image=image, prompt="make it black", seed=7, steps=3, image_guidance=1.5)
    edited = Pix2PixPipeline(EngineSet(p2p_engines))(request, progress=False).images
    cutout = CutoutPipeline(EngineSet(segmenter_engines))
    classes = cutout.resolve_classes("0,4,5,6,7")  # background too: the random segmenter must cover something
    expected = cutout(list(edited), classes).results[0]
    out = request_pipeline(grpc_url(server), "edit", request, cutout="0,4,5,6,7")
    assert_same_image(out["image"], expected.image[None])
    assert ((out["mask"][0] == 255) == expected.mask).mean() >= 0.999


@pytest.mark.parametrize("server_side", [False, True])
def test_cli_edit_over_triton_matches_in_process(server, p2p_engines, tmp_path, server_side):
    """`edit --triton URL`: the loop here on the server's networks, or (--server-side) its edit model."""
    from PIL import Image

    from fashiongen.cli import main
    from fashiongen.runtime.pix2pix import Pix2PixPipeline, Pix2PixRequest

    image = np.random.default_rng(5).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    source, out = tmp_path / "in.png", tmp_path / "edited.png"
    Image.fromarray(image).save(source)
    request = Pix2PixRequest(image=image, prompt="make it black", seed=8, steps=3, scheduler="ddim")
    expected = Pix2PixPipeline(EngineSet(p2p_engines))(request, progress=False).images
    where = ["--server-side"] if server_side else ["--engines", str(p2p_engines)]
    assert main(["edit", *where, "--triton", grpc_url(server), "--image", str(source), "--prompt", "make it black",
                 "--seed", "8", "--steps", "3", "--scheduler", "ddim", "--out", str(out), "--no-progress"]) == 0
    assert_same_image(np.asarray(Image.open(out))[None], expected)


def test_server_side_cutout_and_its_errors(server, segmenter_engines):
    from fashiongen.runtime.cutout import CutoutPipeline
    from fashiongen.triton_repo.services import CutoutRequest

    image = np.random.default_rng(4).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    cutout = CutoutPipeline(EngineSet(segmenter_engines))
    results = {i: cutout([image], [i]).results[0] for i in cutout.id2label}
    present = [i for i, r in results.items() if not r.empty]
    absent = [i for i, r in results.items() if r.empty]
    label = cutout.id2label[present[0]]
    out = request_pipeline(grpc_url(server), "cutout", CutoutRequest(image=image, cutout=label))
    assert_same_image(out["image"], results[present[0]].image[None])
    assert ((out["mask"][0] == 255) == results[present[0]].mask).all()
    if absent:  # an empty cutout is refused, not answered with a white square
        with pytest.raises(ValueError, match="covers no pixel"):
            request_pipeline(grpc_url(server), "cutout", CutoutRequest(image=image, cutout=str(absent[0])))
    with pytest.raises(ValueError, match="unknown class 'Cape'.*Upper-clothes"):
        request_pipeline(grpc_url(server), "cutout", CutoutRequest(image=image, cutout="Cape"))
    tall = np.zeros((4097, 8, 3), np.uint8)  # the cutout alone bounds its input at 4096 pixels a side
    with pytest.raises(ValueError, match="image height must be at most 4096 pixels"):
        request_pipeline(grpc_url(server), "cutout", CutoutRequest(image=tall, cutout=label))


def test_server_side_txt2img_cutout_auto(server, in_process, segmenter_engines):
    from fashiongen.runtime.cutout import CutoutPipeline

    cutout = CutoutPipeline(EngineSet(segmenter_engines))
    raw = in_process(REQUEST, progress=False).images
    expected = cutout(list(raw), cutout.resolve_classes("auto", PROMPT)).results[0]
    if expected.empty:
        with pytest.raises(ValueError, match="covers no pixel"):
            request_pipeline(grpc_url(server), "txt2img", REQUEST, cutout="auto")
    else:
        out = request_pipeline(grpc_url(server), "txt2img", REQUEST, cutout="auto")
        assert_same_image(out["image"], expected.image[None])


def test_missing_prompt_is_refused(server):
    status, message = _infer_error("grpc", server, {"steps": np.array([2], np.int32)})
    assert status == "StatusCode.INVALID_ARGUMENT" and "prompt" in message


# -- failures -------------------------------------------------------------------------------------
def _failing_unet(path, channels: int, text_length: int, text_hidden: int) -> None:
    """A UNet stand-in that loads fine but fails at run time for any latent size but 8 x 8."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Reshape", ["sample", "fixed"], ["out_sample"])], "failing_unet",
        [helper.make_tensor_value_info("sample", TensorProto.FLOAT, ["b", channels, "h", "w"]),
         helper.make_tensor_value_info("timestep", TensorProto.FLOAT, ["b"]),
         helper.make_tensor_value_info("encoder_hidden_states", TensorProto.FLOAT, ["b", text_length, text_hidden])],
        [helper.make_tensor_value_info("out_sample", TensorProto.FLOAT, ["b", channels, "h", "w"])],
        [helper.make_tensor("fixed", TensorProto.INT64, [4], [2, channels, 8, 8])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_a_failing_network_returns_an_error_not_a_hang(sd_engines, tmp_path):
    engines = tmp_path / "engines"
    shutil.copytree(sd_engines, engines)
    dims = load_manifest(engines).dims
    (engines / "unet.onnx.data").unlink()
    _failing_unet(engines / "unet.onnx", dims["latent_channels"], dims["text_length"], dims["text_hidden"])
    write_repository([engines], tmp_path / "repo", pipeline_instances=1)
    with TritonServer(options(tmp_path / "repo")) as running:
        start = time.monotonic()
        with pytest.raises(ValueError, match="unet"):
            request_pipeline(f"grpc://{running.grpc_url}", "txt2img", REQUEST, timeout_s=60)
        assert time.monotonic() - start < 30


@pytest.mark.slow
def test_a_failing_pipeline_does_not_stall_the_others(sd_engines, p2p_engines, segmenter_engines, tmp_path):
    """One repository: ``txt2img`` on a UNet that raises at run time (after its text encoder has run), beside a
    working ``edit`` (its own engine folder) and ``cutout`` (the segmenter). Three clients hit txt2img while
    three others send edit and cutout requests: every txt2img request gets the UNet's error within a bound,
    every other one the in-process image, all while the failures keep coming; afterwards both still hold."""
    import threading

    from fashiongen.runtime.cutout import CutoutPipeline
    from fashiongen.runtime.pix2pix import Pix2PixPipeline, Pix2PixRequest
    from fashiongen.triton_repo.services import CutoutRequest

    engines = tmp_path / "engines"
    shutil.copytree(sd_engines, engines)
    dims = load_manifest(engines).dims
    (engines / "unet.onnx.data").unlink()
    _failing_unet(engines / "unet.onnx", dims["latent_channels"], dims["text_length"], dims["text_hidden"])
    write_repository([engines, p2p_engines, segmenter_engines], tmp_path / "repo", pipeline_instances=2,
                     max_steps=50)

    image = np.random.default_rng(6).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    edit = Pix2PixRequest(image=image, prompt="make it black", seed=9, steps=2, image_guidance=1.5)
    cutout = CutoutPipeline(EngineSet(segmenter_engines))
    results = {i: cutout([image], [i]).results[0] for i in cutout.id2label}
    label = next(i for i, r in results.items() if not r.empty)
    cut = CutoutRequest(image=image, cutout=str(label))
    expected = {"edit": Pix2PixPipeline(EngineSet(p2p_engines))(edit, progress=False).images,
                "cutout": results[label].image[None]}
    working = [("edit", edit), ("cutout", cut)]
    failing_clients, working_clients, per_working_client = 3, 3, 4
    bound = 30  # seconds any one request may take, answered or refused: a hang shows as a failure

    with TritonServer(options(tmp_path / "repo")) as running:
        url = f"grpc://{running.grpc_url}"
        deadline = time.monotonic() + 50  # for all the concurrent requests (a few seconds here)
        done = threading.Event()
        refused = []

        def fail_once() -> float:
            start = time.monotonic()
            with pytest.raises(ValueError, match="model 'unet' failed"):
                request_pipeline(url, "txt2img", REQUEST, timeout_s=bound)
            took = time.monotonic() - start
            assert took < bound, f"a refusal took {took:.0f} s"
            return took

        def failing(_: int) -> int:
            count = 0
            while not done.is_set():  # until every working request is answered
                assert time.monotonic() < deadline, "the failing pipeline's clients ran out of time"
                refused.append(fail_once())
                count += 1
            return count

        def answering(i: int) -> list[int]:
            while not refused:  # start once txt2img is failing
                assert time.monotonic() < deadline, "txt2img never refused a request"
                time.sleep(0.05)
            failures_seen = []
            for j in range(per_working_client):
                assert time.monotonic() < deadline, "the working pipelines' clients ran out of time"
                name, request = working[(i + j) % len(working)]
                out = request_pipeline(url, name, request, timeout_s=bound)
                assert_same_image(out["image"], expected[name])
                failures_seen.append(len(refused))
            return failures_seen

        with ThreadPoolExecutor(failing_clients + working_clients) as pool:
            failers = [pool.submit(failing, i) for i in range(failing_clients)]
            workers = [pool.submit(answering, i) for i in range(working_clients)]
            try:
                seen = [w.result() for w in workers]
            finally:
                done.set()
            counts = [f.result() for f in failers]
        # Refusals kept arriving while the working requests were answered, not only before or after them.
        during = max(s[-1] for s in seen) - min(s[0] for s in seen)
        assert all(c >= 1 for c in counts) and during >= failing_clients, (counts, seen)
        assert max(refused) < bound

        fail_once()  # afterwards: txt2img still refuses, the others still answer, the server is up
        for name, request in working:
            assert_same_image(request_pipeline(url, name, request, timeout_s=bound)["image"], expected[name])
        assert running.process.poll() is None


def _serve(repo, *extra) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fashiongen", "serve", "--repo", str(repo), "--startup-timeout", "60",
                           "--http-port", str(free_port()), "--grpc-port", str(free_port()),
                           "--metrics-port", str(free_port()), *extra],
                          capture_output=True, text=True, timeout=120)


def test_serve_on_a_port_in_use_exits_nonzero(repo):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = _serve(repo, "--http-port", str(taken.getsockname()[1]))
    assert result.returncode != 0
    assert "--http-port" in result.stderr and "already in use" in result.stderr


def test_serve_with_a_broken_model_exits_nonzero(repo, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(repo, broken)
    (broken / "vae_decoder" / "1" / "vae_decoder.onnx").write_bytes(b"not an onnx file")
    result = _serve(broken)
    assert result.returncode != 0
    assert "vae_decoder" in result.stderr


def test_serve_stops_cleanly_on_sigterm(segmenter_engines, tmp_path):
    """`fashiongen serve` waits until ready, says where, and on SIGTERM stops the server and exits 0."""
    import signal

    repo = tmp_path / "repo"
    write_repository([segmenter_engines], repo, pipeline_instances=1)
    http = free_port()
    process = subprocess.Popen([sys.executable, "-m", "fashiongen", "serve", "--repo", str(repo), "--http-port",
                                str(http), "--grpc-port", str(free_port()), "--metrics-port", str(free_port())],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready = process.stdout.readline()  # blocks until the server is ready (or serve gave up)
        assert "tritonserver ready" in ready and f"127.0.0.1:{http}" in ready
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    assert "tritonserver stopped" in out
    assert port_is_free("127.0.0.1", http), "the server is gone and its port free again"
