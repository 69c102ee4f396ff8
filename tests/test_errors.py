"""Bad input: one clear line naming what is wrong, exit status 2, and no partial output."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fashiongen.cli import main


def run_cli(capsys, *argv: str) -> str:
    """Run the CLI, expect a usage error, return its single stderr line."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("fashiongen: error:")]
    assert len(lines) == 1, err
    return lines[0]


class _TouchesAFile:
    """A pickle payload that would create a file when unpickled: loading must never run it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


# -- export -------------------------------------------------------------------------------------------
def test_missing_checkpoint_folder(capsys, tmp_path):
    line = run_cli(capsys, "export", "--model", tmp_path / "nope", "--out", tmp_path / "e", "--no-progress")
    assert "--model" in line and "nope" in line
    assert not (tmp_path / "e").exists()


def test_checkpoint_missing_a_file(capsys, tmp_path, sd_checkpoint):
    broken = tmp_path / "broken"
    shutil.copytree(sd_checkpoint, broken)
    (broken / "unet" / "config.json").unlink()
    line = run_cli(capsys, "export", "--model", broken, "--out", tmp_path / "e", "--no-progress")
    assert "unet/config.json" in line
    assert not (tmp_path / "e").exists()


def test_embedding_of_the_wrong_width(capsys, tmp_path, sd_checkpoint):
    from fashiongen.random_checkpoints.sd import random_embedding, write_textual_inversion

    emb = write_textual_inversion(tmp_path / "wide.safetensors", random_embedding(40, 2, seed=0), "<wide>", "civitai")
    line = run_cli(capsys, "export", "--model", sd_checkpoint, "--out", tmp_path / "e",
                   "--embedding", f"{emb}=<wide>", "--no-progress")
    assert "wide.safetensors" in line and "40" in line and "32" in line
    assert not (tmp_path / "e").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".e.")], "no staging folder left behind"


def test_pickle_with_code_is_refused_and_not_run(capsys, tmp_path, sd_checkpoint):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"string_to_param": {"*": torch.zeros(1, 32)}, "payload": _TouchesAFile(marker)}, evil)
    line = run_cli(capsys, "export", "--model", sd_checkpoint, "--out", tmp_path / "e", "--embedding", evil)
    assert "evil.pt" in line and "refused" in line
    assert not marker.exists()


@pytest.mark.parametrize("token", ["<|endoftext|>", "dress"])
def test_token_already_in_the_vocabulary(capsys, tmp_path, sd_checkpoint, token):
    from fashiongen.random_checkpoints.sd import random_embedding, write_textual_inversion

    emb = write_textual_inversion(tmp_path / "e.safetensors", random_embedding(32, 1, seed=0), token, "civitai")
    line = run_cli(capsys, "export", "--model", sd_checkpoint, "--out", tmp_path / "e",
                   "--embedding", f"{emb}={token}", "--no-progress")
    assert token in line and "already in the tokenizer's vocabulary" in line


def test_export_refuses_to_overwrite_a_foreign_folder(capsys, tmp_path, sd_checkpoint):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.txt").write_text("precious")
    line = run_cli(capsys, "export", "--model", sd_checkpoint, "--out", tmp_path / "mine", "--no-progress")
    assert "not an engine folder" in line
    assert (tmp_path / "mine" / "thesis.txt").read_text() == "precious"


# -- generate -----------------------------------------------------------------------------------------
def generate(capsys, engines, out, *extra) -> str:
    return run_cli(capsys, "generate", "--engines", engines, "--prompt", "a red dress", "--out", out,
                   "--steps", "2", "--no-progress", *extra)


@pytest.mark.parametrize("extra, expected", [
    (("--height", "100"), "--height: must be a positive multiple of 8"),
    (("--width", "0"), "--width: must be a positive multiple of 8"),
    (("--steps", "0"), "--steps: must be an integer from 1 to 150 (got 0)"),
    (("--steps", "151"), "--steps: must be an integer from 1 to 150 (got 151)"),
    (("--num-images", "0"), "--num-images: must be an integer >= 1"),
    (("--seed", "-1"), "--seed: must be an integer"),
    (("--scheduler", "turbo"), "--scheduler: unknown 'turbo'; known: ddim, dpmpp_2m, dpmpp_2m_karras, euler, euler_a, heun, lcm, "
     "lms, pndm, tcd, unipc"),
    (("--scheduler", "lcm", "--steps", "51"), "--steps: must be an integer from 1 to 50 (got 51); the lcm scheduler "
     "takes at most its original_inference_steps=50"),
])
def test_bad_generate_arguments(capsys, tmp_path, sd_engines, extra, expected):
    out = tmp_path / "x.png"
    assert expected in generate(capsys, sd_engines, out, *extra)
    assert not out.exists()


def test_empty_prompt(capsys, tmp_path, sd_engines):
    line = run_cli(capsys, "generate", "--engines", sd_engines, "--prompt", "  ", "--out", tmp_path / "x.png")
    assert "--prompt: must be a non-empty string" in line


def test_unwritable_output_is_found_before_any_compute(capsys, tmp_path):
    # The engine folder does not even exist: the output path is checked first, so that is what is reported.
    line = generate(capsys, tmp_path / "no-engines", tmp_path / "missing-dir" / "x.png")
    assert "--out" in line and "missing-dir" in line


def test_output_must_be_png(capsys, tmp_path, sd_engines):
    assert ".png" in generate(capsys, sd_engines, tmp_path / "x.jpg")


def test_missing_engine_folder(capsys, tmp_path):
    line = generate(capsys, tmp_path / "nothing", tmp_path / "x.png")
    assert "--engines" in line and "nothing" in line


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_missing_or_corrupt_onnx(capsys, tmp_path, sd_engines, damage):
    engines = tmp_path / "engines"
    shutil.copytree(sd_engines, engines)
    unet = engines / "unet.onnx"
    if damage == "missing":
        unet.unlink()
    else:
        unet.write_bytes(b"this is not a protobuf" * 10)
    out = tmp_path / "x.png"
    line = generate(capsys, engines, out)
    assert "unet.onnx" in line
    assert not out.exists()


def test_long_prompt_is_truncated_with_a_warning(sd_engines):
    from fashiongen.runtime.manifest import load_manifest
    from fashiongen.runtime.tokenizer import PromptTokenizer

    tok = PromptTokenizer.from_manifest_section(sd_engines, load_manifest(sd_engines).tokenizer)
    prompt = " ".join(["red"] * 80) + " zebra stripes"
    with pytest.warns(UserWarning, match="its last 7 tokens are dropped, from 'red red red red red zebra stripes'"):
        ids = tok.encode(prompt)
    assert len(ids) == 77 and ids[-1] == tok.eos and ids[0] == tok.bos


# -- the user's mistake against a bug ----------------------------------------------------------------------
@pytest.mark.parametrize("bug", [ZeroDivisionError("division by zero"), ValueError("operands could not be broadcast")])
def test_an_internal_error_is_not_reported_as_the_users(capsys, tmp_path, sd_engines, monkeypatch, bug):
    """Only InputError is the user's mistake; any other exception (a numpy ValueError too) escapes main()."""
    from fashiongen.runtime.txt2img import Txt2ImgPipeline

    def broken(self, request):
        raise bug
    monkeypatch.setattr(Txt2ImgPipeline, "resolve", broken)
    with pytest.raises(type(bug), match=str(bug)):
        main(["generate", "--engines", str(sd_engines), "--prompt", "a top", "--out", str(tmp_path / "x.png")])
    assert "fashiongen: error" not in capsys.readouterr().err


def test_the_command_shows_a_traceback_for_a_bug_and_one_line_for_a_mistake(tmp_path, sd_engines):
    code = ("import sys; from fashiongen.runtime.txt2img import Txt2ImgPipeline; from fashiongen.cli import main; "
            "Txt2ImgPipeline.resolve = lambda self, request: 1 / 0; sys.exit(main(sys.argv[1:]))")
    argv = ["generate", "--engines", str(sd_engines), "--prompt", "a top", "--out", str(tmp_path / "x.png")]
    bug = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)
    assert bug.returncode == 1 and "Traceback (most recent call last)" in bug.stderr
    assert "ZeroDivisionError" in bug.stderr and "fashiongen: error" not in bug.stderr
    mistake = subprocess.run([sys.executable, "-c", code, *argv[:-1], str(tmp_path / "x.jpg")], capture_output=True,
                             text=True, timeout=120)
    assert mistake.returncode == 2 and mistake.stderr.splitlines() == [
        f"fashiongen: error: --out: '{tmp_path / 'x.jpg'}' must end in .png"]
