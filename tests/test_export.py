"""The engine folder: every network exported, validated against PyTorch, described in the manifest."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import NEGATIVE_TOKEN, POSITIVE_TOKEN
from fashiongen.runtime.contracts import CONTRACTS
from fashiongen.runtime.manifest import load_manifest, sha256_file

SD_NETWORKS = ("text_encoder", "unet", "vae_decoder", "vae_encoder")


def test_manifest_lists_every_network_with_its_validation(sd_engines):
    manifest = load_manifest(sd_engines)
    assert manifest.kind == "txt2img"
    for name in SD_NETWORKS:
        entry = manifest.networks[name]
        assert (sd_engines / entry.file).is_file()
        assert (sd_engines / (entry.file + ".data")).is_file(), "weights go to external data"
        assert entry.sha256 == sha256_file(sd_engines / entry.file)
        assert [i["name"] for i in entry.inputs] == [s.name for s in CONTRACTS[name].inputs]
        assert 0 <= entry.validation["max_abs_diff"] < 1e-4
        # validated at batch 1, a shape other than the traced batch of 2
        assert all(shape[0] == 1 for shape in entry.validation["shapes"].values()) or name == "text_encoder"
    assert manifest.tokenizer.learned_tokens == {
        POSITIVE_TOKEN: [POSITIVE_TOKEN, f"{POSITIVE_TOKEN}_1", f"{POSITIVE_TOKEN}_2"],
        NEGATIVE_TOKEN: [NEGATIVE_TOKEN, f"{NEGATIVE_TOKEN}_1"],
    }
    assert manifest.scheduler_config["_class_name"] == "PNDMScheduler"
    assert set(manifest.versions) >= {"torch", "diffusers", "transformers", "onnx", "onnxruntime"}


def test_onnx_text_encoder_uses_the_learned_rows(sd_engines, diffusers_pipe):
    """Token ids and hidden states equal transformers' for a prompt with both learned tokens."""
    import torch

    from fashiongen.runtime.engines import EngineSet
    from fashiongen.runtime.tokenizer import PromptTokenizer

    manifest = load_manifest(sd_engines)
    tok = PromptTokenizer.from_manifest_section(sd_engines, manifest.tokenizer)
    prompt = f"{POSITIVE_TOKEN} red dress {NEGATIVE_TOKEN}"
    ours = tok.encode(prompt)
    converted = diffusers_pipe.maybe_convert_prompt(prompt, diffusers_pipe.tokenizer)
    ref = diffusers_pipe.tokenizer(converted, padding="max_length", max_length=77, truncation=True).input_ids
    assert ours.tolist() == ref
    hidden = EngineSet(sd_engines)["text_encoder"].run({"input_ids": ours[None]})["last_hidden_state"]
    with torch.no_grad():
        expected = diffusers_pipe.text_encoder(torch.tensor([ref]))[0].numpy()
    assert np.abs(hidden - expected).max() < 1e-4


@pytest.mark.parametrize("fmt", ["a1111", "civitai", "diffusers", "diffusers-bin"])
def test_every_embedding_format_loads(tmp_path, fmt):
    from fashiongen.random_checkpoints.sd import random_embedding, write_textual_inversion
    from fashiongen.export.embeddings import load_embedding

    n = 1 if fmt.startswith("diffusers") else 2
    vectors = random_embedding(32, n, seed=5)
    name = "learned_embeds.bin" if fmt == "diffusers-bin" else (
        "learned_embeds.safetensors" if fmt == "diffusers" else ("emb.pt" if fmt == "a1111" else "emb.safetensors"))
    path = write_textual_inversion(tmp_path / name, vectors, "<style>", fmt)
    emb = load_embedding(path, "<style>")
    assert emb.tokens == ["<style>"] + [f"<style>_{i}" for i in range(1, n)]
    assert np.allclose(emb.vectors.numpy(), np.asarray(vectors).reshape(n, 32))


