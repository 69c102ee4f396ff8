"""Shared fixtures: small seeded checkpoints, their learned tokens, and their exported engine folders.

Everything is built once per test session in a temporary folder; no weights come from a hub.
"""
from __future__ import annotations

import os
from importlib.util import find_spec
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

#: What a test (or a parameter) that runs OpenVINO or NNCF, the cpu-fast extra, carries: the ``openvino``
#: marker, and a skip where the extra is missing, so that the ONNX Runtime tests beside it still run.
OPENVINO_MARKS = (pytest.mark.openvino,
                  pytest.mark.skipif(find_spec("openvino") is None or find_spec("nncf") is None,
                                     reason="the cpu-fast extra (openvino, nncf) is not installed"))


def needs_openvino(test):
    """Decorator: ``test`` runs OpenVINO (see OPENVINO_MARKS)."""
    for mark in OPENVINO_MARKS:
        test = mark(test)
    return test

POSITIVE_TOKEN = "<midjourney-style>"
NEGATIVE_TOKEN = "<wrong>"


@pytest.fixture(scope="session")
def sd_checkpoint(tmp_path_factory) -> Path:
    from fashiongen.random_checkpoints.sd import TINY, write_sd_checkpoint

    return write_sd_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-sd", TINY, seed=0)


@pytest.fixture(scope="session")
def embeddings(tmp_path_factory, sd_checkpoint) -> dict[str, Path]:
    """A 3-vector A1111 positive style token and a 2-vector civitai negative token."""
    from fashiongen.random_checkpoints.sd import TINY, random_embedding, write_textual_inversion

    folder = tmp_path_factory.mktemp("embeddings")
    dim = TINY.cross_attention_dim
    return {
        POSITIVE_TOKEN: write_textual_inversion(folder / "midjourney-style.pt", random_embedding(dim, 3, seed=1),
                                                POSITIVE_TOKEN, "a1111"),
        NEGATIVE_TOKEN: write_textual_inversion(folder / "wrong.safetensors", random_embedding(dim, 2, seed=2),
                                                NEGATIVE_TOKEN, "civitai"),
    }


@pytest.fixture(scope="session")
def sd_engines(tmp_path_factory, sd_checkpoint, embeddings) -> Path:
    from fashiongen.export.embeddings import load_embedding
    from fashiongen.export.sd_export import export_pipeline

    out = tmp_path_factory.mktemp("engines") / "tiny-sd"
    loaded = [load_embedding(path, token) for token, path in embeddings.items()]
    export_pipeline(sd_checkpoint, out, loaded, progress=False)
    return out


@pytest.fixture(scope="session")
def diffusers_pipe(sd_checkpoint, embeddings):
    """The reference: diffusers' own pipeline with the same embeddings loaded its own way."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(sd_checkpoint, safety_checker=None, local_files_only=True)
    for token, path in embeddings.items():
        pipe.load_textual_inversion(str(path), token=token)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# -- clothes segmenter (SegFormer, 18 classes) -------------------------------------------------------------
@pytest.fixture(scope="session")
def segformer_checkpoint(tmp_path_factory) -> Path:
    from fashiongen.random_checkpoints.segmenter import TINY_SEGFORMER, write_segformer_checkpoint

    return write_segformer_checkpoint(tmp_path_factory.mktemp("segformer") / "tiny-segformer", TINY_SEGFORMER, seed=0)


@pytest.fixture(scope="session")
def segmenter_engines(tmp_path_factory, segformer_checkpoint) -> Path:
    """An engine folder holding only the segmenter (manifest kind "segmenter")."""
    from fashiongen.export.sd_export import export_engine_folder

    out = tmp_path_factory.mktemp("seg-engines") / "tiny-segmenter"
    export_engine_folder(out, segmenter_dir=segformer_checkpoint, progress=False)
    return out


# -- InstructPix2Pix (8-channel UNet) ------------------------------------------------------------------------
@pytest.fixture(scope="session")
def p2p_checkpoint(tmp_path_factory) -> Path:
    from fashiongen.random_checkpoints.sd import SDSize, write_sd_checkpoint

    return write_sd_checkpoint(tmp_path_factory.mktemp("p2p") / "tiny-pix2pix", SDSize(unet_in_channels=8), seed=3)


@pytest.fixture(scope="session")
def p2p_engines(tmp_path_factory, p2p_checkpoint) -> Path:
    """An engine folder with the pix2pix pipeline (manifest kind "pix2pix")."""
    from fashiongen.export.sd_export import export_engine_folder

    out = tmp_path_factory.mktemp("p2p-engines") / "tiny-pix2pix"
    export_engine_folder(out, p2p_checkpoint, progress=False)
    return out


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run faster on one thread, and the machine is shared (two threads measured 15x slower here
    while other work ran: OpenMP spin-waits). Training tests use it: ``pytestmark = usefixtures("one_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
