"""Garment cutout on the command line: ``fashiongen cutout`` and the ``--cutout`` options of ``generate``.

Shared by every command that makes images (``generate`` now, ``edit`` later): :func:`add_cutout_arguments`
adds the options, :func:`plan_cutout` checks them and every output path *before* any compute (and opens
the segmenter), :meth:`CutoutPlan.apply` segments a batch of images in one segmenter call and writes the
product shots. Runtime only: nothing here imports torch.
"""
from __future__ import annotations

import argparse
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from fashiongen import demo_family, options
from fashiongen.runtime.compositing import CompositeOptions, mask_image
from fashiongen.runtime.cutout import MIN_AREA, CutoutBatch, CutoutPipeline, check_min_area
from fashiongen.runtime.engines import EngineSet, ort_factory
from fashiongen.runtime.errors import InputError
from fashiongen.runtime.images import check_writable, load_rgb_image, numbered_paths, save_png_atomic
from fashiongen.runtime.manifest import load_manifest
from fashiongen.runtime.segmentation import is_auto


class EmptyCutoutError(InputError):
    """The chosen classes cover no pixel of an image, or less than --min-area of it: no product shot for it."""


CLASS_HELP = ("'auto' reads the garment from the prompt (crop top, shirt, t-shirt, blouse, jacket... -> "
              "Upper-clothes; skirt -> Skirt; pants, jeans, trousers, shorts -> Pants; dress -> Dress; where the "
              "segmenter finds too little of it, the pixels of the other garment classes it could be are taken as "
              "it, and the output says so), or "
              "one or more of the segmenter's labels by name or id, comma-separated (e.g. Upper-clothes,Skirt "
              "or 4,5); garment words such as jeans also name their class")


def add_cutout_arguments(parser: argparse.ArgumentParser, standalone: bool = False) -> None:
    """The cutout options. ``standalone`` (the ``cutout`` command) leaves out what only generators need."""
    g = parser.add_argument_group("garment cutout (product shot on white)")
    if not standalone:
        g.add_argument("--cutout", default=None, metavar="auto|CLASS[,CLASS]",
                       help="cut the garment out of the generated image and write it, alone on white, to --out. "
                       + CLASS_HELP)
        g.add_argument("--segmenter-engines", default=None, metavar="ENGINE_DIR",
                       help="engine folder holding the segmenter (default: the --engines folder if it has one, else "
                       "the shipped demo segmenter, demo-segmenter)")
        g.add_argument("--keep-raw", action="store_true",
                       help="also write the uncut generated image beside --out as OUT-raw.png")
    g.add_argument("--transparent", action="store_true",
                   help="write an RGBA PNG with a transparent background instead of white")
    g.add_argument("--feather", type=float, default=0.0, metavar="PX",
                   help="soften the garment's edge over about PX pixels, inward only (default 0: hard edge)")
    g.add_argument("--frame", type=int, default=None, metavar="SIZE",
                   help="crop to the garment's bounding box and centre it on a SIZE x SIZE canvas, aspect ratio "
                   "kept (default: the image's own size and placement)")
    g.add_argument("--margin", type=float, default=0.05, metavar="FRAC",
                   help="with --frame: empty border on each side, as a fraction of SIZE (default 0.05)")
    g.add_argument("--mask-out", type=Path, default=None, metavar="FILE.png",
                   help="also write the garment mask (255 garment, 0 elsewhere) at the source image's size")
    g.add_argument("--min-area", type=float, default=None, metavar="FRAC",
                   help=f"the least share of the image the garment must cover (default {MIN_AREA}, i.e. "
                   f"{MIN_AREA:.1%}%); below it the image gets no product shot, as when the class is absent")


def _options(args) -> CompositeOptions:
    return CompositeOptions(transparent=args.transparent, feather=args.feather, frame=args.frame,
                            margin=args.margin).check()


def raw_path(path: Path) -> Path:
    """``out.png`` -> ``out-raw.png``: where the uncut image goes."""
    return path.with_name(f"{path.stem}-raw{path.suffix}")


