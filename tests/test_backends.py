"""Every CPU backend and every fast mode runs the same pipeline code; the exact mode keeps diffusers parity.

- ONNX Runtime (tuned session, optimized graph saved at export, or on first load) and OpenVINO (f32 hint) each match
  diffusers within the text → image parity bound (test_txt2img_parity's helpers and tolerance).
- ``--fast int8`` (NNCF INT8 UNet, calibrated on recorded trajectories) produces an image through the same
  ``Txt2ImgPipeline``; asked for on a backend that cannot run it, it fails with a message naming the fix.
"""
from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
from PIL import Image

from fashiongen.runtime.engines import EngineSet, backend_factory
from fashiongen.runtime.errors import InputError
from fashiongen.runtime.txt2img import Txt2ImgPipeline, Txt2ImgRequest
from conftest import OPENVINO_MARKS, needs_openvino
from test_txt2img_parity import HEIGHT, NEGATIVE, PROMPT, SEED, STEPS, WIDTH, assert_close_images, reference_images

BACKENDS = ["ort", pytest.param("openvino", marks=OPENVINO_MARKS)]


def request(scheduler: str | None = None, steps: int = STEPS) -> Txt2ImgRequest:
    return Txt2ImgRequest(prompt=PROMPT, negative_prompt=NEGATIVE, seed=SEED, steps=steps, guidance=7.5,
                          scheduler=scheduler, height=HEIGHT, width=WIDTH)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scheduler", ["pndm", "euler_a", "dpmpp_2m"])
def test_backend_matches_diffusers(sd_engines, diffusers_pipe, backend, scheduler):
    pipeline = Txt2ImgPipeline(EngineSet(sd_engines, backend_factory(backend)))
    assert pipeline.engines["unet"].backend == backend
    images = pipeline(request(scheduler), progress=False).images
    assert_close_images(images, reference_images(diffusers_pipe, scheduler))


def test_ort_optimized_graph_is_cached_and_equal(sd_engines, tmp_path):
    """The first load saves the optimized graph under cache/ort; a second load reads it, same numbers."""
    folder = tmp_path / "engines"
    shutil.copytree(sd_engines, folder, ignore=shutil.ignore_patterns("cache"))
    first = Txt2ImgPipeline(EngineSet(folder, backend_factory("ort")))(request(steps=2), progress=False).images
    saved = sorted(p.name for p in (folder / "cache" / "ort").iterdir())
    assert any(name.startswith("unet.") for name in saved) and not any(n.startswith(".") for n in saved)
    again = Txt2ImgPipeline(EngineSet(folder, backend_factory("ort")))(request(steps=2), progress=False).images
    assert np.array_equal(first, again)


def test_export_saves_the_optimized_graphs(sd_checkpoint, tmp_path, monkeypatch):
    """Export validates through the runtime's engine, which leaves each network's optimized graph in cache/ort:
    the first load after export reads it and optimizes nothing again."""
    import fashiongen.runtime.engines as engines_module
    from fashiongen.export.sd_export import export_pipeline
    from fashiongen.runtime.contracts import CONTRACTS
    from fashiongen.runtime.manifest import load_manifest

    folder = tmp_path / "engines"
    export_pipeline(sd_checkpoint, folder, [], progress=False)
    manifest = load_manifest(folder)
    saved = [p.name for p in (folder / "cache" / "ort").iterdir()]
    for name in manifest.networks:
        assert any(n.startswith(f"{name}.") for n in saved), f"export left no optimized graph for {name}: {saved}"
    monkeypatch.setattr(engines_module, "_create_and_save", lambda *a, **k: pytest.fail("graph optimized again"))
    for name, entry in manifest.networks.items():
        engine = engines_module.OrtEngine(folder / entry.file, CONTRACTS[name], manifest.dims)
        assert all(np.isfinite(v).all() for v in engine.run(engine.contract.warmup_feeds(engine.dims)).values())


