"""Catalog commands: ``edit`` (InstructPix2Pix), ``index`` (BLIP captions + CLIP vectors), ``search``.

``edit`` takes its input image either from a file (``--image IN.png``) or from a catalog index
(``--from-catalog INDEX_DIR``): the prompt then first retrieves the nearest catalog image, which
InstructPix2Pix edits toward the same prompt (text → nearest catalog image → edited product shot).

``edit`` and ``search`` are runtime commands (torch-free); ``index`` is an offline batch job on the torch
side (BLIP captioning, CLIP export) and imports it only when run.

Without a catalog, CLIP or captioner named, they use the shipped demo ones (``fashiongen.demo_family``):
``search`` and ``edit --from-catalog`` the demo catalog's index, ``index`` the demo CLIP and captioner.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from fashiongen import cutout_commands, demo_family, options, serving_commands
from fashiongen.runtime.errors import InputError


def register(sub) -> None:
    """Add ``edit``, ``index`` and ``search`` to the ``fashiongen`` subcommands."""
    _add_edit(sub)
    _add_index(sub)
    _add_search(sub)


# -- edit -------------------------------------------------------------------------------------------------
def _add_edit(sub) -> None:
    p = sub.add_parser(
        "edit", help="edit a product image toward a prompt with InstructPix2Pix (from a file or a catalog)",
        description="Edit an image with an exported InstructPix2Pix engine folder, torch-free. The same seed, "
        "scheduler and guidance scales give the same image as diffusers' StableDiffusionInstructPix2PixPipeline. "
        "The image comes from --image, or with --from-catalog from the catalog index: the prompt retrieves the "
        "nearest catalog image (CLIP), which is then edited toward the same prompt.")
    p.add_argument("--engines", type=Path, default=None,
                   help="pix2pix engine folder written by `fashiongen export`, or demo-pix2pix (default: the shipped "
                   "demo editor; not needed with --server-side)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--image", type=Path, help="image to edit (PNG/JPEG...; grayscale and RGBA are converted)")
    source.add_argument("--from-catalog", type=Path, metavar="INDEX_DIR", nargs="?", const="demo-catalog",
                        help="catalog index written by `fashiongen index`: edit the catalog image nearest the prompt "
                             "(alone, or 'demo-catalog': the shipped demo catalog)")
    p.add_argument("--prompt", required=True, help="the edit, e.g. 'black short sleeve crewneck crop top'")
    p.add_argument("--negative-prompt", default="", help="what to steer away from")
    options.add_match_argument(p, when="with --from-catalog: ")
    p.add_argument("--image-guidance", type=float, default=None,
                   help="image guidance scale: how closely to keep the input (default: the scale the engine folder "
                   "records, `fashiongen export --image-guidance`, else 1.5; < 1 turns guidance off)")
    options.add_sampling_arguments(p, steps=20, images_help="edits of the image", guidance_help="text guidance scale",
                                   guidance=None)
    options.add_session_arguments(p)
    cutout_commands.add_cutout_arguments(p)
    serving_commands.add_triton_arguments(p, "edit")
    p.set_defaults(run=_run_edit)


def _run_edit(args) -> int:
    from fashiongen.runtime.engines import EngineSet, ort_factory
    from fashiongen.runtime.images import check_writable, load_rgb_image
    from fashiongen.runtime.pix2pix import Pix2PixPipeline, Pix2PixRequest

    check_writable(args.out)
    search = None
    if args.from_catalog is not None:  # the catalog is searched here, on its own CLIP engines
        from fashiongen.runtime.retrieval import CatalogSearch

        index_dir = demo_family.engine_folder(args.from_catalog, "demo-catalog", "--from-catalog")
        search = CatalogSearch(index_dir, ort_factory(args.providers.split(","), args.threads), arg="--from-catalog")
        search.resolve_match(args.match)
    image = load_rgb_image(args.image, "--image") if args.image is not None else None
    if not args.server_side:
        args.engines = demo_family.engine_folder(args.engines, "demo-pix2pix")
    manifest = options.sampling_manifest(args)
    options.settle_sampling(args, manifest, args.engines)
    request = Pix2PixRequest(image=image, prompt=args.prompt,
                             negative_prompt=args.negative_prompt, seed=args.seed, steps=args.steps,
                             guidance=args.guidance, image_guidance=args.image_guidance, scheduler=args.scheduler,
                             num_images=args.num_images, decoder=args.decoder, eta=args.eta)
    if args.server_side:
        _find_in_catalog(search, request, args.match)
        options.write_images(serving_commands.request_server_side(args, "edit", request), args.out)
        return 0
    pipeline = Pix2PixPipeline(EngineSet(args.engines, serving_commands.engine_factory(args, manifest.kind), manifest))
    if request.image is None:  # found after every other check: a white placeholder stands in till then
        request.image = np.full((pipeline.downscale, pipeline.downscale, 3), 255, np.uint8)
    request = pipeline.resolve(request)  # every field checked (the image fitted) before any network is loaded
    cutout = cutout_commands.plan_cutout(args, request.num_images, args.prompt, pipeline.engines)  # None without --cutout
    _find_in_catalog(search, request, args.match)
    result = pipeline(request, progress=not args.no_progress)
    if args.timings:
        print(result.timings.table())
    if cutout is not None:  # the product shot goes to --out, the uncut image beside it with --keep-raw
        return cutout_commands.apply_cutout(cutout, result.images, args.timings)
    options.write_images(result.images, args.out)
    return 0


def _find_in_catalog(search, request, match) -> None:
    """With --from-catalog: the edit's input becomes the catalog image nearest the prompt (text → image)."""
    from fashiongen.runtime.images import load_rgb_image

    if search is None:
        return
    hit = search.search(request.prompt, k=1, match=match)[0]
    caption = f"; caption: {hit.caption!r}" if hit.caption is not None else ""
    print(f"catalog match: {hit.path} (score {hit.score:.4f}{caption})")
    request.image = load_rgb_image(search.image_path(hit), "--from-catalog")


