"""``fashiongen train``: diffusers' text-to-image recipe for an SD 1.x checkpoint, on an imagefolder.

The base is an SD 1.x diffusers folder (``--model``: fine-tune it) or a size (``--config FILE.json``: the
fields of :class:`fashiongen.random_checkpoints.sd.SDSize`; a checkpoint with seeded random weights and the
real CLIP tokenizer is written to ``OUT/base`` and trained from there). The recipe is diffusers'
``examples/text_to_image``: the VAE latent of an image, noised at a uniform timestep by a DDPM scheduler built
from the checkpoint's own scheduler config; the UNet (and the text encoder if trained) learns what that
config's ``prediction_type`` names (``epsilon``, or ``v_prediction`` with the target from ``get_velocity``);
MSE loss, optionally min-SNR weighted; captions dropped to "" with a probability so classifier-free guidance
works. The loop, checkpoints, exact resume, EMA, mixed precision and gradient accumulation are
:func:`fashiongen.training.runs.train`'s.

Speed on a CPU: the VAE encoder runs once per image, before the loop, and never in it. Each image's
posterior (mean and std) is cached in ``OUT/latents-cache.safetensors`` under a key of the data, the VAE's
weights and the resolution (a resume or a rerun reads it back); each step draws its latent as
``(mean + std * noise) * scaling_factor`` with the step's generator, as the recipe's ``latent_dist.sample()``
would, so the cache changes nothing but the time. Captions are tokenized once.

Layout of ``--out`` (the run folder)::

    run.json                      what defines the run (a --resume must match it)
    checkpoints/step-NNNNNNN/     the last resumable checkpoint
    latents-cache.safetensors     the VAE posteriors of the data
    base/                         with --config: the random initial checkpoint
    validation/step-NNNNNNN.png   with --validation-prompt: a grid, a row a prompt
    model/                        the result: a complete diffusers SD folder (EMA weights with --ema-decay)
                                  and training.json (arguments, seed, steps, final loss, wall time)

``OUT/model`` is what ``StableDiffusionPipeline.from_pretrained`` and ``fashiongen export --model`` take. It
appears in one rename when the run ends; the parts not trained are hard links to the base's files.

The helpers for a base checkpoint, data and the output folder are shared with ``train-vae``
(:mod:`fashiongen.training.autoencoder`). Importing this module imports no torch (the CLI builds every
parser at start-up).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

from fashiongen.runtime.errors import InputError

from .options import add_schedule_arguments, schedule_from_args, step_batch

if TYPE_CHECKING:
    import torch

MODEL = "model"
BASE = "base"
VALIDATION = "validation"
LATENTS_CACHE = "latents-cache.safetensors"
RECORD = "training.json"
VALIDATION_STEPS = 20
VALIDATION_SEED = 0


# -- shared with train-vae: the base checkpoint, the data, the output folder ------------------------------
def add_base_arguments(p) -> None:
    base = p.add_mutually_exclusive_group(required=True)
    base.add_argument("--model", type=Path, metavar="DIR",
                      help="SD 1.x diffusers folder to start from (model_index.json, unet/, vae/, text_encoder/, "
                      "tokenizer/, scheduler/), e.g. another run's OUT/model")
    base.add_argument("--config", type=Path, metavar="FILE.json",
                      help="start from random weights of this size: a JSON object of SDSize fields "
                      "(unet_channels, layers_per_block, attention_head_dim, cross_attention_dim, text_layers, "
                      "text_heads, text_intermediate, vae_channels, norm_groups; sample_size defaults to "
                      "--resolution/8); the initial checkpoint (seeded by --seed) is written to OUT/base")


def add_data_arguments(p, what: str, config: bool = True) -> None:
    """``--data`` and ``--resolution``; ``config``: the command takes ``--config`` (a size instead of a model)."""
    p.add_argument("--data", type=Path, action="append", required=True, metavar="DIR",
                   help=f"imagefolder ({what}); repeat to train on several")
    p.add_argument("--resolution", type=int, default=None,
                   help="square training size in pixels, a multiple of the VAE's downscale (default: the "
                   "checkpoint's native size" + ("; with --config, sample_size x 8)" if config else ")"))


def read_config_object(path: Path, known: list[str], what: str) -> dict:
    """The JSON object in ``--config``: one line naming the file if it cannot be read, is not a JSON object of
    ``what``, or has a key not in ``known``."""
    try:
        config = json.loads(Path(path).read_text())
    except OSError as exc:
        raise InputError(f"--config: cannot read '{path}' ({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"--config: '{path}' is not JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(config, dict):
        raise InputError(f"--config: '{path}' must hold a JSON object of {what} ({', '.join(known)})")
    unknown = sorted(set(config) - set(known))
    if unknown:
        raise InputError(f"--config: '{path}' has unknown key '{unknown[0]}' (expected some of {', '.join(known)})")
    return config


def read_config(path: Path, resolution: int | None) -> dict:
    """The SDSize fields in ``--config`` (checked by building one); ``sample_size`` follows ``resolution``."""
    from fashiongen.random_checkpoints.sd import SDSize

    config = read_config_object(path, [f.name for f in fields(SDSize)], "SDSize fields")
    size = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}
    if resolution is not None and "sample_size" not in size:
        size["sample_size"] = resolution // 2 ** (len(size.get("vae_channels", SDSize.vae_channels)) - 1)
    try:
        return SDSize(**size).__dict__
    except (TypeError, ValueError) as exc:
        raise InputError(f"--config: '{path}': {exc}") from None


def base_identity(args, config: dict | None):
    """What the run starts from, as the run's identity records it."""
    return {"config": config} if config is not None else str(Path(args.model).absolute())