def test_ort_without_cache_or_arena_gives_the_same_image(sd_engines):
    tuned = Txt2ImgPipeline(EngineSet(sd_engines, backend_factory("ort")))(request(steps=2), progress=False)
    plain = Txt2ImgPipeline(EngineSet(sd_engines, backend_factory("ort", cache=False, arena=False)))(
        request(steps=2), progress=False)
    assert np.array_equal(tuned.images, plain.images)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("folder", ["sd_engines", "p2p_engines", "segmenter_engines"])
def test_every_network_accepts_its_warmup_call(folder, backend, request):
    """Engines warm up at load with one tiny call, and skip it silently if refused: check that none is."""
    engine_dir = request.getfixturevalue(folder)
    engines = EngineSet(engine_dir, backend_factory(backend, warmup=False))
    for name in engines.manifest.networks:
        engine = engines[name]
        outputs = engine.run(engine.contract.warmup_feeds(engine.dims))
        assert all(np.isfinite(v).all() for v in outputs.values()), name


def test_release_all_drops_every_session_and_reopens_on_use(sd_engines):
    engines = EngineSet(sd_engines)
    first = engines["vae_decoder"]
    engines["text_encoder"]  # noqa: B018 (open it)
    engines.release_all()
    assert engines["vae_decoder"] is not first  # a fresh session, opened again on use


def test_wrap_serves_the_wrapper_in_place_of_the_network(sd_engines):
    class Counting:
        def __init__(self, engine):
            self.engine, self.contract, self.calls = engine, engine.contract, 0

        def run(self, feeds):
            self.calls += 1
            return self.engine.run(feeds)

    engines = EngineSet(sd_engines)
    counting = engines.wrap("vae_decoder", Counting)
    assert engines["vae_decoder"] is counting and engines.open_networks == {"vae_decoder"}
    Txt2ImgPipeline(engines)(request(steps=2), progress=False)
    assert counting.calls == 1


def test_unknown_backend_is_a_clear_error():
    with pytest.raises(InputError, match="backend: must be one of ort, openvino"):
        backend_factory("tensorflow")


# -- the int8 fast mode ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def int8_engines(sd_engines, tmp_path_factory):
    """A copy of the tiny engine folder with an INT8 UNet written by `fashiongen quantize`."""
    from fashiongen.cli import main

    folder = tmp_path_factory.mktemp("int8") / "engines"
    shutil.copytree(sd_engines, folder, ignore=shutil.ignore_patterns("cache"))
    assert main(["quantize", "--engines", str(folder), "--prompts", "2", "--steps", "4", "--size", "64"]) == 0
    return folder


@needs_openvino
def test_quantize_writes_the_variants_into_the_manifest(int8_engines):
    from fashiongen.runtime.manifest import load_manifest

    variants = load_manifest(int8_engines).variants["int8"].networks
    assert sorted(variants) == ["unet", "vae_decoder"]  # no DeepCache parts in this folder
    for entry in variants.values():
        assert entry["backend"] == "openvino" and (int8_engines / entry["file"]).is_file()
        assert (int8_engines / entry["file"]).with_suffix(".bin").is_file()
        assert "nncf" in entry["quantizer"]
    assert variants["unet"]["calibration"]["calls"] == 2 * (4 + 1)  # PNDM: one extra warm-up call per generation
    assert variants["vae_decoder"]["calibration"]["calls"] == 2  # one decode per generation


@needs_openvino
def test_int8_warns_on_a_cpu_without_int8_dot_products(int8_engines, monkeypatch):
    import warnings

    import fashiongen.runtime.cpu as cpu_module
    from fashiongen.runtime.fastmodes import variant_files
    from fashiongen.runtime.manifest import load_manifest

    manifest = load_manifest(int8_engines)
    monkeypatch.setattr(cpu_module, "cpu_flags", lambda: "x86_64flags\t: fpu sse avx avx2 fma")
    with pytest.warns(UserWarning, match="no INT8 dot-product instructions"):
        variant_files(manifest, "openvino", "int8")
    for flags in ("x86_64flags\t: avx2 avx512f avx512_vnni", "x86_64flags\t: avx2 avx_vnni", "aarch64Features\t: asimd"):
        monkeypatch.setattr(cpu_module, "cpu_flags", lambda flags=flags: flags)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            variant_files(manifest, "openvino", "int8")


