"""``fashiongen export --lora FILE[=SCALE]``: LoRA files merged as diffusers' load_lora_weights + fuse_lora merge them.

Every file is written for the tiny checkpoint with random weights, keyed as the real tools key them
(``random_checkpoints.lora``). The reference is diffusers' own pipeline with the LoRA loaded and fused.
"""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from fashiongen.export.lora import LoraError, merge_loras, parse_lora_arg, read_lora
from fashiongen.random_checkpoints.lora import write_random_lora
from fashiongen.runtime.manifest import load_manifest, sha256_file

pytestmark = pytest.mark.usefixtures("one_thread")

#: name -> (networks, write_random_lora arguments). "peft-alpha-keys" is loaded by diffusers through its
#: network_alphas argument: its load_lora_weights refuses ``.alpha`` keys beside lora_A / lora_B.
CASES = {
    "kohya-alpha": (("unet", "text_encoder"), dict(fmt="kohya", alpha=2.0, dtype=torch.float16)),
    "kohya-no-alpha": (("unet", "text_encoder"), dict(fmt="kohya", alpha=None)),
    "kohya-locon": (("unet", "text_encoder"), dict(fmt="kohya", targets="locon", alpha=2.0, conv_rank=2,
                                                   conv_alpha=1.0)),
    "peft-no-alpha": (("unet", "text_encoder"), dict(fmt="peft", alphas=None)),
    "peft-metadata": (("unet", "text_encoder"), dict(fmt="peft", alphas="metadata", targets="locon", alpha=8.0,
                                                     conv_rank=2, conv_alpha=1.0)),
    "peft-alpha-keys": (("unet", "text_encoder"), dict(fmt="peft", alphas="keys", targets="locon", alpha=2.0,
                                                       conv_rank=2, conv_alpha=1.0)),
    # diffusers saving a transformers 5 CLIPTextModel: no "text_model." in the text encoder's keys
    "peft-flat-text-encoder": (("unet", "text_encoder"), dict(fmt="peft", alphas=None, text_model_prefix=False)),
    # LCM-LoRA as latent-consistency/lcm-lora-sdv1-5 ships: kohya keys, UNet only, every alpha = the rank
    "lcm-lora": (("unet",), dict(fmt="kohya", targets="lcm", rank=8, alpha=8.0)),
}
PROMPT = "a black short sleeve crewneck crop top"
HEIGHT, WIDTH, STEPS, SEED = 64, 48, 4, 19687


@pytest.fixture(scope="module")
def base_models(sd_checkpoint):
    from fashiongen.export.sd_export import load_checkpoint

    parts = load_checkpoint(sd_checkpoint)
    return {"unet": parts["unet"], "text_encoder": parts["text_encoder"]}


@pytest.fixture(scope="module")
def lora_files(tmp_path_factory, base_models):
    folder = tmp_path_factory.mktemp("loras")
    return {name: write_random_lora(folder / f"{name}.safetensors", {n: base_models[n] for n in networks},
                                    seed=i, **kwargs)
            for i, (name, (networks, kwargs)) in enumerate(CASES.items())}