def prepare_base(args, config: dict | None, run_dir: Path) -> Path:
    """The base checkpoint folder: ``--model`` checked, or ``--config`` written to ``OUT/base`` (once: a
    resume finds it there)."""
    from fashiongen.random_checkpoints.sd import SDSize, write_sd_checkpoint

    if config is None:
        return check_base(Path(args.model))
    base = Path(run_dir) / BASE
    if not (base / "model_index.json").is_file():
        write_sd_checkpoint(base, SDSize(**config), seed=args.seed)
    return base


def check_base(model_dir: Path) -> Path:
    """An SD 1.x folder, or a one-line InputError naming what it lacks."""
    from fashiongen.export.sd_export import CheckpointError, check_checkpoint

    try:
        return check_checkpoint(model_dir)
    except CheckpointError as exc:
        hint = f" (a run folder? its model is '{model_dir / MODEL}')" if (model_dir / MODEL).is_dir() else ""
        raise InputError(f"{exc}{hint}") from None


def load_base(model_dir: Path) -> dict:
    """tokenizer, text_encoder, unet, vae and scheduler_config of an SD 1.x folder (local files only)."""
    from fashiongen.export.sd_export import CheckpointError, load_checkpoint

    try:
        return load_checkpoint(check_base(model_dir))
    except CheckpointError as exc:
        raise InputError(str(exc)) from None


def base_geometry(args, config: dict | None) -> dict:
    """What the checks need before anything is written or loaded: the VAE's downscale, the UNet's native
    latent size and input channels, the latent channels (from --config, or the base's config files)."""
    if config is not None:
        return {"downscale": 2 ** (len(config["vae_channels"]) - 1), "sample_size": config["sample_size"],
                "unet_in_channels": config["unet_in_channels"], "latent_channels": config["latent_channels"]}
    model = check_base(Path(args.model))
    unet, vae = (json.loads((model / part / "config.json").read_text()) for part in ("unet", "vae"))
    return {"downscale": 2 ** (len(vae["block_out_channels"]) - 1), "sample_size": unet["sample_size"],
            "unet_in_channels": unet["in_channels"], "latent_channels": vae["latent_channels"]}


def require_text_to_image(args, geometry: dict) -> dict:
    """``geometry``, if its UNet takes the latents alone: an InstructPix2Pix UNet (image latents concatenated,
    8 channels) is refused naming ``--model`` and the command, before anything loads."""
    if geometry["unet_in_channels"] != geometry["latent_channels"]:
        raise InputError(f"--model: '{args.model}' has a {geometry['unet_in_channels']}-channel UNet "
                         f"(InstructPix2Pix?); {args.command_name} takes a text-to-image SD 1.x checkpoint")
    return geometry