@dataclass
class CutoutPlan:
    """Everything checked and opened for one batch: classes, options, output paths, the segmenter."""

    pipeline: CutoutPipeline
    class_ids: list[int]
    options: CompositeOptions
    min_area: float
    out_paths: list[Path]
    raw_paths: list[Path] | None      # where generated images go uncut (--keep-raw, and on an empty mask)
    mask_paths: list[Path] | None
    keep_raw: bool = False
    from_prompt: bool = False         # the classes are the garment the prompt names (--cutout auto)

    @property
    def labels(self) -> list[str]:
        return [self.pipeline.id2label[i] for i in self.class_ids]

    def run(self, images: Sequence[np.ndarray]) -> CutoutBatch:
        return self.pipeline(images, self.class_ids, self.options, self.min_area, self.from_prompt)

    def apply(self, images: Sequence[np.ndarray], sources: Sequence[str] | None = None) -> tuple[list[str], CutoutBatch]:
        """Segment ``images`` (one segmenter call), write product shots, masks, raw images; the lines to print.

        An image whose mask is empty (or under ``min_area``) gets no product shot; after writing everything else
        this raises :class:`EmptyCutoutError` naming it (with ``raw_paths``, its uncut image is kept, so nothing
        is lost).
        """
        batch = self.run(images)
        lines, empty = [], []
        for i, (image, result) in enumerate(zip(images, batch.results)):
            if self.raw_paths is not None and (self.keep_raw or result.empty):
                save_png_atomic(np.asarray(image), self.raw_paths[i])
                lines.append(f"wrote {self.raw_paths[i]} (uncut)")
            if self.mask_paths is not None:
                save_png_atomic(mask_image(result.mask), self.mask_paths[i])
                lines.append(f"wrote {self.mask_paths[i]} (mask, {result.coverage:.1%} of the image)")
            if result.empty:
                name = sources[i] if sources else f"image {i}"
                kept = f"; the uncut image is at {self.raw_paths[i]}" if self.raw_paths is not None else ""
                found = f"{result.coverage:.2%}" if result.coverage else "no pixel"
                empty.append(f"{name} ({found}{kept})")
                continue
            save_png_atomic(result.image, self.out_paths[i])
            lines.append(f"wrote {self.out_paths[i]} ({'+'.join(result.labels)}, "
                         f"{result.coverage:.1%} of the image)")
            if result.relabelled:
                lines.append(f"note: the segmenter found too little {'+'.join(result.labels)}, the garment the "
                             f"prompt names, and labelled it {'+'.join(result.relabelled)}: cut out as the prompt's")
        if empty:
            for line in lines:
                print(line)
            what = " or ".join(f"{label} ({i})" for label, i in zip(self.labels, self.class_ids))
            raise EmptyCutoutError(f"{what} covers less than --min-area {self.min_area:g} of {'; '.join(empty)}: "
                                   "no product shot written for it (try another class, a lower --min-area, or see "
                                   "--mask-out)")
        return lines, batch


def plan_cutout(args, count: int, prompt: str | None = None, engines: EngineSet | None = None,
                class_spec: str | None = None, class_arg: str = "--cutout", keep_raw: bool | None = None,
                raw: bool = True) -> CutoutPlan | None:
    """Check the cutout options and every output path, open the segmenter, resolve the classes.

    Returns None when the command was not asked for a cutout (``--cutout`` absent). ``engines`` is the
    command's own engine folder (reused when the segmenter lives there). ``raw``: the images are made by
    the command (so they can be kept uncut); False for existing files.
    """
    spec = class_spec if class_spec is not None else getattr(args, "cutout", None)
    if spec is None:
        used = [flag for flag, on in (("--keep-raw", getattr(args, "keep_raw", False)),
                                      ("--transparent", args.transparent), ("--feather", args.feather),
                                      ("--frame", args.frame is not None), ("--mask-out", args.mask_out is not None),
                                      ("--min-area", args.min_area is not None),
                                      ("--segmenter-engines", getattr(args, "segmenter_engines", None) is not None))
                if on]
        if used:
            raise InputError(f"{', '.join(used)} need(s) --cutout auto|CLASS")
        return None
    options = _options(args)
    min_area = check_min_area(MIN_AREA if args.min_area is None else args.min_area)
    out_paths = [check_writable(p, "--out") for p in numbered_paths(args.out, count)]
    raw_paths = [check_writable(raw_path(p), "--keep-raw") for p in out_paths] if raw else None
    mask_paths = ([check_writable(p, "--mask-out") for p in numbered_paths(args.mask_out, count)]
                  if args.mask_out is not None else None)
    clash = {str(p.absolute()) for p in out_paths} & {str(p.absolute()) for p in (mask_paths or [])}
    if clash:
        raise InputError(f"--mask-out: '{args.mask_out}' is also the product shot's --out path")
    folder = getattr(args, "segmenter_engines", None)
    if folder is not None:
        folder = demo_family.engine_folder(folder, "demo-segmenter", "--segmenter-engines")
    elif engines is not None and not engines.has("segmenter"):
        folder = default_segmenter(engines.engine_dir, class_arg)
    folder_arg = "--segmenter-engines" if folder is not None else "--engines"
    if engines is None or (folder is not None and Path(folder).absolute() != engines.engine_dir.absolute()):
        providers = getattr(args, "providers", "CPUExecutionProvider").split(",")
        engines = EngineSet(folder or args.engines, ort_factory(providers, getattr(args, "threads", None)),
                            load_manifest(folder or args.engines, folder_arg))
    pipeline = CutoutPipeline(engines, arg=folder_arg)
    class_ids = pipeline.resolve_classes(spec, prompt, class_arg)
    pipeline.segmenter.open()
    keep = bool(getattr(args, "keep_raw", False)) if keep_raw is None else keep_raw
    return CutoutPlan(pipeline, class_ids, options, min_area, out_paths, raw_paths, mask_paths, keep_raw=keep,
                      from_prompt=is_auto(spec))


