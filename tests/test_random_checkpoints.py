"""Seeded random SD 1.x checkpoints in the diffusers folder format, loaded by the real loading code."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from fashiongen.random_checkpoints.sd import (  # noqa: E402
    FULL_SD15,
    SD15_SCHEDULER_CONFIG,
    TINY,
    SDSize,
    main,
    random_embedding,
    write_sd_checkpoint,
    write_textual_inversion,
)

CAT_IDS = [49406, 320, 1125, 539, 320, 2368, 49407]


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    return write_sd_checkpoint(tmp_path_factory.mktemp("ckpt") / "sd-tiny", TINY, seed=0)


def _load(path):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_pretrained(path)


def _generate(pipe, **kw):
    return pipe("a photo of a cat", num_inference_steps=2, height=48, width=64, output_type="np",
                generator=torch.Generator("cpu").manual_seed(0), **kw).images


def test_layout_and_model_index(tiny_ckpt):
    for rel in ["model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
                "vae/config.json", "vae/diffusion_pytorch_model.safetensors", "text_encoder/config.json",
                "text_encoder/model.safetensors", "tokenizer/vocab.json", "tokenizer/merges.txt",
                "tokenizer/tokenizer.json", "tokenizer/tokenizer_config.json", "scheduler/scheduler_config.json"]:
        assert (tiny_ckpt / rel).is_file(), rel
    assert not (tiny_ckpt / "safety_checker").exists() and not (tiny_ckpt / "feature_extractor").exists()
    assert not list(tiny_ckpt.rglob("*.bin")), "model weights must be safetensors"
    index = json.loads((tiny_ckpt / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["safety_checker"] == [None, None]
    assert index["requires_safety_checker"] is False
    assert not [p for p in tiny_ckpt.parent.iterdir() if p.name.endswith(".tmp")], "temp folder left behind"


def test_pipeline_loads_and_generates(tiny_ckpt):
    pipe = _load(tiny_ckpt)
    assert pipe.safety_checker is None
    assert type(pipe.scheduler).__name__ == "PNDMScheduler"
    assert pipe.unet.config.block_out_channels == (32, 64) or list(pipe.unet.config.block_out_channels) == [32, 64]
    images = _generate(pipe)
    assert images.shape == (1, 48, 64, 3)
    assert np.isfinite(images).all()


def test_scheduler_is_sd15_pndm(tiny_ckpt):
    cfg = json.loads((tiny_ckpt / "scheduler" / "scheduler_config.json").read_text())
    for k, v in SD15_SCHEDULER_CONFIG.items():
        assert cfg[k] == v, k


def test_tokenizer_real_clip_ids(tiny_ckpt):
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(tiny_ckpt / "tokenizer")
    assert len(tok) == 49408
    assert tok("a photo of a cat").input_ids == CAT_IDS
    assert tok.pad_token == "<|endoftext|>" and tok.model_max_length == 77
    padded = tok("a photo of a cat", padding="max_length", max_length=77, truncation=True).input_ids
    assert padded == CAT_IDS + [49407] * 70
    vocab = json.loads((tiny_ckpt / "tokenizer" / "vocab.json").read_text(encoding="utf-8"))
    assert len(vocab) == 49408 and vocab["cat</w>"] == 2368


def test_tokenizer_json_runs_without_transformers(tiny_ckpt):
    """The torch-free runtime reads tokenizer.json with the `tokenizers` package alone."""
    from tokenizers import Tokenizer

    tk = Tokenizer.from_file(str(tiny_ckpt / "tokenizer" / "tokenizer.json"))
    assert tk.encode("a photo of a cat").ids == CAT_IDS  # no padding/truncation state baked in
    assert tk.encode("A  Photo of a CAT").ids == CAT_IDS
    assert tk.get_vocab_size() == 49408


def test_text_encoder_keys_have_sd15_prefix(tiny_ckpt):
    """transformers 5 saves without `text_model.`; transformers 4 would then load random weights."""
    from safetensors.torch import load_file
    from transformers import CLIPTextModel

    sd = load_file(tiny_ckpt / "text_encoder" / "model.safetensors")
    assert sd and all(k.startswith("text_model.") for k in sd)
    model = CLIPTextModel.from_pretrained(tiny_ckpt / "text_encoder")
    for k, v in model.state_dict().items():
        assert torch.equal(sd["text_model." + k.removeprefix("text_model.")], v), k


def test_same_seed_same_bytes(tmp_path, tiny_ckpt):
    again = write_sd_checkpoint(tmp_path / "again", TINY, seed=0)
    other = write_sd_checkpoint(tmp_path / "other", TINY, seed=1)
    weights = ["unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
               "text_encoder/model.safetensors"]
    for rel in weights + ["tokenizer/tokenizer.json", "unet/config.json"]:
        assert (again / rel).read_bytes() == (tiny_ckpt / rel).read_bytes(), rel
    for rel in weights:
        assert (other / rel).read_bytes() != (tiny_ckpt / rel).read_bytes(), rel


def test_rewrite_keeps_other_files_and_refuses_foreign_folder(tmp_path):
    ck = write_sd_checkpoint(tmp_path / "ck", TINY, seed=0)
    (ck / "embeddings").mkdir()
    (ck / "embeddings" / "keep.txt").write_text("x")
    write_sd_checkpoint(ck, TINY, seed=3)
    assert (ck / "embeddings" / "keep.txt").read_text() == "x"
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="foreign"):
        write_sd_checkpoint(foreign, TINY)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize("fmt,n", [("a1111", 3), ("a1111", 1), ("civitai", 2), ("diffusers", 1),
                                   ("diffusers-bin", 1)])
def test_textual_inversion_loads_into_text_encoder(tmp_path, tiny_ckpt, fmt, n):
    dim = TINY.cross_attention_dim
    vectors = random_embedding(dim, n, seed=7)
    token = "<my-style>"
    path = write_textual_inversion(tmp_path / "emb", vectors, token, fmt)
    assert path.is_file()
    pipe = _load(tiny_ckpt)
    pipe.load_textual_inversion(str(path), token=token)
    tokens = [token] + [f"{token}_{i}" for i in range(1, n)]
    ids = pipe.tokenizer.convert_tokens_to_ids(tokens)
    assert all(i >= 49408 for i in ids)
    table = pipe.text_encoder.get_input_embeddings().weight.detach()
    np.testing.assert_array_equal(table[ids].numpy(), vectors)
    images = _generate(pipe, negative_prompt=token)
    assert images.shape == (1, 48, 64, 3)


def test_textual_inversion_file_contents(tmp_path):
    from safetensors.torch import load_file

    v = random_embedding(32, 3, seed=1)
    a = torch.load(write_textual_inversion(tmp_path / "x.pt", torch.from_numpy(v), "<x>", "a1111"),
                   weights_only=True)
    assert a["string_to_token"] == {"*": 265} and a["name"] == "<x>" and a["step"] == 0
    assert a["sd_checkpoint"] is None and a["sd_checkpoint_name"] is None
    assert a["string_to_param"]["*"].shape == (3, 32)
    c = load_file(write_textual_inversion(tmp_path / "c.safetensors", v[:2], "<c>", "civitai"))
    assert list(c) == ["emb_params"] and c["emb_params"].shape == (2, 32)
    d = load_file(write_textual_inversion(tmp_path / "d", v[0], "<d>", "diffusers"))
    assert list(d) == ["<d>"] and d["<d>"].shape == (32,)
    assert (tmp_path / "d" / "learned_embeds.safetensors").is_file()
    with pytest.raises(ValueError, match="fmt"):
        write_textual_inversion(tmp_path / "y.pt", v, "<y>", "webui")
    with pytest.raises(ValueError, match="safetensors"):
        write_textual_inversion(tmp_path / "y.pt", v, "<y>", "civitai")


def test_random_embedding_scale_and_seed():
    e = random_embedding(768, 4, seed=5)
    assert e.shape == (4, 768) and e.dtype == np.float32
    assert 0.01 <= e.std() <= 0.02
    np.testing.assert_array_equal(e, random_embedding(768, 4, seed=5))
    assert not np.array_equal(e, random_embedding(768, 4, seed=6))


def test_non_default_size_loads(tmp_path):
    size = SDSize(unet_channels=(32, 64, 64), cross_attention_dim=48, text_heads=3, text_intermediate=96,
                  attention_head_dim=4, vae_channels=(32, 32, 32, 32), norm_groups=8)
    ck = write_sd_checkpoint(tmp_path / "sd3", size, seed=2)
    pipe = _load(ck)
    assert list(pipe.unet.config.block_out_channels) == [32, 64, 64]
    assert pipe.unet.config.norm_num_groups == 8 == pipe.vae.config.norm_num_groups
    assert pipe.unet.config.cross_attention_dim == 48 == pipe.text_encoder.config.hidden_size
    assert pipe.text_encoder.config.num_attention_heads == 3
    assert _generate(pipe).shape == (1, 48, 64, 3)


def test_unet_attention_chooses_the_levels_with_cross_attention(tmp_path):
    assert SDSize(unet_channels=(32, 64, 64)).unet_attention == (True, True, False)  # SD's layout by default
    size = SDSize(unet_channels=(32, 32, 64), unet_attention=(False, True, False), vae_channels=(32, 32, 32))
    pipe = _load(write_sd_checkpoint(tmp_path / "plain-top", size, seed=0))
    assert list(pipe.unet.config.down_block_types) == ["DownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]
    assert list(pipe.unet.config.up_block_types) == ["UpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"]
    assert _generate(pipe).shape == (1, 48, 64, 3)
    for bad in ((True, False), (1, 1, 0)):
        with pytest.raises(ValueError, match="unet_attention must be one true or false per UNet level"):
            SDSize(unet_channels=(32, 32, 64), unet_attention=bad)


def test_pix2pix_unet(tmp_path):
    from diffusers import StableDiffusionInstructPix2PixPipeline

    ck = write_sd_checkpoint(tmp_path / "p2p", SDSize(unet_in_channels=8), seed=0)
    assert json.loads((ck / "model_index.json").read_text())["_class_name"] == "StableDiffusionInstructPix2PixPipeline"
    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(ck)
    assert pipe.unet.config.in_channels == 8
    image = torch.rand(1, 3, 48, 64)
    out = pipe("make it red", image=image, num_inference_steps=2, output_type="np",
               generator=torch.Generator("cpu").manual_seed(0)).images
    assert out.shape == (1, 48, 64, 3)


def test_more_latent_channels_reach_the_vae_the_unet_and_the_export(tmp_path):
    """A VAE with 8 latent channels (more of a small VAE's image kept): the UNet reads and predicts 8, the
    InstructPix2Pix variant reads 16, and the export's manifest gives the runtime the number."""
    from fashiongen.export.sd_export import export_pipeline
    from fashiongen.runtime.engines import EngineSet
    from fashiongen.runtime.txt2img import Txt2ImgPipeline, Txt2ImgRequest

    ck = write_sd_checkpoint(tmp_path / "l8", SDSize(latent_channels=8), seed=0)
    pipe = _load(ck)
    assert pipe.vae.config.latent_channels == 8
    assert (pipe.unet.config.in_channels, pipe.unet.config.out_channels) == (8, 8)
    assert _generate(pipe).shape == (1, 48, 64, 3)
    assert SDSize(latent_channels=8, unet_in_channels=16).is_pix2pix
    with pytest.raises(ValueError, match="unet_in_channels must be latent_channels=8"):
        SDSize(latent_channels=8, unet_in_channels=4)
    manifest = export_pipeline(ck, tmp_path / "engines", progress=False)
    assert manifest.dims["latent_channels"] == 8 and manifest.kind == "txt2img"
    request = Txt2ImgRequest(prompt="a red shirt", seed=1, steps=2, height=48, width=64)
    assert Txt2ImgPipeline(EngineSet(tmp_path / "engines"))(request, progress=False).images[0].shape == (48, 64, 3)


def test_other_scheduler_selectable(tmp_path):
    cfg = {k: v for k, v in SD15_SCHEDULER_CONFIG.items() if k not in ("skip_prk_steps", "set_alpha_to_one")}
    cfg["_class_name"] = "EulerDiscreteScheduler"
    ck = write_sd_checkpoint(tmp_path / "euler", TINY, seed=0, scheduler_config=cfg)
    pipe = _load(ck)
    assert type(pipe.scheduler).__name__ == "EulerDiscreteScheduler"
    assert pipe.scheduler.config.beta_schedule == "scaled_linear"
    with pytest.raises(ValueError, match="_class_name"):
        write_sd_checkpoint(tmp_path / "bad", TINY, scheduler_config={"_class_name": "NoSuchScheduler"})


def test_full_sd15_architecture_constants():
    """The full size is exercised by the benchmarks, not here (it writes ~4 GB)."""
    assert FULL_SD15.unet_channels == (320, 640, 1280, 1280) and FULL_SD15.layers_per_block == 2
    assert FULL_SD15.cross_attention_dim == 768 and FULL_SD15.text_layers == 12
    assert FULL_SD15.text_heads == 12 and FULL_SD15.text_intermediate == 3072
    assert FULL_SD15.vae_channels == (128, 256, 512, 512) and FULL_SD15.sample_size == 64


def test_bad_size_names_the_field():
    with pytest.raises(ValueError, match="attention_head_dim"):
        SDSize(unet_channels=(30, 60))
    with pytest.raises(ValueError, match="unet_in_channels"):
        SDSize(unet_in_channels=5)
    with pytest.raises(ValueError, match="norm_groups=3 must divide"):
        SDSize(norm_groups=3)


def test_cli_with_embeddings(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["--out", str(out), "--seed", "3", "--with-embeddings"]) == 0
    assert (out / "model_index.json").is_file()
    pos = out / "embeddings" / "midjourney-style.pt"
    neg = out / "embeddings" / "wrong.safetensors"
    a = torch.load(pos, weights_only=True)
    assert a["name"] == "<midjourney-style>" and a["string_to_param"]["*"].shape == (3, 32)
    pipe = _load(out)
    pipe.load_textual_inversion(str(pos), token="<midjourney-style>")
    pipe.load_textual_inversion(str(neg), token="<wrong>")
    assert "<wrong>_1" in pipe.tokenizer.get_vocab()
    assert _generate(pipe, negative_prompt="<wrong>").shape == (1, 48, 64, 3)


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "--full-size" in text and "--with-embeddings" in text and "--seed" in text