def training_size(resolution: int | None, geometry: dict) -> int:
    """``--resolution``, checked against the VAE's downscale; by default the checkpoint's native size."""
    down = geometry["downscale"]
    size = geometry["sample_size"] * down if resolution is None else resolution
    if size < down or size % down:
        raise InputError(f"--resolution: must be a positive multiple of {down} (the VAE's downscale), got {size}")
    return size


def read_data(folders: list[Path], require: tuple[str, ...]) -> list:
    """Every row of every ``--data`` folder, in the order given (the run's data order is drawn from it)."""
    from .imagefolder import read_rows

    return [row for folder in folders for row in read_rows(folder, "--data", require=require)]


def data_digest(rows: list) -> str:
    """sha256 of the data as trained on: every row's columns and image bytes, in order."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps(row.columns, sort_keys=True).encode())
        digest.update(row.image.read_bytes())
    return digest.hexdigest()


def load_images(rows: list, size: int):
    """uint8 NHWC images of ``rows`` at ``size``."""
    import numpy as np

    from .imagefolder import load_image

    return np.stack([load_image(row.image, size, "--data") for row in rows])


def image_batches(rows: list, size: int, batch_size: int, progress: bool, description: str):
    """float32 NCHW tensors in [-1, 1], ``batch_size`` images at a time, with a progress bar."""
    import torch
    from tqdm.auto import tqdm

    from .imagefolder import to_unit_range

    for start in tqdm(range(0, len(rows), batch_size), desc=description, unit="batch", disable=not progress):
        yield torch.from_numpy(to_unit_range(load_images(rows[start:start + batch_size], size)))


def identity_of(args, schedule, base, data_sha256: str, size: int, **extra) -> dict:
    """A run's identity: the data, the base and every hyper-parameter (not --steps: a resume may extend)."""
    from dataclasses import asdict

    hyper = {k: v for k, v in asdict(schedule).items() if k not in ("steps", "checkpoint_every")}
    return {"command": args.command_name, "data": [str(Path(d).absolute()) for d in args.data],
            "data_sha256": data_sha256, "base": base, "resolution": size, **hyper, **extra}