@needs_openvino
def test_openvino_warms_up_int8_networks_only(int8_engines, monkeypatch):
    """OpenVINO's f32 kernels pack weights per shape (a tiny warm-up call would pack layouts no real call uses);
    its INT8 ones pack once: only those are warmed up at load."""
    import fashiongen.runtime.openvino_engine as ov_engine
    from fashiongen.runtime.fastmodes import variant_files
    from fashiongen.runtime.manifest import load_manifest

    calls = []
    monkeypatch.setattr(ov_engine, "warm_up", lambda engine: calls.append(engine.contract.name))
    manifest = load_manifest(int8_engines)
    exact = EngineSet(int8_engines, backend_factory("openvino", cache=False), manifest)
    fast = EngineSet(int8_engines, backend_factory("openvino", cache=False), manifest,
                     files=variant_files(manifest, "openvino", "int8"))
    assert not ov_engine.runs_quantized(exact["unet"].compiled) and calls == []
    assert ov_engine.runs_quantized(fast["unet"].compiled) and calls == ["unet"]


def test_calibration_generates_the_given_prompts(sd_engines, monkeypatch):
    """--calibration-prompts: the calibration generations are the file's prompts (cycled to --prompts), not
    the built-in ones; one each by default."""
    from fashiongen.export import quantize
    from fashiongen.runtime import txt2img

    seen = []
    monkeypatch.setattr(txt2img.Txt2ImgPipeline, "__call__", lambda self, request, progress: seen.append(request))
    factory = backend_factory("ort")
    quantize.record_feeds(sd_engines, factory, 3, 2, 64, texts=["red tee", "navy skirt"])
    assert [r.prompt for r in seen] == ["red tee", "navy skirt", "red tee"]
    seen.clear()
    quantize.record_feeds(sd_engines, factory, 2, 2, 64)
    assert [r.prompt for r in seen] == quantize.CALIBRATION_PROMPTS[:2]  # the tiny folder knows <midjourney-style>


@pytest.mark.parametrize("content, message", [
    (None, "--calibration-prompts: cannot read"),
    ("\n  \n", "--calibration-prompts: .* has no prompts"),
])
def test_calibration_prompts_file_errors_are_one_line(sd_engines, tmp_path, content, message, capsys):
    from fashiongen.cli import main

    path = tmp_path / "prompts.txt"
    if content is not None:
        path.write_text(content)
    code = main(["quantize", "--engines", str(sd_engines), "--calibration-prompts", str(path)])
    err = capsys.readouterr().err
    assert code == 2 and re.search(message, err) and err.count("\n") == 1, err


@pytest.mark.parametrize("networks, message", [
    ("unet,text_encoder", "'text_encoder' cannot be quantized; choose from unet, unet_capture, unet_shallow, "
                          "vae_decoder"),
    ("unet_capture", "has no unet_capture (add it with `fashiongen deepcache`)"),
])
def test_quantize_refuses_networks_it_cannot_do(sd_engines, networks, message, capsys):
    from fashiongen.cli import main

    code = main(["quantize", "--engines", str(sd_engines), "--networks", networks])
    err = capsys.readouterr().err
    assert code == 2 and "--networks" in err and message in err, err


@needs_openvino
def test_int8_runs_through_the_same_pipeline(int8_engines):
    from fashiongen.runtime.fastmodes import variant_files
    from fashiongen.runtime.manifest import load_manifest

    manifest = load_manifest(int8_engines)
    exact = Txt2ImgPipeline(EngineSet(int8_engines, backend_factory("openvino")))(request(), progress=False).images
    engines = EngineSet(int8_engines, backend_factory("openvino"), files=variant_files(manifest, "openvino", "int8"))
    fast = Txt2ImgPipeline(engines)(request(), progress=False).images
    assert fast.shape == exact.shape and fast.dtype == np.uint8
    assert engines._files["unet"] == "unet.int8.xml" and engines._files["vae_decoder"] == "vae_decoder.int8.xml"
    # Tiny random weights are a harsh case for INT8; it must still be a near copy, not noise.
    assert psnr(fast, exact) > 20, psnr(fast, exact)
    assert not np.array_equal(fast, exact), "the INT8 UNet was not used"