# -- index ------------------------------------------------------------------------------------------------
def _add_index(sub) -> None:
    p = sub.add_parser(
        "index", help="caption (BLIP) and embed (CLIP) a folder of catalog images into a searchable index",
        description="Build or update a catalog index: every image under CATALOG_DIR is captioned with a local BLIP "
        "checkpoint and embedded, image and caption, with CLIP (exported to ONNX into the index, so searching needs "
        "no torch). Vectors go into faiss exact inner-product indexes. Re-running on a grown catalog embeds only new "
        "or changed images and drops removed ones; unreadable files are skipped and reported. The index folder is "
        "replaced in one rename, never left half written.")
    p.add_argument("catalog", type=Path, metavar="CATALOG_DIR", help="folder of product images (searched recursively)")
    p.add_argument("--out", required=True, type=Path, metavar="INDEX_DIR", help="index folder to write or update")
    p.add_argument("--clip", type=Path, default=None, metavar="DIR",
                   help="local CLIP checkpoint (openai/clip-vit-base-patch32 layout) or CLIP engine folder (e.g. an "
                        "index's clip/); a new index defaults to the shipped demo-clip (and then the captioner to "
                        "demo-captioner), an update keeps the index's own (a different one is refused)")
    p.add_argument("--captioner", type=Path, default=None, metavar="DIR",
                   help="local BLIP captioning checkpoint (Salesforce/blip-image-captioning-base layout); without it "
                        "a new index with the demo CLIP uses demo-captioner, one with a --clip of yours gets no "
                        "captions, an update uses the recorded one if still in place")
    p.add_argument("--batch-size", type=int, default=16, help="images per captioning / embedding batch (default 16)")
    p.add_argument("--rebuild", action="store_true",
                   help="re-caption and re-embed the whole catalog (needed to change the CLIP or the captioner)")
    p.add_argument("--approximate", action="store_true",
                   help="HNSW (approximate) faiss indexes instead of exact flat search")
    options.add_progress_argument(p)
    p.set_defaults(run=_run_index)


def _run_index(args) -> int:
    from fashiongen.export.catalog_index import build_index
    from fashiongen.runtime.retrieval import INDEX_META

    # a new index without --clip is the demo's pair; a CLIP of one's own is not captioned by the demo's BLIP
    demo_pair = args.clip is None and (args.rebuild or not (args.out / INDEX_META).is_file())
    if demo_pair or args.clip is not None:  # (a demo name given in place of a folder resolves too)
        args.clip = demo_family.engine_folder(args.clip, "demo-clip", "--clip")
    if demo_pair or args.captioner is not None:
        args.captioner = demo_family.engine_folder(args.captioner, "demo-captioner", "--captioner")
    report = build_index(args.catalog, args.out, clip_dir=args.clip, captioner_dir=args.captioner,
                         batch_size=args.batch_size, approximate=args.approximate, rebuild=args.rebuild, progress=not args.no_progress)
    print(report.summary())
    return 0


# -- search -----------------------------------------------------------------------------------------------
def _add_search(sub) -> None:
    p = sub.add_parser("search", help="the catalog images nearest a text prompt (torch-free)",
                       description="Embed the prompt with the index's own exported CLIP text tower (or --clip-engines, "
                       "which must be the same CLIP) and print the k nearest catalog images with their cosine scores.")
    p.add_argument("index", type=Path, metavar="INDEX_DIR", nargs="?", default=None,
                   help="index folder written by `fashiongen index` (default: demo-catalog, the shipped demo catalog)")
    p.add_argument("--prompt", required=True, help="what to look for, e.g. 'black short sleeve crewneck crop top'")
    p.add_argument("-k", type=int, default=5, help="how many results (default 5; at most the catalog's size)")
    options.add_match_argument(p)
    p.add_argument("--clip-engines", type=Path, default=None, metavar="DIR",
                   help="a CLIP engine folder to embed the prompt with instead of the index's own copy")
    options.add_ort_arguments(p)
    p.set_defaults(run=_run_search)


def _run_search(args) -> int:
    from fashiongen.runtime.engines import ort_factory
    from fashiongen.runtime.retrieval import CatalogSearch

    clip_engines = demo_family.engine_folder(args.clip_engines, "demo-clip", "--clip-engines") \
        if args.clip_engines is not None else None  # none: the index's own copy
    search = CatalogSearch(demo_family.engine_folder(args.index, "demo-catalog", "INDEX_DIR"),
                           ort_factory(args.providers.split(","), args.threads), clip_engines=clip_engines,
                           arg="INDEX_DIR")
    hits = search.search(args.prompt, k=args.k, match=args.match)
    if args.k > len(hits):
        print(f"(the catalog holds {len(hits)} images; showing all of them)")
    print(f"{'rank':>4}  {'score':>7}  path  [caption]")
    for rank, hit in enumerate(hits, 1):
        caption = f"  [{hit.caption}]" if hit.caption is not None else ""
        print(f"{rank:>4}  {hit.score:7.4f}  {hit.path}{caption}")
    return 0