def write_model(out_dir: Path, base: Path, trained: dict, record: dict, pipeline_class: str | None = None) -> Path:
    """``out_dir``: the base folder with the ``trained`` parts (name -> module) saved anew, every other file
    hard-linked, and ``training.json``; built beside it and renamed into place. ``pipeline_class`` renames the
    diffusers pipeline in ``model_index.json`` (train-pix2pix makes an InstructPix2Pix model of a text-to-image
    one)."""
    from fashiongen.random_checkpoints.sd import _save_text_encoder
    from fashiongen.runtime.files import link_or_copy, staged_folder

    with staged_folder(out_dir, "model_index.json", "a diffusers checkpoint") as stage:
        for source in sorted(Path(base).rglob("*")):
            relative = source.relative_to(base)
            if source.is_file() and relative.parts[0] not in trained and relative != Path(RECORD):
                (stage / relative).parent.mkdir(parents=True, exist_ok=True)
                link_or_copy(source, stage / relative)
        for name, module in trained.items():
            if name == "text_encoder":  # SD 1.5's key names, which every transformers version reads
                _save_text_encoder(module, stage / name)
            else:
                module.save_pretrained(stage / name, safe_serialization=True)
        if pipeline_class is not None:
            index_file = stage / "model_index.json"
            index = {**json.loads(index_file.read_text()), "_class_name": pipeline_class}
            index_file.unlink()  # a hard link to the base's: write a new file, never through the link
            index_file.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        (stage / RECORD).write_text(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
    return out_dir


def write_record(folder: Path, record: dict) -> Path:
    """``folder/training.json``, written atomically (trainers whose output is files, not a model folder)."""
    from fashiongen.runtime.files import atomic_file

    with atomic_file(Path(folder) / RECORD) as tmp:
        tmp.write_text(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
    return Path(folder) / RECORD


def training_record(args, losses: list[float], started: float, **extra) -> dict:
    """How the model was made: the command's arguments, seed, steps, final loss, wall time."""
    arguments = {k: v for k, v in vars(args).items() if not callable(v)}
    return {"command": f"fashiongen {args.command_name}", "arguments": arguments, "seed": args.seed,
            "steps": len(losses), "final_loss": losses[-1] if losses else None,
            "wall_seconds": round(time.perf_counter() - started, 1), **extra}


def add_diffusion_arguments(p, what: str) -> None:
    """``--out``, the schedule, ``--ema-decay`` and ``--snr-gamma``: what train and train-pix2pix take alike."""
    p.add_argument("--out", type=Path, required=True, help=f"run folder; the trained {what} goes to OUT/model")
    add_schedule_arguments(p, steps=1000, batch_size=16, learning_rate=1e-4, checkpoint_every=250)
    p.add_argument("--ema-decay", type=float, default=None,
                   help="keep an exponential moving average of the weights and write it as the model (e.g. 0.999)")
    p.add_argument("--snr-gamma", type=float, default=None,
                   help="min-SNR loss weighting with this gamma (5.0 is the paper's; default off)")
    p.add_argument("--snr-floor", type=float, default=None, metavar="LAMBDA",
                   help="count the error of the predicted clean latent at least LAMBDA times at every noise level: "
                   "the loss weight becomes max(min(SNR, gamma), LAMBDA) / SNR (/ (SNR + 1) for v-prediction, as "
                   "min-SNR's). The noise-prediction loss weighs that error by SNR, next to nothing on the noisiest "
                   "steps, which are where a sample's layout is "
                   "decided (and where only an editor's source image tells the garment's type and shape); e.g. 0.2 "
                   "(default off; on the demo editor, 1,500 more steps at 0.2 lowered the imperative pairs' error of "
                   "the clean latent at t=950 from 0.24 to 0.20 and left edit success where it was)")
    p.add_argument("--noise-offset", type=float, default=0.0, metavar="S",
                   help="offset noise (diffusers' --noise_offset): add S times one normal draw per image and latent "
                   "channel to the training noise. The schedule's noisiest step still holds a trace of the clean "
                   "latent's channel means, the picture's overall colour, which a sample's pure noise does not, so "
                   "a model can learn to read colour from that trace rather than from its conditioning (an editor, "
                   "from its source image). e.g. 0.1 (default 0: off; on the demo editor, with "
                   "--source-init-scale 0.5 --snr-floor 1.0, 0.1 raised imperative edit success from 9.5 to 15.5%% and "
                   "lowered caption edits' from 46.0 to 41.0%%: a garment's colour against the white background still "
                   "shows through the noise, which a constant per channel does not hide)")


def check_noise_offset(value: float) -> None:
    """--noise-offset: 0 (off) to 1 (an offset as large as the noise itself)."""
    if not (math.isfinite(value) and 0 <= value <= 1):
        raise InputError(f"--noise-offset: must be between 0 and 1, got {value}")


def check_snr_weighting(gamma: float | None, floor: float | None) -> None:
    """--snr-gamma and --snr-floor: positive, the floor under the gamma."""
    for flag, value in (("--snr-gamma", gamma), ("--snr-floor", floor)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise InputError(f"{flag}: must be a positive number, got {value}")
    if gamma is not None and floor is not None and floor > gamma:
        raise InputError(f"--snr-floor: must not exceed --snr-gamma ({gamma}), got {floor}")


# -- train ------------------------------------------------------------------------------------------------
def add_arguments(p) -> None:
    p.description = ("Train an SD 1.x text-to-image model on an imagefolder (captions in 'text'), diffusers' "
                     "recipe: fine-tune --model, or start from random weights of a --config size. --out is the "
                     "run folder (run.json, checkpoints/, latents-cache.safetensors, validation/); the trained "
                     "model is written to OUT/model, a diffusers folder that `fashiongen export --model "
                     "OUT/model` takes. With a VAE trained first by train-vae --config, start from its OUT/model "
                     "with --model ... --train-text-encoder --caption-dropout 0.1.")
    add_base_arguments(p)
    add_data_arguments(p, "metadata.jsonl rows with file_name and a 'text' caption")
    add_diffusion_arguments(p, "model")
    p.add_argument("--train-text-encoder", action=argparse.BooleanOptionalAction, default=None,
                   help="train the text encoder with the UNet (default: on with --config, off with --model)")
    p.add_argument("--caption-dropout", type=float, default=None, metavar="P",
                   help="replace a caption by \"\" with probability P, so classifier-free guidance works (default "
                   "0.1 with --config; 0 with --model, whose checkpoint already knows the empty prompt)")
    p.add_argument("--validation-prompt", action="append", default=[], metavar="TEXT",
                   help="sample this prompt at the end (and every --validation-every steps) into "
                   "OUT/validation/step-N.png (DPM-Solver, 20 steps, fixed seed); repeatable")
    p.add_argument("--validation-every", type=int, default=None, metavar="N",
                   help="also sample the validation prompts every N steps")
    p.add_argument("--validation-images", type=int, default=4, help="images per validation prompt (default 4)")
    p.set_defaults(command_name="train")


@dataclass
class Options:
    """The recipe's choices that are not the schedule's, with --config / --model defaults resolved."""

    train_text_encoder: bool
    caption_dropout: float
    snr_gamma: float | None
    snr_floor: float | None = None
    noise_offset: float = 0.0

    @classmethod
    def from_args(cls, args) -> "Options":
        scratch = args.config is not None
        options = cls(train_text_encoder=scratch if args.train_text_encoder is None else args.train_text_encoder,
                      caption_dropout=(0.1 if scratch else 0.0) if args.caption_dropout is None
                      else args.caption_dropout, snr_gamma=args.snr_gamma, snr_floor=args.snr_floor,
                      noise_offset=args.noise_offset)
        if not 0 <= options.caption_dropout < 1:
            raise InputError(f"--caption-dropout: must be in [0, 1), got {options.caption_dropout}")
        check_snr_weighting(options.snr_gamma, options.snr_floor)
        check_noise_offset(options.noise_offset)
        for name in ("validation_every", "validation_images"):
            if getattr(args, name) is not None and getattr(args, name) < 1:
                raise InputError(f"--{name.replace('_', '-')}: must be at least 1, got {getattr(args, name)}")
        return options


def run(args) -> int:
    from .runs import RunFolder, make_accelerator, train

    started = time.perf_counter()
    schedule = schedule_from_args(args, ema_decay=args.ema_decay)
    options = Options.from_args(args)
    config = read_config(args.config, args.resolution) if args.config is not None else None
    geometry = require_text_to_image(args, base_geometry(args, config))
    size = training_size(args.resolution, geometry)
    rows = read_data(args.data, require=("text",))
    data_sha256 = data_digest(rows)
    run_folder = RunFolder(args.out, identity_of(args, schedule, base_identity(args, config), data_sha256, size,
                                                 **options.__dict__))
    run_folder.begin(args.resume)  # every check above ran first: a failed start leaves no run folder behind
    base = prepare_base(args, config, run_folder.out)
    parts = load_base(base)
    device = make_accelerator(schedule).device
    data = CachedData.build(rows, parts, size, data_sha256, run_folder.out / LATENTS_CACHE, device,
                            progress=not args.no_progress)
    loss = DiffusionLoss.build(parts, data, schedule, options, device)
    trainable = {"unet": parts["unet"]}
    if options.train_text_encoder:
        trainable["text_encoder"] = parts["text_encoder"]
    validate = Validation(parts, args.validation_prompt, args.validation_images, size, run_folder.out / VALIDATION)
    on_step = validate.every(args.validation_every)
    losses = train(run_folder, schedule, trainable, loss, resume=args.resume, progress=not args.no_progress,
                   on_step=on_step, description="train")
    validate(schedule.steps)
    record = training_record(args, losses, started, step_losses=losses, prediction_type=loss.prediction_type,
                             resolution=size, **options.__dict__)
    model = write_model(run_folder.out / MODEL, base, trainable, record)
    print(f"wrote {model} ({len(losses)} steps, final loss {losses[-1]:.4f})")
    return 0


@dataclass
class CachedData:
    """The data set as the loop reads it: each image's VAE posterior and each caption's token ids."""

    mean: torch.Tensor
    std: torch.Tensor
    ids: torch.Tensor
    empty_ids: torch.Tensor  # the empty caption, for caption dropout
    scaling_factor: float

    @classmethod
    def build(cls, rows, parts: dict, size: int, data_sha256: str, cache: Path, device, progress: bool):
        tokenizer = parts["tokenizer"]
        mean, std = cached_posteriors(rows, parts["vae"], size, data_sha256, cache, device, progress)
        return cls(mean, std, tokenize(tokenizer, [row.text for row in rows]), tokenize(tokenizer, [""]),
                   parts["vae"].config.scaling_factor)

    def __len__(self) -> int:
        return len(self.mean)

    def draw(self, index, generator, caption_dropout: float):
        """Latents sampled from the cached posteriors, and token ids with captions dropped at random."""
        import torch

        latents = sample_latents(self.mean[index], self.std[index], generator, self.scaling_factor)
        keep = torch.rand(len(index), generator=generator) >= caption_dropout
        return latents, torch.where(keep[:, None], self.ids[index], self.empty_ids)


def sample_latents(mean, std, generator, scaling_factor: float):
    """What the recipe's ``vae.encode(x).latent_dist.sample() * scaling_factor`` draws, from a cached posterior."""
    import torch

    return (mean + std * torch.randn(mean.shape, generator=generator)) * scaling_factor


def tokenize(tokenizer, texts: list[str]):
    return tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def cached_tensors(cache: Path, key: str, compute) -> dict:
    """The tensors in ``cache`` when it was written for ``key`` (a digest of everything they depend on), else
    ``compute()``'s (a dict of CPU tensors), written there first: work done once per run folder, and redone when
    its inputs change."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from fashiongen.runtime.files import atomic_file

    if cache.is_file():
        with safe_open(str(cache), "pt") as f:
            if (f.metadata() or {}).get("key") == key:
                return {name: f.get_tensor(name) for name in f.keys()}
    tensors = {name: tensor.contiguous() for name, tensor in compute().items()}
    with atomic_file(cache) as tmp:
        save_file(tensors, str(tmp), metadata={"key": key})
    return tensors


def cached_posteriors(rows, vae, size: int, data_sha256: str, cache: Path, device, progress: bool):
    """Each image's posterior mean and std (float32, on the CPU), read from ``cache`` when its key (data, VAE
    weights, size) matches, else computed and written there."""
    import torch

    def encode() -> dict:
        vae.to(device).eval()
        means, stds = [], []
        with torch.no_grad():
            for images in image_batches(rows, size, 16, progress, "encode latents"):
                posterior = vae.encode(images.to(device)).latent_dist
                means.append(posterior.mean.float().cpu())
                stds.append(posterior.std.float().cpu())
        return {"mean": torch.cat(means), "std": torch.cat(stds)}

    key = hashlib.sha256(f"{data_sha256} {weights_digest(vae)} {size}".encode()).hexdigest()
    tensors = cached_tensors(cache, key, encode)
    return tensors["mean"], tensors["std"]


def weights_digest(module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


@dataclass
class DiffusionLoss:
    """``loss_fn(step, micro, generator)`` of the shared loop: diffusers' text-to-image loss on one micro-batch.

    :meth:`draw` is what a recipe changes: train-pix2pix's adds the latents the UNet sees beside the noisy ones."""

    unet: object
    text_encoder: object
    scheduler: object  # DDPMScheduler: add_noise, get_velocity, alphas_cumprod
    data: CachedData
    schedule: object
    options: Options
    device: object

    @property
    def prediction_type(self) -> str:
        return self.scheduler.config.prediction_type

    @classmethod
    def build(cls, parts: dict, data: CachedData, schedule, options: Options, device) -> "DiffusionLoss":
        from diffusers import DDPMScheduler

        scheduler = DDPMScheduler.from_config(parts["scheduler_config"])
        if scheduler.config.prediction_type not in ("epsilon", "v_prediction"):
            raise InputError(f"--model: scheduler/scheduler_config.json has prediction_type "
                             f"'{scheduler.config.prediction_type}'; train supports epsilon and v_prediction")
        if not options.train_text_encoder:
            parts["text_encoder"].requires_grad_(False).to(device).eval()
        parts["vae"].requires_grad_(False)
        return cls(parts["unet"], parts["text_encoder"], scheduler, data, schedule, options, device)

    def __call__(self, step: int, micro: int, generator):
        import torch
        import torch.nn.functional as F

        size = self.schedule.batch_size
        latents, ids, condition = self.draw(step_batch(len(self.data), self.schedule, step, micro), generator)
        noise = self.noise(latents.shape, generator)
        timesteps = torch.randint(0, self.scheduler.config.num_train_timesteps, (size,), generator=generator)
        latents, ids, noise, timesteps = (t.to(self.device) for t in (latents, ids, noise, timesteps))
        noisy = self.scheduler.add_noise(latents, noise, timesteps)
        if condition is not None:  # InstructPix2Pix: the image latents as extra input channels
            noisy = torch.cat([noisy, condition.to(self.device)], dim=1)
        with torch.set_grad_enabled(self.options.train_text_encoder):
            hidden = self.text_encoder(ids, return_dict=False)[0]
        prediction = self.unet(noisy, timesteps, hidden, return_dict=False)[0]
        target = noise if self.prediction_type == "epsilon" else self.scheduler.get_velocity(latents, noise, timesteps)
        per_image = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        return (per_image * self.weights(timesteps)).mean()

    def noise(self, shape, generator):
        """The training noise: a normal draw, plus with ``noise_offset`` S one more per image and channel, times
        S, spread over the whole latent (offset noise, diffusers' ``--noise_offset``)."""
        import torch

        noise = torch.randn(shape, generator=generator)
        if self.options.noise_offset:
            noise = noise + self.options.noise_offset * torch.randn(tuple(shape[:2]) + (1, 1), generator=generator)
        return noise

    def draw(self, index, generator):
        """The micro-batch: target latents, token ids, and the latents the UNet sees beside the noisy ones
        (None: text-to-image has none)."""
        latents, ids = self.data.draw(index, generator, self.options.caption_dropout)
        return latents, ids, None

    def weights(self, timesteps):
        """Per-example loss weights: 1, or min-SNR-gamma (arXiv:2303.09556) as diffusers' example, min(SNR, gamma)
        / SNR for epsilon and / (SNR + 1) for v-prediction, with SNR clamped from below by ``snr_floor`` too.

        Both read the loss as a weighted error of the clean latent: noise prediction weighs it by SNR,
        v-prediction by SNR + 1; the clamp sets the weight that error gets instead."""
        from diffusers.training_utils import compute_snr

        if self.options.snr_gamma is None and self.options.snr_floor is None:
            return 1.0
        snr = compute_snr(self.scheduler, timesteps)
        clipped = snr.clamp(min=self.options.snr_floor, max=self.options.snr_gamma)
        return clipped / snr if self.prediction_type == "epsilon" else clipped / (snr + 1)


@dataclass
class Validation:
    """A PNG grid of the validation prompts (a row each) sampled with the current weights: DPM-Solver++,
    20 steps, the same seed every time so that grids of successive steps compare."""

    parts: dict
    prompts: list[str]
    images: int
    size: int
    folder: Path

    def every(self, interval: int | None):
        """The shared loop's ``on_step``: sample every ``interval`` steps (the live weights, not the EMA)."""
        if not self.prompts or interval is None:
            return None
        return lambda step: self(step + 1) if (step + 1) % interval == 0 else None

    def __call__(self, step: int) -> Path | None:
        import numpy as np
        import torch
        from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline
        from PIL import Image

        from fashiongen.runtime.files import atomic_file

        if not self.prompts:
            return None
        parts = self.parts
        modes = {name: parts[name].training for name in ("unet", "text_encoder")}
        pipe = StableDiffusionPipeline(
            vae=parts["vae"].to(parts["unet"].device), text_encoder=parts["text_encoder"],
            tokenizer=parts["tokenizer"], unet=parts["unet"],
            scheduler=DPMSolverMultistepScheduler.from_config(parts["scheduler_config"]),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        for name in modes:
            parts[name].eval()
        generator = torch.Generator().manual_seed(VALIDATION_SEED)
        rows = [pipe(prompt, height=self.size, width=self.size, num_inference_steps=VALIDATION_STEPS,
                     num_images_per_prompt=self.images, generator=generator, output_type="np").images
                for prompt in self.prompts]
        for name, training in modes.items():
            parts[name].train(training)
        grid = np.concatenate([np.concatenate(list(row), axis=1) for row in rows], axis=0)
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"step-{step:07d}.png"
        with atomic_file(path) as tmp:
            Image.fromarray((grid * 255).round().astype(np.uint8)).save(tmp, format="PNG")
        return path
