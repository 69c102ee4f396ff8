"""``manifest.json``: what an engine folder holds and how to run it.

Written by ``fashiongen export``, read by every runtime backend and by the Triton generator. It records
each network's file, hash, I/O contract (as resolved for this checkpoint) and its validation against
PyTorch; the tokenizer's special ids and learned tokens; the scheduler config; the VAE's scale.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InputError
from .files import atomic_file

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1


class EngineFolderError(InputError):
    """An engine folder is missing, incomplete, inconsistent, or of another kind than the command takes."""


# What each kind of engine folder holds and the command that takes it: a folder given to the wrong command is
# refused with both, not with whatever its first missing piece would raise.
KINDS = {"txt2img": ("a text-to-image pipeline", "fashiongen generate"),
         "pix2pix": ("an InstructPix2Pix pipeline", "fashiongen edit"),
         "segmenter": ("a clothes segmenter only", "fashiongen cutout"),
         "clip": ("a CLIP model (a catalog index's)", "fashiongen search --clip-engines")}


@dataclass
class NetworkEntry:
    file: str
    sha256: str
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    validation: dict[str, Any] = field(default_factory=dict)


@dataclass
class Manifest:
    """One engine folder. A folder may hold a diffusion pipeline, a segmenter, or both."""

    kind: str                       # "txt2img" | "pix2pix" | "segmenter" | "clip" (no diffusion pipeline)
    dims: dict[str, int]            # fixed sizes that resolve the contracts' dimension names
    networks: dict[str, NetworkEntry]
    opset: int
    versions: dict[str, str]
    tokenizer: dict[str, Any] = field(default_factory=dict)   # file, max length, bos/eos/pad, learned_tokens
    scheduler_config: dict[str, Any] = field(default_factory=dict)
    vae: dict[str, Any] = field(default_factory=dict)          # scaling_factor, downscale
    segmenter: dict[str, Any] = field(default_factory=dict)    # id2label, preprocessing settings
    clip: dict[str, Any] = field(default_factory=dict)         # tokenizer, image preprocessing, fingerprint
    source: dict[str, Any] = field(default_factory=dict)
    # Fast modes (``generate --fast NAME``): {NAME: {network: {file, sha256, backend, ...}}}, e.g. an INT8 UNet.
    variants: dict[str, Any] = field(default_factory=dict)
    format: int = FORMAT_VERSION

    def to_json(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["networks"] = {k: dict(v.__dict__) for k, v in self.networks.items()}
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Manifest":
        data = dict(data)
        data["networks"] = {k: NetworkEntry(**v) for k, v in data["networks"].items()}
        return cls(**data)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON so that a reader never sees half a file (see :func:`files.atomic_file`)."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True))


def load_manifest(engine_dir: Path, arg: str = "engines") -> Manifest:
    """Read and sanity-check ``ENGINE_DIR/manifest.json``; errors name ``arg``, the folder and what is wrong."""
    engine_dir = Path(engine_dir)
    if not engine_dir.is_dir():
        raise EngineFolderError(f"{arg}: '{engine_dir}' is not a folder (run `fashiongen export` first)")
    path = engine_dir / MANIFEST_NAME
    if not path.is_file():
        raise EngineFolderError(f"{arg}: '{engine_dir}' has no {MANIFEST_NAME} (not an exported engine folder)")
    try:
        data = json.loads(path.read_text())
        manifest = Manifest.from_json(data)
    except (json.JSONDecodeError, TypeError, KeyError) as exc:
        raise EngineFolderError(f"{path}: not a valid fashiongen manifest ({exc})") from None
    if manifest.format != FORMAT_VERSION:
        raise EngineFolderError(f"{path}: manifest format {manifest.format}, this runtime reads {FORMAT_VERSION}")
    return manifest


def require_kind(manifest: Manifest, engine_dir: Path, kind: str, arg: str = "engines") -> None:
    """Refuse a folder of another kind than ``kind``, saying what it holds and which command takes it."""
    if manifest.kind == kind:
        return
    holds, command = KINDS.get(manifest.kind, (f"a '{manifest.kind}' folder", None))
    takes = f"; `{command}` takes it" if command else ""
    raise EngineFolderError(f"{arg}: '{engine_dir}' holds {holds}, not {KINDS[kind][0]}{takes}")