def test_runtime_imports_no_torch():
    code = ("import sys, fashiongen.runtime.txt2img, fashiongen.runtime.engines, fashiongen.runtime.schedulers, fashiongen.runtime.rng, fashiongen.runtime.tokenizer, "
            "fashiongen.runtime.images, fashiongen.runtime.manifest; "
            "bad = [m for m in ('torch', 'diffusers', 'transformers', 'fashiongen.export') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


#: What each source folder may import of the project (beyond itself) and whether it is torch side. The
#: command line (fashiongen/) and the benches sit on top and may import anything.
LAYERS = {
    "runtime": (set(), False),
    "triton_repo": ({"fashiongen.runtime"}, False),
    "export": ({"fashiongen.runtime"}, True),
    "random_checkpoints": ({"fashiongen.runtime"}, True),
    "training": ({"fashiongen.runtime", "fashiongen.export", "fashiongen.random_checkpoints",
                  "fashiongen.demo_family"}, True),
}
TORCH_SIDE = {"torch", "diffusers", "transformers", "accelerate", "peft", "optimum", "nncf"}


def _imports(path: Path, root: Path) -> set[str]:
    """Every module an import of ``path`` names (function-level imports included), as its first two parts;
    a relative import counts as the installed name it resolves to (``runtime/schedulers/ddim.py``'s
    ``..errors`` is ``fashiongen.runtime``), and one that climbs out of its top folder is reported as such."""
    import ast

    package = ["fashiongen", *path.relative_to(root).parent.parts]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {".".join(alias.name.split(".")[:2]) for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level:
            found.add(".".join(node.module.split(".")[:2]))
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1]
            found.add(".".join(base[:2]) if len(base) >= 2 else f"(relative, level {node.level})")
    return found


@pytest.mark.parametrize("folder", sorted(LAYERS))
def test_each_package_imports_only_the_layers_below_it(folder):
    allowed, torch_side = LAYERS[folder]
    root = Path(__file__).resolve().parents[1]
    for path in (root / folder).rglob("*.py"):
        for module in _imports(path, root):
            project = module.startswith("fashiongen") or module.split(".")[0] in LAYERS or "relative" in module
            if project:
                assert module in allowed or module == f"fashiongen.{folder}", f"{path.relative_to(root)}: {module}"
            elif not torch_side:
                assert module.split(".")[0] not in TORCH_SIDE, f"{path.relative_to(root)}: imports {module}"


def test_weights_exact_in_fp16_are_stored_in_fp16_with_the_same_outputs(tmp_path):
    import onnx
    import onnxruntime as ort
    import torch

    from fashiongen.export.onnx_export import store_exact_fp16

    net = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8)).eval()
    with torch.no_grad():
        net[0].weight.copy_(net[0].weight.half().float())  # as loaded from an fp16 checkpoint
    path = tmp_path / "net.onnx"
    torch.onnx.export(net, (torch.randn(2, 64),), str(path), input_names=["x"], output_names=["y"], dynamo=False)
    model = onnx.load(str(path))
    assert store_exact_fp16(model) == 1  # the fp32 weights of the second layer stay fp32
    onnx.save(model, str(tmp_path / "half.onnx"))
    x = np.random.default_rng(0).standard_normal((2, 64)).astype(np.float32)
    full = ort.InferenceSession(str(path)).run(None, {"x": x})[0]
    half = ort.InferenceSession(str(tmp_path / "half.onnx")).run(None, {"x": x})[0]
    assert np.array_equal(full, half)
    assert (tmp_path / "half.onnx").stat().st_size < 0.7 * path.stat().st_size


def test_an_exported_folder_is_as_readable_as_any_new_file(sd_engines):
    """Staged folders and ONNX's external data are made private (0700, 0600); a server running as another user
    must read the engines all the same: the folder and each file get the umask's usual permissions."""
    import stat

    from fashiongen.runtime.files import usual_mode

    folder = Path(sd_engines)
    assert stat.S_IMODE(folder.stat().st_mode) == usual_mode(directory=True)
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix in (".onnx", ".data", ".json")]
    assert any(p.name.endswith(".onnx.data") for p in files)
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in files} == {p.name: usual_mode() for p in files}
