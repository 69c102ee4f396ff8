"""What a new user hit, trying every README section on a fresh clone: each answered in one clear line (or a
warning) that names what to do, never a traceback or a misleading message."""
from __future__ import annotations

import socket
import subprocess
import sys
import warnings

import numpy as np
import pytest
from PIL import Image

from fashiongen.cli import build_parser, main
from fashiongen.runtime.denoise import MAX_STEPS

GEN = ["--prompt", "black crop top", "--steps", "2", "--height", "64", "--width", "64", "--no-progress"]


def fail(capsys, *argv) -> str:
    """Run the CLI, expect a user error: exit 2 and exactly one line on stderr; return it."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("fashiongen: error: "), err
    return err


# -- an engine folder of the wrong kind --------------------------------------------------------------------
def test_generate_on_a_segmenter_folder_names_its_kind_and_command(capsys, tmp_path, segmenter_engines):
    line = fail(capsys, "generate", "--engines", segmenter_engines, "--out", tmp_path / "o.png", *GEN)
    assert f"--engines: '{segmenter_engines}' holds a clothes segmenter only" in line
    assert "`fashiongen cutout` takes it" in line


def test_generate_on_a_pix2pix_folder_names_its_kind_and_command(capsys, tmp_path, p2p_engines):
    line = fail(capsys, "generate", "--engines", p2p_engines, "--out", tmp_path / "o.png", *GEN)
    assert "holds an InstructPix2Pix pipeline, not a text-to-image pipeline" in line
    assert "`fashiongen edit` takes it" in line and "shape" not in line


# -- --cutout, steps, --triton -----------------------------------------------------------------------------
def test_cutout_without_a_segmenter_points_at_segmenter_engines(capsys, tmp_path, sd_engines, monkeypatch):
    from fashiongen import demo_family

    monkeypatch.setattr(demo_family, "DEMO_DIR", tmp_path / "none")  # no demo segmenter to fall back on
    line = fail(capsys, "generate", "--engines", sd_engines, "--out", tmp_path / "o.png", "--cutout", "auto", *GEN)
    assert "--cutout:" in line and "has no segmenter" in line and "--segmenter-engines DIR" in line


def test_the_step_limit_speaks_of_steps_and_is_the_servers(capsys, tmp_path, sd_engines):
    from fashiongen.runtime.engines import EngineSet
    from fashiongen.runtime.txt2img import Txt2ImgPipeline, Txt2ImgRequest

    line = fail(capsys, "generate", "--engines", sd_engines, "--out", tmp_path / "o.png", *GEN, "--steps", "1001")
    assert f"--steps: must be an integer from 1 to {MAX_STEPS} (got 1001)" in line
    assert "num_inference_steps" not in line and "num_train_timesteps" not in line
    pipeline = Txt2ImgPipeline(EngineSet(sd_engines))
    pipeline.resolve(Txt2ImgRequest(prompt="a top", steps=MAX_STEPS))
    with pytest.raises(ValueError, match=f"steps: must be an integer from 1 to {MAX_STEPS}"):
        pipeline.resolve(Txt2ImgRequest(prompt="a top", steps=MAX_STEPS + 1))
    repo = build_parser().parse_args(["triton-repo", "--engines", str(sd_engines), "--out", str(tmp_path / "r")])
    assert repo.max_steps == MAX_STEPS == 150  # one bound, in-process and on a server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("scheme", ["grpc", "http"])
@pytest.mark.parametrize("server_side", [False, True])
def test_triton_url_with_no_server_says_nothing_answered(capsys, tmp_path, sd_engines, scheme, server_side):
    pytest.importorskip("tritonclient")
    url = f"{scheme}://127.0.0.1:{_free_port()}"
    extra = ["--server-side"] if server_side else ["--engines", sd_engines]
    line = fail(capsys, "generate", *extra, "--triton", url, "--out", tmp_path / "o.png", *GEN)
    assert f"--triton: nothing answered at {url}" in line and "refused" not in line


# -- a garment that covers a speck of the image --------------------------------------------------------------
class _SpeckSegmenter:
    """Stands in for the segmenter network: class 0 everywhere, class 5 wins at one logit pixel."""

    def __init__(self, contract):
        self.contract = contract

    def run(self, feeds):
        batch, _, height, width = feeds["pixel_values"].shape
        logits = np.zeros((batch, 18, height // 4, width // 4), np.float32)
        logits[:, 0] = 1.0
        logits[:, 5, height // 8, width // 8] = 2.0
        return {"logits": logits}


def test_a_speck_of_garment_is_refused_like_an_absent_one(capsys, tmp_path, segmenter_engines, monkeypatch):
    import fashiongen.cutout_commands as cutout_commands
    from fashiongen.runtime.cutout import MIN_AREA

    monkeypatch.setattr(cutout_commands, "ort_factory",
                        lambda *a, **k: lambda name, path, contract, dims: _SpeckSegmenter(contract))
    src = tmp_path / "look.png"
    Image.fromarray(np.full((80, 60, 3), 128, np.uint8)).save(src)
    argv = ["cutout", src, "--engines", segmenter_engines, "--class", "Skirt", "--out", tmp_path / "o.png",
            "--mask-out", tmp_path / "m.png"]
    line = fail(capsys, *argv)
    coverage = (np.asarray(Image.open(tmp_path / "m.png")) > 0).mean()
    assert 0 < coverage < MIN_AREA  # the mask was written (to look at); the shot was not
    assert f"Skirt (5) covers less than --min-area {MIN_AREA:g} of {src} ({coverage:.2%})" in line
    assert not (tmp_path / "o.png").exists()
    assert main([str(a) for a in argv] + ["--min-area", "0"]) == 0  # settable: 0 keeps any pixel
    assert (tmp_path / "o.png").exists()
    assert "--min-area: must be a fraction" in fail(capsys, *argv, "--min-area", "1.5")


# -- bench help, long prompts, off-grid edits ----------------------------------------------------------------
def test_cpu_peak_help_prints_help_instead_of_running():
    out = subprocess.run([sys.executable, "-m", "fashiongen.bench.cpu_peak", "--help"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and "usage:" in out.stdout and "GFLOP/s fp32 on" not in out.stdout


def test_long_prompt_warning_shows_only_the_first_dropped_words(sd_engines):
    from fashiongen.runtime.manifest import load_manifest
    from fashiongen.runtime.tokenizer import DROPPED_WORDS_SHOWN, PromptTokenizer

    tok = PromptTokenizer.from_manifest_section(sd_engines, load_manifest(sd_engines).tokenizer)
    tail = "cat dog bird fish frog lion bear wolf deer goat duck swan crab seal"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tok.encode(" ".join(["red"] * 75) + " " + tail)
    message = str(caught[0].message)
    shown = " ".join(tail.split()[:DROPPED_WORDS_SHOWN])
    assert f"from '{shown} ...'" in message and "seal" not in message and "its last 14 tokens" in message


def test_edit_of_an_off_grid_image_warns_of_the_new_size(tmp_path, p2p_engines):
    src, out = tmp_path / "in.png", tmp_path / "out.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (28, 36, 3), dtype=np.uint8)).save(src)
    with pytest.warns(UserWarning) as caught:  # records every warning: the edit must say it once
        assert main(["edit", "--engines", str(p2p_engines), "--image", str(src), "--prompt", "make it red",
                     "--steps", "1", "--out", str(out), "--no-progress"]) == 0
    sizes = [str(w.message) for w in caught if "not a multiple of 8" in str(w.message)]
    assert len(sizes) == 1 and sizes[0].startswith("image: 36x28 ") and sizes[0].endswith("at 32x24"), sizes
    assert Image.open(out).size == (32, 24)