def default_segmenter(engine_dir: Path, class_arg: str) -> Path:
    """The segmenter for an engine folder without one: the shipped demo's where it is installed."""
    try:
        folder = demo_family.engine_folder(None, "demo-segmenter")
    except InputError:
        raise InputError(f"{class_arg}: '{engine_dir}' (--engines) has no segmenter to cut out with; give "
                         "--segmenter-engines DIR, a folder written by `fashiongen export --segmenter SEGFORMER_DIR`"
                         ) from None
    if demo_family.DEMO_DIR.resolve() not in Path(engine_dir).resolve().parents:
        warnings.warn(f"'{engine_dir}' has no segmenter: cutting out with the shipped demo segmenter, trained on "
                      "the procedural data set only; give --segmenter-engines for one trained on your images")
    return folder


def apply_cutout(plan: CutoutPlan, images: Sequence[np.ndarray], timings: bool = False) -> int:
    """Run a plan on generated images, print what was written (and the cutout's timings); 0 on success."""
    lines, batch = plan.apply(images)
    for line in lines:
        print(line)
    if timings:
        print(batch.timings.table())
    return 0


# -- fashiongen cutout ---------------------------------------------------------------------------------
def register(subparsers) -> None:
    """Add ``fashiongen cutout IMAGE... --engines DIR --class CLASS --out FILE.png``."""
    p = subparsers.add_parser(
        "cutout", help="cut a garment out of existing images: product shot on white",
        description="Find a garment in existing images with the exported SegFormer clothes segmenter and write "
        "it alone on a white (or transparent) background, as a catalog shows it. Several images go through "
        "the segmenter in one batch. An image in which the class covers no pixel is an error (exit 2), "
        "never a blank white square. Grayscale, palette and RGBA inputs are converted (alpha onto white).")
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="image file(s) to cut out (PNG, JPEG, ...)")
    p.add_argument("--engines", default=None,
                   help="engine folder holding a segmenter (`fashiongen export --segmenter DIR`); default: the "
                   "shipped demo segmenter (demo-segmenter)")
    p.add_argument("--class", dest="class_name", required=True, metavar="auto|CLASS[,CLASS]", help=CLASS_HELP)
    p.add_argument("--prompt", default=None, help="text describing the garment, read by --class auto")
    p.add_argument("--out", required=True, type=Path,
                   help="PNG file to write (with several images: OUT-0.png, OUT-1.png, ...)")
    options.add_timings_argument(p)
    options.add_ort_arguments(p)
    add_cutout_arguments(p, standalone=True)
    p.set_defaults(run=run_cutout_command)


def run_cutout_command(args) -> int:
    # Paths and options first, then the images, then the network: cheap checks before expensive ones.
    args.engines = demo_family.engine_folder(args.engines, "demo-segmenter")
    plan_paths = numbered_paths(args.out, len(args.images))
    for p in plan_paths:
        check_writable(p, "--out")
    sources = [str(p) for p in args.images]
    inputs = {str(p.absolute()) for p in args.images}
    if any(str(p.absolute()) in inputs for p in plan_paths):
        raise InputError("--out: would overwrite an input image; choose another path")
    images = [load_rgb_image(p, "IMAGE") for p in args.images]
    plan = plan_cutout(args, len(images), prompt=args.prompt, class_spec=args.class_name, class_arg="--class",
                       keep_raw=False, raw=False)
    lines, batch = plan.apply(images, sources)
    for line in lines:
        print(line)
    if args.timings:
        print(batch.timings.table())
    return 0
