"""The judge of the quality bench: a garment-attribute classifier trained on the procedural data set.

Contract. :class:`AttributeClassifier` reads a garment alone on white (HxWx3 uint8, any size) and names its
attributes (:data:`fashiongen.training.attributes.ATTRIBUTES`: type, colour, pattern, sleeve, neckline,
length), ``None`` where it judges that an attribute does not apply (a skirt has no sleeve). It knows nothing of
the generator: it is a small CNN trained here, on the data set's renders only, so that it can judge generated
images without sharing their mistakes.

What it sees. The two ways a generated product shot reaches it: approach 3's product shot (trained on the
product view as rendered), and approach 1's cutout of a worn image (trained on the worn view cut out exactly as
``fashiongen generate --cutout auto`` cuts: the pixels of the garment's class in the label map, composited by
:func:`fashiongen.runtime.compositing.composite` with the command's default options, :func:`cutout_options`).
A cutout keeps the garment small where the figure wore it; a product shot fills the frame. So every input is
first framed alike (:func:`normalise`): cropped to its content (pixels darker than near-white, on rows and
columns holding at least two of them, so that a stray speck of a generated background does not widen the box,
and not in a thin band along the image's sides, where a VAE decoder draws a faint grey frame that would
otherwise make the box the whole image and the garment small),
scaled into a white square with a margin as ``--frame`` frames a cutout, at :data:`INPUT_SIZE`.

Training: the shared loop (:func:`fashiongen.training.runs.train`: AdamW, warm-up, clipping, EMA of the
weights), cross-entropy summed over one head per attribute (each with an ``n/a`` class where an attribute can
be absent). Augmentation drawn from the step's generator: scale 0.8-1.05 and shift up to 8% (white fills
in), a horizontal flip (garments here are symmetric), contrast against white 0.9-1.1 (white stays white), a
Gaussian blur of up to 3 px on three quarters of the batch and a little pixel noise (generated images are
softer than renders; see :func:`augment`).

Files: ``FILE.safetensors`` (the weights) and ``FILE.json`` (the label vocabulary, input size, widths, and a
record of the training: data, steps, seed, seconds, losses, held-out accuracy).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from fashiongen.runtime.compositing import CompositeOptions, composite, flatten_on_white, frame_square
from fashiongen.runtime.errors import InputError
from fashiongen.runtime.files import atomic_file
from fashiongen.runtime.images import as_rgb
from fashiongen.training.attributes import (ATTRIBUTES, COLOURS, LENGTHS, NECKLINES, PATTERNS, SEGMENT_CLASSES,
                                            SLEEVES, TYPE_SPECS, TYPES)
from fashiongen.training.imagefolder import load_label_map, open_image, read_rows

NA = "n/a"
#: Each head's classes; ``n/a`` where the attribute does not apply to every type.
VOCAB: dict[str, list[str]] = {
    "type": list(TYPES), "colour": list(COLOURS), "pattern": list(PATTERNS),
    "sleeve": [*SLEEVES, NA], "neckline": [*NECKLINES, NA], "length": [*LENGTHS, NA],
}
INPUT_SIZE = 96     # the network's square input: a product shot's neckline and stripes still show
WIDTHS = (32, 48, 64, 96, 128, 128)  # the stem's, then one conv block's each
CONTENT_LEVEL = 240  # a pixel darker than this in some channel is garment, not white background
MARGIN = 0.04       # white border of the framed input, a fraction of its side
EDGE = 0.03         # a band this deep at each side is not content: decoders draw grey frames there
MAX_BLUR = 3.0      # training augmentation: Gaussian blur sigma up to this, in px of the input
BLURRED_FRACTION = 0.75  # of each batch; the rest stays as rendered
MAX_NOISE = 0.03    # pixel noise std up to this, on [0, 1] pixels
VIEWS = ("product", "worn")  # product view as rendered; worn view cut out as `generate --cutout auto` does


def cutout_options() -> CompositeOptions:
    """The options ``fashiongen generate --cutout auto`` composites with when given no other cutout option,
    read from the command's own parser so that the two can never drift apart."""
    from fashiongen.cutout_commands import add_cutout_arguments

    parser = argparse.ArgumentParser()
    add_cutout_arguments(parser)
    defaults = parser.parse_args([])
    return CompositeOptions(**{f.name: getattr(defaults, f.name) for f in dataclasses.fields(CompositeOptions)})