def diffusers_fused(checkpoint, loras):
    """diffusers' pipeline with each ``(file, scale)`` loaded, fused at its scale and unloaded, in turn."""
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import load_file

    pipe = StableDiffusionPipeline.from_pretrained(checkpoint, safety_checker=None, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    for i, (path, scale) in enumerate(loras):
        state = load_file(str(path))
        alphas = {k: v.item() for k, v in state.items() if k.endswith(".alpha") and not k.startswith("lora_")}
        if alphas:  # diffusers-format keys with network alphas: the loaders' own network_alphas argument
            state = {k: v for k, v in state.items() if k not in alphas}
            pipe.load_lora_into_unet(state, network_alphas=alphas, unet=pipe.unet, adapter_name=f"l{i}")
            pipe.load_lora_into_text_encoder(state, network_alphas=alphas, text_encoder=pipe.text_encoder,
                                             adapter_name=f"l{i}")
        else:
            pipe.load_lora_weights(str(path), adapter_name=f"l{i}")
        pipe.fuse_lora(lora_scale=scale, adapter_names=[f"l{i}"])
        pipe.unload_lora_weights()
    return pipe


def merged(base_models, loras):
    models = copy.deepcopy(base_models)
    return models, merge_loras(models, [read_lora(path, scale) for path, scale in loras])


def max_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    return max((sa[k].double() - sb[k].double()).abs().max().item() for k in sa)


def changed(a: torch.nn.Module, b: torch.nn.Module) -> int:
    sa, sb = a.state_dict(), b.state_dict()
    return sum(not torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("case", CASES)
def test_merge_equals_diffusers_fuse_lora(case, sd_checkpoint, base_models, lora_files):
    networks, _ = CASES[case]
    ours, records = merged(base_models, [(lora_files[case], 0.7)])
    ref = diffusers_fused(sd_checkpoint, [(lora_files[case], 0.7)])
    for network in ("unet", "text_encoder"):
        assert max_diff(ours[network], getattr(ref, network)) < 1e-5, network
        assert (changed(ours[network], base_models[network]) > 0) == (network in networks), network
    (record,) = records
    assert record["scale"] == 0.7 and record["format"] == ("kohya" if case.startswith(("kohya", "lcm")) else "peft")
    assert record["layers"]["unet"] > 0 and (record["layers"]["text_encoder"] > 0) == ("text_encoder" in networks)


def test_a_kohya_file_with_some_alphas_missing_merges_as_diffusers_does(tmp_path, sd_checkpoint, base_models,
                                                                       lora_files):
    """A layer without ``.alpha`` beside layers with one gets the alpha stated most often (not its rank)."""
    from safetensors.torch import load_file, save_file

    state = load_file(str(lora_files["kohya-locon"]))  # linear layers alpha 2, convs alpha 1
    dropped = sorted(k for k in state if k.endswith(".alpha"))[::3]
    save_file({k: v for k, v in state.items() if k not in dropped}, str(tmp_path / "some.safetensors"))
    ours, _ = merged(base_models, [(tmp_path / "some.safetensors", 0.7)])
    ref = diffusers_fused(sd_checkpoint, [(tmp_path / "some.safetensors", 0.7)])
    for network in ("unet", "text_encoder"):
        assert max_diff(ours[network], getattr(ref, network)) < 1e-5, network


def test_per_layer_alphas_are_applied_per_layer(tmp_path, base_models, lora_files):
    """kohya's definition, W + scale * alpha / rank * up @ down, layer by layer, whatever the other layers' alphas.

    (diffusers 0.42.1 is no reference here: it keys the alphas of kohya's attention layers under names peft
    does not match, which peft warns of, and gives those layers the most common alpha instead.)"""
    from safetensors.torch import load_file, save_file

    state = load_file(str(lora_files["kohya-alpha"]))
    stems = sorted(k[: -len(".alpha")] for k in state if k.endswith(".alpha"))
    for i, stem in enumerate(stems):
        state[f"{stem}.alpha"] = torch.tensor((1.0, 2.0, 4.0)[i % 3], dtype=torch.float16)
    save_file(state, str(tmp_path / "mixed.safetensors"))
    ours, _ = merged(base_models, [(tmp_path / "mixed.safetensors", 0.7)])
    index = {net: {name.removeprefix("text_model.").replace(".", "_"): name
                   for name, _ in base_models[net].named_modules()} for net in base_models}
    for i, stem in enumerate(stems):
        network, key = ("unet", stem[len("lora_unet_"):]) if stem.startswith("lora_unet_") else \
            ("text_encoder", stem[len("lora_te_text_model_"):])
        name = index[network][key]
        down, up = state[f"{stem}.lora_down.weight"].double(), state[f"{stem}.lora_up.weight"].double()
        weight = base_models[network].get_submodule(name).weight.double()
        expected = weight + 0.7 * (1.0, 2.0, 4.0)[i % 3] / down.shape[0] * (up.flatten(1) @ down.flatten(1)).reshape(
            weight.shape)
        got = ours[network].get_submodule(name).weight.double()
        assert (got - expected).abs().max().item() < 1e-6, stem


def test_two_loras_add_up_in_any_order(sd_checkpoint, base_models, lora_files):
    a, b = (lora_files["kohya-locon"], 0.7), (lora_files["peft-metadata"], -0.4)
    ab, records = merged(base_models, [a, b])
    ba, _ = merged(base_models, [b, a])
    for network in ("unet", "text_encoder"):
        assert max_diff(ab[network], ba[network]) < 1e-7
    assert [r["file"] for r in records] == [str(a[0]), str(b[0])]
    ref = diffusers_fused(sd_checkpoint, [a, b])
    for network in ("unet", "text_encoder"):
        assert max_diff(ab[network], getattr(ref, network)) < 1e-5


def test_some_layers_unmatched_warns_once_and_merges_the_rest(tmp_path, base_models):
    from safetensors.torch import load_file, save_file

    path = write_random_lora(tmp_path / "full.safetensors", {"unet": base_models["unet"]}, fmt="kohya", alpha=1.0)
    state = load_file(str(path))
    stem = "lora_unet_down_blocks_9_attentions_0_proj_in"  # a block this UNet does not have
    state.update({f"{stem}.lora_down.weight": torch.zeros(4, 32, 1, 1), f"{stem}.lora_up.weight": torch.zeros(32, 4, 1, 1)})
    save_file(state, str(tmp_path / "partial.safetensors"))
    with pytest.warns(UserWarning, match=r"1 of its \d+ layers match nothing.*down_blocks_9") as caught:
        _, (record,) = merged(base_models, [(tmp_path / "partial.safetensors", 1.0)])
    ours = [str(w.message) for w in caught if "lora:" in str(w.message)]
    assert len(ours) == 1 and "\n" not in ours[0]
    assert record["layers"]["unet"] == sum(k.endswith(".lora_down.weight") for k in state) - 1


def test_a_lora_for_another_shape_is_refused(tmp_path, base_models):
    from safetensors.torch import save_file

    stem = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"  # SD 2's 1024-wide context
    save_file({f"{stem}.lora_down.weight": torch.zeros(4, 1024), f"{stem}.lora_up.weight": torch.zeros(32, 4)},
              str(tmp_path / "sd2.safetensors"))
    with pytest.raises(LoraError, match=r"attn2_to_k.*does not fit.*\[32, 32\]"):
        merged(base_models, [(tmp_path / "sd2.safetensors", 1.0)])


# -- the command line -------------------------------------------------------------------------------------------
def run_cli(argv, capsys):
    from fashiongen.cli import main

    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def reference_image(pipe) -> np.ndarray:
    out = pipe(PROMPT, num_inference_steps=STEPS, guidance_scale=7.5, height=HEIGHT, width=WIDTH,
               generator=torch.Generator("cpu").manual_seed(SEED), output_type="np").images
    return (out * 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def lora_engines(tmp_path_factory, sd_checkpoint, lora_files):
    """``fashiongen export`` with two LoRAs: a kohya LoCon (UNet convs + text encoder) and a peft file."""
    from fashiongen.cli import main

    out = tmp_path_factory.mktemp("lora-engines") / "tiny-sd-lora"
    code = main(["export", "--model", str(sd_checkpoint), "--out", str(out), "--no-progress",
                 "--lora", f"{lora_files['kohya-locon']}=0.7", "--lora", f"{lora_files['peft-metadata']}=0.5"])
    assert code == 0
    return out


def test_export_with_loras_generates_diffusers_image(lora_engines, sd_checkpoint, lora_files, diffusers_pipe):
    from fashiongen.runtime.engines import EngineSet
    from fashiongen.runtime.txt2img import Txt2ImgPipeline, Txt2ImgRequest

    request = Txt2ImgRequest(prompt=PROMPT, seed=SEED, steps=STEPS, guidance=7.5, height=HEIGHT, width=WIDTH)
    ours = Txt2ImgPipeline(EngineSet(lora_engines))(request, progress=False).images
    ref = reference_image(diffusers_fused(sd_checkpoint, [(lora_files["kohya-locon"], 0.7),
                                                          (lora_files["peft-metadata"], 0.5)]))
    assert ours.shape == ref.shape and ref.std() > 5
    diff = np.abs(ours.astype(int) - ref.astype(int)).max()
    assert diff <= 2, f"max abs pixel difference {diff}/255 > 2/255"
    without = reference_image(diffusers_pipe)  # the same checkpoint without the LoRAs
    assert np.abs(ours.astype(int) - without.astype(int)).max() > 10, "the LoRAs changed nothing"


def test_manifest_records_each_lora(lora_engines, lora_files):
    loras = load_manifest(lora_engines).source["loras"]
    expected = [(lora_files["kohya-locon"], 0.7, "kohya"), (lora_files["peft-metadata"], 0.5, "peft")]
    assert [(r["file"], r["scale"], r["format"]) for r in loras] == [(str(p), s, f) for p, s, f in expected]
    assert [r["sha256"] for r in loras] == [sha256_file(p) for p, _, _ in expected]
    assert all(r["layers"]["unet"] > 0 and r["layers"]["text_encoder"] > 0 for r in loras)
    json.dumps(loras)  # plain data


def _unsupported_file(path, kind):
    from safetensors.torch import save_file

    stem = "lora_unet_down_blocks_0_attentions_0_proj_in"
    keys = {"LoHa": [".hada_w1_a", ".hada_w1_b", ".hada_w2_a", ".hada_w2_b", ".alpha"],
            "LoKr": [".lokr_w1", ".lokr_w2_a", ".lokr_w2_b", ".alpha"],
            "DoRA": [".lora_down.weight", ".lora_up.weight", ".dora_scale", ".alpha"]}[kind]
    save_file({stem + k: torch.ones(2, 2) for k in keys}, str(path))
    return path


@pytest.mark.parametrize("kind", ["LoHa", "LoKr", "DoRA"])
def test_unsupported_formats_are_refused_by_name(kind, tmp_path, sd_checkpoint, capsys):
    path = _unsupported_file(tmp_path / f"{kind}.safetensors", kind)
    code, _, err = run_cli(["export", "--model", str(sd_checkpoint), "--out", str(tmp_path / "e"),
                            "--lora", str(path), "--no-progress"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("fashiongen: error: --lora:") and kind in err and "not supported" in err
    assert not (tmp_path / "e").exists()


def test_a_lora_that_matches_nothing_is_refused(tmp_path, sd_checkpoint, capsys):
    from safetensors.torch import save_file

    stem = "lora_unet_input_blocks_1_1_proj_in"  # the LDM (sgm) spelling: no module of a diffusers UNet
    save_file({f"{stem}.lora_down.weight": torch.ones(4, 32, 1, 1), f"{stem}.lora_up.weight": torch.ones(32, 4, 1, 1),
               f"{stem}.alpha": torch.tensor(4.0)}, str(tmp_path / "ldm.safetensors"))
    code, _, err = run_cli(["export", "--model", str(sd_checkpoint), "--out", str(tmp_path / "e"),
                            "--lora", str(tmp_path / "ldm.safetensors"), "--no-progress"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "--lora:" in err and "none of its 1 layers matches" in err and "input_blocks_1_1_proj_in" in err


@pytest.mark.parametrize("suffix, expected", [("=nan", "finite"), ("=inf", "finite"), ("=-inf", "finite"),
                                              ("=strong", "must be a number"), ("", None)])
def test_bad_scales_missing_files_and_pickles_are_one_line_errors(suffix, expected, tmp_path, sd_checkpoint,
                                                                  lora_files, capsys):
    path = lora_files["kohya-alpha"] if expected else tmp_path / "missing.safetensors"
    code, _, err = run_cli(["export", "--model", str(sd_checkpoint), "--out", str(tmp_path / "e"),
                            "--lora", f"{path}{suffix}", "--no-progress"], capsys)
    assert code == 2 and err.count("\n") == 1 and err.startswith("fashiongen: error: --lora:")
    assert (expected or "does not exist") in err


def test_a_pickle_is_refused_unread(tmp_path, capsys):
    torch.save({"lora_unet_x.lora_down.weight": torch.ones(1)}, tmp_path / "lora.pt")
    code, _, err = run_cli(["export", "--segmenter", str(tmp_path), "--out", str(tmp_path / "e"),
                            "--lora", str(tmp_path / "lora.pt")], capsys)
    assert code == 2 and "not a safetensors file" in err and "pickles" in err and err.count("\n") == 1


def test_lora_arguments_parse_and_need_a_model(tmp_path, lora_files, capsys):
    path = lora_files["kohya-alpha"]
    assert parse_lora_arg(str(path)) == (path, 1.0)
    assert parse_lora_arg(f"{path}=-0.25") == (path, -0.25)
    weird = tmp_path / "style=v2.safetensors"  # a file whose name holds '=' is taken as it is
    weird.write_bytes(path.read_bytes())
    assert parse_lora_arg(str(weird)) == (weird, 1.0)
    code, _, err = run_cli(["export", "--segmenter", str(tmp_path), "--out", str(tmp_path / "e"),
                            "--lora", str(path)], capsys)
    assert code == 2 and "--lora needs --model" in err


def test_help_explains_the_flag():
    from fashiongen.cli import build_parser

    parser = build_parser()
    export = parser._subparsers._group_actions[0].choices["export"]
    text = export.format_help()
    assert "--lora FILE[=SCALE]" in text and "kohya" in text and "LoHa" in text