@needs_openvino
def test_cli_generate_fast_int8(int8_engines, tmp_path, capsys):
    from fashiongen.cli import main

    out = tmp_path / "fast.png"
    code = main(["generate", "--engines", str(int8_engines), "--prompt", PROMPT, "--seed", str(SEED), "--steps", "3",
                 "--height", "64", "--width", "64", "--backend", "openvino", "--fast", "int8", "--out", str(out),
                 "--no-progress"])
    assert code == 0 and np.asarray(Image.open(out)).shape == (64, 64, 3)


@needs_openvino
def test_fast_mode_on_a_backend_that_cannot_run_it(int8_engines, tmp_path, capsys):
    from fashiongen.cli import main

    code = main(["generate", "--engines", str(int8_engines), "--prompt", "a top", "--steps", "2", "--fast", "int8",
                 "--backend", "ort", "--out", str(tmp_path / "x.png"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "--fast: int8 is not available on backend ort" in err and "backend openvino" in err
    assert not (tmp_path / "x.png").exists()


def test_fast_mode_missing_from_the_folder(sd_engines, tmp_path, capsys):
    from fashiongen.cli import main

    code = main(["generate", "--engines", str(sd_engines), "--prompt", "a top", "--steps", "2", "--fast", "int8",
                 "--backend", "openvino", "--out", str(tmp_path / "x.png"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "has no int8 networks" in err and "fashiongen quantize" in err


def test_unknown_fast_mode(sd_engines, tmp_path, capsys):
    from fashiongen.cli import main

    code = main(["generate", "--engines", str(sd_engines), "--prompt", "a top", "--fast", "int4",
                 "--out", str(tmp_path / "x.png"), "--no-progress"])
    assert code == 2 and "--fast: must be one or more of deepcache, int8" in capsys.readouterr().err


@needs_openvino
def test_cli_generate_openvino_matches_diffusers(sd_engines, diffusers_pipe, tmp_path):
    from fashiongen.cli import main

    out = tmp_path / "ov.png"
    code = main(["generate", "--engines", str(sd_engines), "--prompt", PROMPT, "--negative-prompt", NEGATIVE,
                 "--seed", str(SEED), "--steps", str(STEPS), "--scheduler", "ddim", "--height", str(HEIGHT),
                 "--width", str(WIDTH), "--backend", "openvino", "--out", str(out), "--no-progress"])
    assert code == 0
    assert_close_images(np.asarray(Image.open(out))[None], reference_images(diffusers_pipe, "ddim"))


# -- the deepcache fast mode ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def deepcache_engines(sd_checkpoint, sd_engines, tmp_path_factory):
    """A copy of the tiny engine folder with the DeepCache UNet parts written by `fashiongen deepcache`."""
    from fashiongen.cli import main

    folder = tmp_path_factory.mktemp("deepcache") / "engines"
    shutil.copytree(sd_engines, folder, ignore=shutil.ignore_patterns("cache"))
    assert main(["deepcache", "--model", str(sd_checkpoint), "--engines", str(folder), "--interval", "3"]) == 0
    return folder


def test_deepcache_parts_are_exact_splits(deepcache_engines):
    from fashiongen.runtime.manifest import load_manifest

    manifest = load_manifest(deepcache_engines)
    assert manifest.variants["deepcache"].settings["split_max_abs_diff"] <= 1e-4
    for name in ("unet_capture", "unet_shallow"):
        assert manifest.networks[name].validation["max_abs_diff"] <= 1e-4
    assert manifest.dims["deep_channels"] > 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_deepcache_runs_through_the_same_pipeline(deepcache_engines, backend):
    from fashiongen.runtime.fastmodes import deepcache_interval, variant_files
    from fashiongen.runtime.manifest import load_manifest

    manifest = load_manifest(deepcache_engines)
    exact = Txt2ImgPipeline(EngineSet(deepcache_engines, backend_factory(backend)))(request(), progress=False).images
    engines = EngineSet(deepcache_engines, backend_factory(backend), files=variant_files(manifest, backend, "deepcache"))
    pipeline = Txt2ImgPipeline(engines, deepcache=deepcache_interval(manifest, "deepcache"))
    result = pipeline(request(), progress=False)
    assert "unet" not in engines.open_networks and "unet_shallow" in engines.open_networks  # the whole UNet is not even loaded
    assert result.images.shape == exact.shape
    assert psnr(result.images, exact) > 20, psnr(result.images, exact)
    assert not np.array_equal(result.images, exact), "the shallow steps were not taken"


def test_deepcache_with_more_shallow_layers(sd_checkpoint, deepcache_engines, tmp_path):
    """A deeper split (the tiny UNet's up blocks have 2 layers: recompute both, not the default 1): still an
    exact split, and the pipeline takes it without a change."""
    from fashiongen.cli import main
    from fashiongen.runtime.fastmodes import deepcache_interval, variant_files
    from fashiongen.runtime.manifest import load_manifest

    folder = tmp_path / "engines"
    shutil.copytree(deepcache_engines, folder, ignore=shutil.ignore_patterns("cache"))
    assert main(["deepcache", "--model", str(sd_checkpoint), "--engines", str(folder), "--shallow-layers", "2"]) == 0
    manifest = load_manifest(folder)
    entry = manifest.variants["deepcache"].settings
    assert entry["shallow_layers"] == 2 and entry["of_layers"] == 2 and entry["split_max_abs_diff"] <= 1e-4
    exact = Txt2ImgPipeline(EngineSet(folder))(request(), progress=False).images
    engines = EngineSet(folder, files=variant_files(manifest, "ort", "deepcache"))
    images = Txt2ImgPipeline(engines, deepcache=deepcache_interval(manifest, "deepcache"))(request(),
                                                                                         progress=False).images
    assert psnr(images, exact) > 20 and not np.array_equal(images, exact)
    # cached before the whole block rather than after its first layer: the second block's channels
    assert manifest.dims["deep_channels"] > load_manifest(deepcache_engines).dims["deep_channels"]


@pytest.mark.parametrize("layers", ["0", "3"])
def test_deepcache_shallow_layers_out_of_range(sd_checkpoint, deepcache_engines, tmp_path, layers, capsys):
    from fashiongen.cli import main

    code = main(["deepcache", "--model", str(sd_checkpoint), "--engines", str(deepcache_engines),
                 "--shallow-layers", layers])
    assert code == 2 and "--shallow-layers must be an integer from 1 to 2" in capsys.readouterr().err


@pytest.mark.parametrize("layers, backend", [("1", "ort"), pytest.param("2", "openvino", marks=OPENVINO_MARKS)])
def test_deepcache_on_a_unet_whose_finest_level_has_no_attention(tmp_path, layers, backend):
    """A UNet for a fine latent grid (``SDSize.unet_attention``: the finest level plain): its shallow path runs
    plain resnets, and the split is as exact as SD's."""
    from fashiongen.cli import main
    from fashiongen.export.sd_export import export_pipeline
    from fashiongen.random_checkpoints.sd import SDSize, write_sd_checkpoint
    from fashiongen.runtime.fastmodes import deepcache_interval, variant_files
    from fashiongen.runtime.manifest import load_manifest

    size = SDSize(unet_channels=(32, 32, 64), unet_attention=(False, True, False), vae_channels=(32, 32, 32))
    checkpoint = write_sd_checkpoint(tmp_path / "plain-top", size, seed=0)
    folder = tmp_path / "engines"
    export_pipeline(checkpoint, folder, progress=False)
    assert main(["deepcache", "--model", str(checkpoint), "--engines", str(folder), "--shallow-layers", layers]) == 0
    manifest = load_manifest(folder)
    assert manifest.variants["deepcache"].settings["split_max_abs_diff"] <= 1e-4
    engines = EngineSet(folder, backend_factory(backend), files=variant_files(manifest, backend, "deepcache"))
    images = Txt2ImgPipeline(engines, deepcache=deepcache_interval(manifest, "deepcache"))(request(),
                                                                                         progress=False).images
    exact = Txt2ImgPipeline(EngineSet(folder))(request(), progress=False).images
    assert psnr(images, exact) > 20 and not np.array_equal(images, exact)


def test_deepcache_interval_reaching_every_step_is_the_exact_image(deepcache_engines):
    """With the whole UNet at every call (interval 1), the capture part alone must give the exact image."""
    exact = Txt2ImgPipeline(EngineSet(deepcache_engines))(request(), progress=False).images
    every = Txt2ImgPipeline(EngineSet(deepcache_engines), deepcache=1)(request(), progress=False).images
    assert np.abs(exact.astype(int) - every.astype(int)).max() <= 1


def test_cli_generate_fast_deepcache(deepcache_engines, tmp_path):
    from fashiongen.cli import main

    out = tmp_path / "dc.png"
    code = main(["generate", "--engines", str(deepcache_engines), "--prompt", PROMPT, "--steps", "6", "--height", "64",
                 "--width", "64", "--fast", "deepcache", "--out", str(out), "--no-progress"])
    assert code == 0 and np.asarray(Image.open(out)).shape == (64, 64, 3)


def test_deepcache_interval_override(deepcache_engines, tmp_path, capsys):
    """--deepcache-interval runs any interval on the same parts; it needs the deepcache mode and an N >= 2."""
    from fashiongen.cli import main
    from fashiongen.runtime.fastmodes import deepcache_interval
    from fashiongen.runtime.manifest import load_manifest

    manifest = load_manifest(deepcache_engines)
    assert deepcache_interval(manifest, "deepcache", 5) == 5
    assert deepcache_interval(manifest, "deepcache") == manifest.variants["deepcache"].settings["interval"]
    base = ["generate", "--engines", str(deepcache_engines), "--prompt", PROMPT, "--steps", "6", "--height", "64",
            "--width", "64", "--out", str(tmp_path / "dc.png"), "--no-progress"]
    assert main(base + ["--fast", "deepcache", "--deepcache-interval", "5"]) == 0
    assert (tmp_path / "dc.png").is_file()
    assert main(base + ["--deepcache-interval", "5"]) == 2
    assert "--deepcache-interval: needs the deepcache fast mode" in capsys.readouterr().err
    assert main(base + ["--fast", "deepcache", "--deepcache-interval", "1"]) == 2
    assert "--deepcache-interval: must be an integer >= 2 (got 1)" in capsys.readouterr().err


def test_deepcache_missing_from_the_folder(sd_engines, tmp_path, capsys):
    from fashiongen.cli import main

    code = main(["generate", "--engines", str(sd_engines), "--prompt", "a top", "--fast", "deepcache",
                 "--out", str(tmp_path / "x.png"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "has no deepcache networks" in err and "fashiongen deepcache" in err


# -- deepcache and int8 together ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def deepcache_int8_engines(deepcache_engines, tmp_path_factory):
    """The DeepCache folder with its two parts and VAE decoder quantized (`quantize --networks ...`)."""
    from fashiongen.cli import main

    folder = tmp_path_factory.mktemp("deepcache-int8") / "engines"
    shutil.copytree(deepcache_engines, folder, ignore=shutil.ignore_patterns("cache"))
    assert main(["quantize", "--engines", str(folder), "--networks", "unet_capture,unet_shallow,vae_decoder", "--prompts", "2",
                 "--steps", "4", "--size", "64"]) == 0
    return folder


@needs_openvino
def test_deepcache_and_int8_combine(deepcache_int8_engines):
    from fashiongen.runtime.fastmodes import deepcache_interval, variant_files
    from fashiongen.runtime.manifest import load_manifest

    manifest = load_manifest(deepcache_int8_engines)
    files = variant_files(manifest, "openvino", "int8,deepcache")
    assert files == {"unet_capture": "unet_capture.int8.xml", "unet_shallow": "unet_shallow.int8.xml",
                     "vae_decoder": "vae_decoder.int8.xml"}
    calibration = manifest.variants["int8"].networks["unet_shallow"]["calibration"]
    assert calibration["calls"] == 2 * 3 and "DeepCache on" in calibration["source"]  # 5 calls, every 3rd whole
    exact = Txt2ImgPipeline(EngineSet(deepcache_int8_engines, backend_factory("openvino")))(request(),
                                                                                            progress=False).images
    deepcache_only = Txt2ImgPipeline(
        EngineSet(deepcache_int8_engines, backend_factory("openvino"),
                  files=variant_files(manifest, "openvino", "deepcache")),
        deepcache=deepcache_interval(manifest, "deepcache"))(request(), progress=False).images
    engines = EngineSet(deepcache_int8_engines, backend_factory("openvino"), files=files)
    both = Txt2ImgPipeline(engines, deepcache=deepcache_interval(manifest, "int8,deepcache"))(request(),
                                                                                           progress=False).images
    assert "unet" not in engines.open_networks and {"unet_capture", "unet_shallow"} <= engines.open_networks
    assert psnr(both, exact) > 20, psnr(both, exact)
    assert not np.array_equal(both, deepcache_only), "the INT8 DeepCache parts and VAE decoder were not used"


@needs_openvino
def test_cli_generate_fast_deepcache_int8(deepcache_int8_engines, tmp_path):
    from fashiongen.cli import main

    out = tmp_path / "both.png"
    code = main(["generate", "--engines", str(deepcache_int8_engines), "--prompt", PROMPT, "--steps", "4",
                 "--height", "64", "--width", "64", "--backend", "openvino", "--fast", "deepcache,int8",
                 "--out", str(out), "--no-progress"])
    assert code == 0 and np.asarray(Image.open(out)).shape == (64, 64, 3)


@needs_openvino
def test_deepcache_int8_needs_an_int8_capture_part(deepcache_engines, int8_engines):
    """A folder quantized before its DeepCache parts were added has no INT8 capture part: say how to fix it."""
    from fashiongen.runtime.fastmodes import variant_files
    from fashiongen.runtime.manifest import Variant, load_manifest

    manifest = load_manifest(deepcache_engines)
    manifest.variants["int8"] = load_manifest(int8_engines).variants["int8"]  # unet and vae_decoder only
    with pytest.raises(InputError, match=r"no INT8 unet_capture and unet_shallow; .* --networks unet_capture,unet_shallow"):
        variant_files(manifest, "openvino", "deepcache,int8")
    manifest.variants["int8"] = Variant({"vae_decoder": manifest.variants["int8"].networks["vae_decoder"]})
    with pytest.raises(InputError, match=r"fast: int8: .* has no INT8 unet; .* --networks unet`"):
        variant_files(manifest, "openvino", "int8")


@needs_openvino
def test_deepcache_export_again_forgets_its_old_int8_parts(sd_checkpoint, deepcache_int8_engines, tmp_path):
    from fashiongen.cli import main
    from fashiongen.runtime.manifest import load_manifest

    folder = tmp_path / "engines"
    shutil.copytree(deepcache_int8_engines, folder, ignore=shutil.ignore_patterns("cache"))
    assert main(["deepcache", "--model", str(sd_checkpoint), "--engines", str(folder), "--interval", "4"]) == 0
    manifest = load_manifest(folder)
    assert sorted(manifest.variant_networks("int8")) == ["vae_decoder"]
    assert manifest.variants["deepcache"].settings["interval"] == 4


@pytest.mark.parametrize("fast", ["int4", "deepcache,turbo", "int8,,deepcache"])
def test_unknown_fast_modes_are_refused(sd_engines, fast):
    from fashiongen.runtime.fastmodes import variant_files
    from fashiongen.runtime.manifest import load_manifest

    with pytest.raises(InputError, match="fast: must be one or more of deepcache, int8, comma-separated"):
        variant_files(load_manifest(sd_engines), "openvino", fast)