def normalise(image: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    """A garment on white framed as the network sees it: cropped to its content, centred in a white
    ``size`` x ``size`` square with a margin (the whole image when nothing is darker than near-white)."""
    rgb = as_rgb(image)
    content = rgb.min(axis=-1) < CONTENT_LEVEL
    edge = max(1, round(EDGE * min(content.shape)))
    content[:edge], content[-edge:], content[:, :edge], content[:, -edge:] = False, False, False, False
    rows = np.flatnonzero(content.sum(axis=1) >= 2)
    cols = np.flatnonzero(content.sum(axis=0) >= 2)
    alpha = np.zeros(rgb.shape[:2], np.uint8)
    if rows.size and cols.size:
        alpha[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1] = 255
    else:
        alpha[:] = 255
    return flatten_on_white(frame_square(np.dstack([rgb, alpha]), size, MARGIN))


def worn_cutout(image: np.ndarray, labels: np.ndarray, garment_type: str) -> np.ndarray | None:
    """The product shot `generate --cutout auto` would make of a worn render with a perfect segmenter: the
    pixels of the garment's class; None when the class covers none."""
    mask = labels == TYPE_SPECS[garment_type].segment_class
    return composite(image, mask, cutout_options()) if mask.any() else None


def truth_of(columns: dict) -> dict[str, str | None]:
    """The attribute values a metadata row names (``None`` where an attribute does not apply)."""
    return {a: columns.get(a) for a in ATTRIBUTES}


def load_examples(data: Path, view: str, split: str, arg: str = "--data") -> tuple[list[np.ndarray], list[dict]]:
    """Garments on white of one view and split of the data set (worn ones cut out), with their attributes."""
    folder = Path(data) / view / split
    files = ("label_file",) if view == "worn" else ()
    rows = read_rows(folder, arg, require=("text", "type", "colour"), files=files)
    images, truths = [], []
    for row in rows:
        image = np.asarray(open_image(row.image, arg))
        if view == "worn":
            labels = load_label_map(row.path("label_file"), row.image, image.shape[:2], len(SEGMENT_CLASSES), arg)
            image = worn_cutout(image, labels, row.columns["type"])
            if image is None:
                continue
        images.append(image)
        truths.append(truth_of(row.columns))
    return images, truths


# -- the network ---------------------------------------------------------------------------------------------
class AttributeNet(nn.Module):
    """A stride-2 stem, then conv blocks (conv-BN-ReLU, a 2x2 max-pool after each but the last), global mean
    and max pooling, one linear head per attribute."""

    def __init__(self, vocab: dict[str, list[str]], widths: Sequence[int] = WIDTHS):
        super().__init__()
        layers, channels = [], 3
        for i, width in enumerate(widths):
            stem = i == 0
            layers += [nn.Conv2d(channels, width, 5 if stem else 3, stride=2 if stem else 1, padding=2 if stem else 1,
                                 bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            if 0 < i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            channels = width
        self.features = nn.Sequential(*layers)
        self.attributes = list(vocab)  # a list, not a ModuleDict: "type" is a name nn.Module already has
        self.heads = nn.ModuleList(nn.Linear(2 * channels, len(vocab[a])) for a in self.attributes)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.features(x)
        pooled = torch.cat([f.mean(dim=(2, 3)), f.amax(dim=(2, 3))], dim=1)
        return {a: head(pooled) for a, head in zip(self.attributes, self.heads)}


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """N x S x S x 3 uint8 -> N x 3 x S x S float in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Scale, shift, flip, contrast against white, blur and noise, per image, drawn from ``generator``.

    The blur is strong on purpose (Gaussian, sigma up to :data:`MAX_BLUR` px at the input size, on most of the
    batch): a generator at 128 px draws through an autoencoder, and a judge trained on crisp renders only
    named a plain red shirt's colour right on 100% of renders but on 56% of the same renders blurred by sigma
    2.5, when its colour is plain to see. A judge should not score sharpness as a wrong attribute."""
    import torch.nn.functional as F

    n = x.shape[0]

    def uniform(low, high, *shape):
        return low + (high - low) * torch.rand(n, *shape, generator=generator)

    scale = uniform(0.8, 1.05)
    flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = flip / scale
    theta[:, 1, 1] = 1.0 / scale
    theta[:, :, 2] = uniform(-0.08, 0.08, 2)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    darkness = F.grid_sample(1.0 - x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    darkness = darkness * uniform(0.9, 1.1, 1, 1, 1)  # contrast against white: white stays white
    sigma = uniform(0.0, MAX_BLUR) * (torch.rand(n, generator=generator) < BLURRED_FRACTION)
    darkness = gaussian_blur(darkness, sigma)
    noise = torch.randn(darkness.shape, generator=generator) * uniform(0.0, MAX_NOISE, 1, 1, 1)
    return (1.0 - darkness + noise).clamp(0.0, 1.0)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Each image of N x C x H x W ``x`` blurred by its own Gaussian of ``sigma[i]`` px (0: unchanged),
    separably, with replicated borders."""
    import torch.nn.functional as F

    n, c, h, w = x.shape
    radius = int(np.ceil(3 * float(sigma.max()))) if len(sigma) else 0
    if radius == 0:
        return x
    offsets = torch.arange(-radius, radius + 1, dtype=x.dtype)
    weights = torch.exp(-0.5 * (offsets[None, :] / sigma.clamp(min=1e-3)[:, None]) ** 2)
    weights = torch.where(sigma[:, None] > 0, weights, (offsets == 0).to(x.dtype)[None, :])
    weights = (weights / weights.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)
    flat = F.pad(x.reshape(1, n * c, h, w), (radius,) * 4, mode="replicate")
    flat = F.conv2d(flat, weights[:, None, :, None], groups=n * c)
    flat = F.conv2d(flat, weights[:, None, None, :], groups=n * c)
    return flat.reshape(n, c, h, w)


def model_input(x01: torch.Tensor) -> torch.Tensor:
    return x01 * 2.0 - 1.0


# -- the classifier ------------------------------------------------------------------------------------------
@dataclass
class AttributeClassifier:
    network: AttributeNet
    vocab: dict[str, list[str]]
    size: int
    record: dict

    @torch.no_grad()
    def classify(self, images: Sequence[np.ndarray], batch_size: int = 64) -> list[dict[str, str | None]]:
        """Each image's attributes: one value per head, ``None`` where the head says ``n/a``."""
        self.network.eval()
        out = []
        for first in range(0, len(images), batch_size):
            batch = np.stack([normalise(im, self.size) for im in images[first:first + batch_size]])
            logits = self.network(model_input(to_tensor(batch)))
            picks = {a: logits[a].argmax(dim=1).tolist() for a in self.vocab}
            for i in range(len(batch)):
                values = {a: self.vocab[a][picks[a][i]] for a in self.vocab}
                out.append({a: None if v == NA else v for a, v in values.items()})
        return out


def score(predictions: Sequence[dict | None], truths: Sequence[dict]) -> dict[str, dict]:
    """Per attribute: ``correct`` and ``total`` over the examples where the attribute applies (its truth is not
    None), and ``accuracy`` (None when it applies to none). A prediction of None (no image to judge, e.g. an
    empty cutout) counts as wrong on every attribute."""
    if len(predictions) != len(truths):
        raise ValueError(f"score: {len(predictions)} predictions for {len(truths)} truths")
    out = {}
    for attr in ATTRIBUTES:
        pairs = [(p, t[attr]) for p, t in zip(predictions, truths) if t.get(attr) is not None]
        correct = sum(1 for p, value in pairs if p is not None and p.get(attr) == value)
        out[attr] = {"correct": correct, "total": len(pairs), "accuracy": correct / len(pairs) if pairs else None}
    return out


def evaluate(classifier: AttributeClassifier, data: Path, splits: Sequence[str] = ("test", "unseen"),
             arg: str = "--data") -> dict[str, dict]:
    """The classifier's accuracy per attribute on real renders: ``{"VIEW/SPLIT": score}`` for each view (the
    worn one cut out with its true label map) and split."""
    results = {}
    for split in splits:
        for view in VIEWS:
            images, truths = load_examples(data, view, split, arg)
            results[f"{view}/{split}"] = score(classifier.classify(images), truths)
    return results


def _labels(truths: Sequence[dict], vocab: dict[str, list[str]]) -> np.ndarray:
    return np.asarray([[vocab[a].index(NA if t[a] is None else t[a]) for a in vocab] for t in truths], np.int64)


def train_classifier(data: Path, out_file: Path, steps: int = 1200, seed: int = 0, batch_size: int = 48,
                     learning_rate: float = 2e-3, size: int = INPUT_SIZE, progress: bool = True,
                     evaluate_on: Sequence[str] = ("test", "unseen")) -> AttributeClassifier:
    """Train on the ``train`` split of both views of the data set in ``data``; write ``out_file`` (safetensors)
    and its ``.json``; measure the held-out accuracy on ``evaluate_on`` splits (those the data set has)."""
    from fashiongen.training.options import Schedule
    from fashiongen.training.options import batch_indices
    from fashiongen.training.runs import RunFolder, train

    data, out_file = Path(data), Path(out_file)
    if out_file.suffix != ".safetensors":
        raise InputError(f"--classifier: '{out_file}' must end in .safetensors")
    started = time.perf_counter()
    images, truths = [], []
    for view in VIEWS:
        view_images, view_truths = load_examples(data, view, "train")
        images += [normalise(im, size) for im in view_images]
        truths += view_truths
    pixels, labels = to_tensor(np.stack(images)), torch.from_numpy(_labels(truths, VOCAB))
    loaded = time.perf_counter() - started
    torch.manual_seed(seed)
    network = AttributeNet(VOCAB)
    loss = nn.CrossEntropyLoss()
    schedule = Schedule(steps=steps, batch_size=batch_size, learning_rate=learning_rate, checkpoint_every=steps,
                        seed=seed, ema_decay=0.99, warmup_steps=min(50, steps // 10))
    schedule.check()

    def loss_fn(step, micro, generator):
        index = torch.from_numpy(batch_indices(len(labels), batch_size, step * batch_size, seed))
        logits = network(model_input(augment(pixels[index], generator)))
        return sum(loss(logits[a], labels[index, k]) for k, a in enumerate(VOCAB))

    identity = {"data": str(data.absolute()), "steps": steps, "seed": seed, "batch_size": batch_size}
    with tempfile.TemporaryDirectory() as tmp:
        losses = train(RunFolder(Path(tmp) / "run", identity), schedule, {"classifier": network}, loss_fn,
                       resume=False, progress=progress, description="attribute classifier")
    classifier = AttributeClassifier(network, VOCAB, size, {})
    trained = time.perf_counter() - started - loaded
    dataset_info = data / "dataset.json"
    classifier.record = {
        "data": str(data.absolute()),
        "dataset": json.loads(dataset_info.read_text())["arguments"] if dataset_info.is_file() else None,
        "examples": len(labels), "steps": steps, "batch_size": batch_size, "learning_rate": learning_rate,
        "seed": seed, "seconds": {"load": round(loaded, 1), "train": round(trained, 1)},
        "torch_threads": torch.get_num_threads(), "losses": [round(v, 4) for v in losses],
    }
    splits = [s for s in evaluate_on if (data / "product" / s / "metadata.jsonl").is_file()]
    classifier.record["held_out"] = evaluate(classifier, data, splits)
    save_classifier(classifier, out_file)
    return classifier


def save_classifier(classifier: AttributeClassifier, out_file: Path) -> None:
    from safetensors.torch import save_file

    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    meta = {"vocab": classifier.vocab, "size": classifier.size, "widths": list(WIDTHS), "record": classifier.record}
    with atomic_file(out_file) as tmp:
        save_file({k: v.detach().contiguous() for k, v in classifier.network.state_dict().items()}, str(tmp))
    with atomic_file(out_file.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(meta, indent=2) + "\n")


def load_classifier(file: Path) -> AttributeClassifier:
    """A classifier written by :func:`train_classifier`: ``FILE.safetensors`` and ``FILE.json`` beside it."""
    from safetensors.torch import load_file

    file = Path(file)
    meta_file = file.with_suffix(".json")
    for path in (file, meta_file):
        if not path.is_file():
            raise InputError(f"--classifier: '{path}' is missing (train one with train_classifier)")
    try:
        meta = json.loads(meta_file.read_text())
        network = AttributeNet(meta["vocab"], meta["widths"])
        network.load_state_dict(load_file(str(file)))
    except (json.JSONDecodeError, KeyError, RuntimeError) as exc:
        raise InputError(f"--classifier: '{file}' is not an attribute classifier ({str(exc).splitlines()[0]})") \
            from None
    network.eval()
    return AttributeClassifier(network, meta["vocab"], int(meta["size"]), meta.get("record", {}))
