"""``manifest.json``: what an engine folder holds and how to run it.

Written by ``fashiongen export``, read by every runtime backend and by the Triton generator. It records
each network's file, hash, I/O contract (as resolved for this checkpoint) and its validation against
PyTorch; the tokenizer's special ids and learned tokens; the scheduler config; the VAE's scale; the sampling
presets its UNet was made for. Its sections
are parsed here, once, into the dataclasses below; the JSON on disk keeps one format (``to_json``).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import InputError
from .files import atomic_file, marker_file

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
class Section:
    """A typed manifest section. Keys a section does not name (written by another version of the exporter)
    are kept in ``extra`` and written back, so reading and rewriting a manifest never drops what it held."""

    @classmethod
    def from_json(cls, data: dict[str, Any] | None):
        """The section, or None for the ``{}`` of a folder without it."""
        if not data:
            return None
        names = {f.name for f in fields(cls)} - {"extra"}
        section = cls(**{k: v for k, v in data.items() if k in names})
        section.extra = {k: v for k, v in data.items() if k not in names}
        return section

    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        return {**out, **self.extra}


@dataclass
class TokenizerSection(Section):
    """How prompts become ids: the tokenizer file in the folder, the padded length, the special ids, and each
    learned token's per-vector tokens."""

    file: str
    model_max_length: int
    bos_token_id: int
    eos_token_id: int
    pad_token_id: int
    learned_tokens: dict[str, list[str]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class VaeSection(Section):
    """The VAE's latent scale and how many pixels one latent cell spans."""

    scaling_factor: float
    downscale: int
    tiny: dict[str, Any] | None = None  # the AutoencoderTiny exported beside it (`export --tiny-vae`): source, hash
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out = super().to_json()
        if out["tiny"] is None:  # a folder without one keeps the format it always had
            del out["tiny"]
        return out


@dataclass
class SegmenterSection(Section):
    """The segmenter's labels (JSON keys: the class ids as strings) and its image processor's settings."""

    id2label: dict[str, str]
    preprocess: dict[str, Any]
    logit_stride: int = 4
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def labels(self) -> dict[int, str]:
        return {int(k): str(v) for k, v in self.id2label.items()}


@dataclass
class ClipSection(Section):
    """Which CLIP checkpoint the networks are (a catalog index is only valid for the same one) and its image
    preprocessing."""

    fingerprint: str
    image: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Variant:
    """A fast mode's parts: the networks that stand in for the folder's own (``{network: {file, backend,
    ...}}``) and the settings they were made with (e.g. DeepCache's interval). On disk both share one JSON
    object, told apart by their values: a network's entry is an object, a setting is not."""

    networks: dict[str, dict[str, Any]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Variant:
        return cls({k: v for k, v in data.items() if isinstance(v, dict)},
                   {k: v for k, v in data.items() if not isinstance(v, dict)})

    def to_json(self) -> dict[str, Any]:
        return {**self.networks, **self.settings}


@dataclass
class Manifest:
    """One engine folder. A folder may hold a diffusion pipeline, a segmenter, or both; a section the folder
    does not have is None (``{}`` on disk)."""

    kind: str                       # "txt2img" | "pix2pix" | "segmenter" | "clip" (no diffusion pipeline)
    dims: dict[str, int]            # fixed sizes that resolve the contracts' dimension names
    networks: dict[str, NetworkEntry]
    opset: int
    versions: dict[str, str]
    tokenizer: TokenizerSection | None = None
    scheduler_config: dict[str, Any] = field(default_factory=dict)   # diffusers' scheduler_config.json
    vae: VaeSection | None = None
    segmenter: SegmenterSection | None = None
    clip: ClipSection | None = None
    source: dict[str, Any] = field(default_factory=dict)            # what each part was exported from
    # Fast modes (``generate --fast NAME``), e.g. an INT8 UNet or DeepCache's split UNet.
    variants: dict[str, Variant] = field(default_factory=dict)
    # Sampling presets (``generate --preset NAME``): ``{"fast": {scheduler, steps, guidance, why}}``, recorded at
    # export where the UNet is LCM-capable (see ``presets.py``).
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)
    format: int = FORMAT_VERSION

    def variant_networks(self, mode: str) -> dict[str, dict[str, Any]]:
        """The networks of fast mode ``mode`` (``{}`` when the folder has none)."""
        variant = self.variants.get(mode)
        return variant.networks if variant else {}

    def to_json(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["networks"] = {k: dict(v.__dict__) for k, v in self.networks.items()}
        for name in _SECTIONS:
            out[name] = out[name].to_json() if out[name] is not None else {}
        out["variants"] = {k: v.to_json() for k, v in self.variants.items()}
        if not out["presets"]:  # a folder without one keeps the format it always had
            del out["presets"]
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        data = dict(data)
        data["networks"] = {k: NetworkEntry(**v) for k, v in data["networks"].items()}
        for name, section in _SECTIONS.items():
            data[name] = section.from_json(data.get(name))
        data["variants"] = {k: Variant.from_json(v) for k, v in data.get("variants", {}).items()}
        return cls(**data)


_SECTIONS: dict[str, type[Section]] = {"tokenizer": TokenizerSection, "vae": VaeSection,
                                       "segmenter": SegmenterSection, "clip": ClipSection}


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
    path = marker_file(engine_dir, MANIFEST_NAME, arg, EngineFolderError, "fashiongen export",
                       "an exported engine folder")
    try:
        data = json.loads(path.read_text())
        manifest = Manifest.from_json(data)
    except (json.JSONDecodeError, TypeError, KeyError, AttributeError) as exc:
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
