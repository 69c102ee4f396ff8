"""``fashiongen train-lcm-lora``: distil an LCM-LoRA from an SD 1.x checkpoint (the teacher) on an imagefolder.

The recipe is diffusers' ``examples/consistency_distillation/train_lcm_distill_lora_sd_wds.py`` (latent
consistency distillation, arXiv:2310.04378; LCM-LoRA, arXiv:2311.05556), on this project's data and loop:

- the **student** is the teacher's UNet with a LoRA (peft ``LoraConfig``, ``--rank``, ``--lora-alpha``) on the
  modules the diffusers script targets: attention (to_q/k/v/out, proj_in/out), feed-forward, the ResNet convs,
  shortcuts, time-embedding projections and the down-/upsampler convs;
- the **teacher** is the same UNet with the LoRA switched off: its weights are frozen (outside the optimizer), so
  it is exactly the base checkpoint, without a second copy of the UNet in memory;
- the **target** network is the student itself under ``no_grad``, as the LoRA script does ("we do not use a
  separate target network for LCM-LoRA distillation"); the full-UNet LCM script keeps an EMA target instead;
- each step: a latent of the data, a DDIM timestep ``t = (n+1)k - 1`` (``k = num_train_timesteps /
  --num-ddim-timesteps``) and a guidance ``w ~ U[--w-min, --w-max]``; the latent noised to ``t``; the teacher's
  classifier-free estimate ``cond + w (cond - uncond)`` (uncond: the empty prompt "") of x0 and of the noise;
  one DDIM step to ``t - k``; the loss between the student's consistency function at ``t`` and the target's at
  ``t - k``, each ``c_skip x + c_out x0`` with the boundary scalings of LCMScheduler (sigma_data 0.5,
  ``--timestep-scaling`` 10); Huber (``--loss huber``, c = ``--huber-c``) or MSE.

The data path is ``fashiongen train``'s (:mod:`.text_to_image`): each image's VAE posterior cached once in
``OUT/latents-cache.safetensors``, a step's latent drawn from it with the step's generator; the text encoder
is frozen. The loop, checkpoints (the LoRA weights only) and exact ``--resume`` are :func:`.runs.train`'s.

Layout of ``--out`` (a run folder, as ``train-embedding``'s: the result is a file, not a model folder)::

    run.json                          what defines the run (a --resume must match it)
    checkpoints/step-NNNNNNN/         the last resumable checkpoint (LoRA weights, optimizer)
    latents-cache.safetensors         the VAE posteriors of the data
    pytorch_lora_weights.safetensors  the LCM-LoRA: diffusers / peft layout (``unet.<module>.lora_A.weight``,
                                      ``lora_B``; the LoraConfig with its alphas in the header's
                                      ``lora_adapter_metadata``), as diffusers' ``save_lora_weights`` writes it
    training.json                     arguments, seed, every step's loss, wall time

``pipe.load_lora_weights(OUT)`` finds the file by diffusers' default name; ``fashiongen export --model TEACHER
--lcm-lora OUT/pytorch_lora_weights.safetensors`` merges it, and the folder then samples with ``--preset fast``
(LCM, 4 steps, guidance 1). Importing this module imports no torch (the CLI builds every parser at start-up).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fashiongen.runtime.errors import InputError

from .options import add_schedule_arguments, schedule_from_args, step_batch

if TYPE_CHECKING:
    import torch

LORA_FILE = "pytorch_lora_weights.safetensors"  # diffusers' default weight name: load_lora_weights(OUT) finds it
#: The diffusers LCM-LoRA script's default targets (peft matches each as the end of a module's name).
TARGET_MODULES = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1",
                  "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj")
SIGMA_DATA = 0.5


def add_arguments(p) -> None:
    from .text_to_image import add_data_arguments

    p.description = ("Distil an LCM-LoRA from an SD 1.x checkpoint (the teacher, --model) on an imagefolder "
                     "(captions in 'text'): diffusers' LCM-LoRA recipe (latent consistency distillation along a "
                     "skipping-step DDIM solver of the teacher's guided estimate). Writes "
                     "OUT/pytorch_lora_weights.safetensors (diffusers / peft LoRA: load_lora_weights, and "
                     "`fashiongen export --model TEACHER --lcm-lora FILE`, whose folder then samples in 4 steps "
                     "with --preset fast) and OUT/training.json; --out is the run folder (run.json, checkpoints/, "
                     "latents-cache.safetensors, --resume).")
    p.add_argument("--model", type=Path, required=True, metavar="DIR",
                   help="the teacher: an SD 1.x diffusers folder (e.g. a `fashiongen train` run's OUT/model)")
    add_data_arguments(p, "metadata.jsonl rows with file_name and a 'text' caption", config=False)
    p.add_argument("--out", type=Path, required=True, help="run folder; the LoRA goes to OUT/" + LORA_FILE)
    add_schedule_arguments(p, steps=1000, batch_size=12, learning_rate=1e-4, checkpoint_every=200)
    p.add_argument("--rank", type=int, default=64, help="LoRA rank (default 64, LCM-LoRA's)")
    p.add_argument("--lora-alpha", type=float, default=None,
                   help="LoRA alpha: the update is scaled by alpha / rank (default: the rank, i.e. scale 1)")
    p.add_argument("--w-min", type=float, default=3.0,
                   help="smallest guidance w drawn for the teacher's estimate cond + w (cond - uncond) (default 3)")
    p.add_argument("--w-max", type=float, default=15.0, help="largest guidance w drawn (default 15)")
    p.add_argument("--num-ddim-timesteps", type=int, default=50,
                   help="steps of the DDIM solver distilled along; each skips num_train_timesteps / N (default 50)")
    p.add_argument("--loss", choices=("huber", "l2"), default="huber",
                   help="distance between student and target (default huber, the LCM-LoRA recipe's)")
    p.add_argument("--huber-c", type=float, default=0.001, help="the Huber loss's c (default 0.001)")
    p.add_argument("--timestep-scaling", type=float, default=10.0,
                   help="timestep scaling of the consistency boundary conditions c_skip / c_out (default 10, "
                   "LCMScheduler's)")
    p.set_defaults(command_name="train-lcm-lora")


@dataclass(frozen=True)
class Distillation:
    """The recipe's numbers that are not the schedule's, checked."""

    rank: int
    lora_alpha: float
    w_min: float
    w_max: float
    num_ddim_timesteps: int
    loss: str
    huber_c: float
    timestep_scaling: float

    @classmethod
    def from_args(cls, args) -> "Distillation":
        alpha = float(args.rank if args.lora_alpha is None else args.lora_alpha)
        options = cls(args.rank, alpha, args.w_min, args.w_max, args.num_ddim_timesteps, args.loss, args.huber_c,
                      args.timestep_scaling)
        options.check()
        return options

    def check(self) -> None:
        if self.rank < 1:
            raise InputError(f"--rank: must be at least 1, got {self.rank}")
        if not self.lora_alpha > 0:
            raise InputError(f"--lora-alpha: must be positive, got {self.lora_alpha:g}")
        if not 0 <= self.w_min <= self.w_max < float("inf"):
            raise InputError(f"--w-min / --w-max: need 0 <= w-min <= w-max, got {self.w_min:g} and {self.w_max:g}")
        if self.num_ddim_timesteps < 1:
            raise InputError(f"--num-ddim-timesteps: must be at least 1, got {self.num_ddim_timesteps}")
        if not self.huber_c > 0:
            raise InputError(f"--huber-c: must be positive, got {self.huber_c:g}")
        if not self.timestep_scaling > 0:
            raise InputError(f"--timestep-scaling: must be positive, got {self.timestep_scaling:g}")


def run(args) -> int:
    path, losses = train_lcm_lora(args)
    print(f"wrote {path}: {len(losses)} steps, loss {losses[0]:.5f} -> {losses[-1]:.5f}")
    return 0


def train_lcm_lora(args) -> tuple[Path, list[float]]:
    """Distil the LoRA (see the module's docstring); every input is checked, and ``--out`` claimed (or the run to
    resume matched), before the teacher loads or the images are encoded."""
    from . import text_to_image as t2i
    from .runs import RunFolder, make_accelerator, train

    started = time.perf_counter()
    schedule = schedule_from_args(args)
    options = Distillation.from_args(args)
    geometry = t2i.require_text_to_image(args, t2i.base_geometry(args, None))
    check_noise_schedule(args.model, options)
    size = t2i.training_size(args.resolution, geometry)
    rows = t2i.read_data(args.data, require=("text",))
    data_sha256 = t2i.data_digest(rows)
    run_folder = RunFolder(args.out, t2i.identity_of(args, schedule, t2i.base_identity(args, None), data_sha256,
                                                     size, **options.__dict__))
    run_folder.begin(args.resume)
    parts = t2i.load_base(args.model)
    device = make_accelerator(schedule).device
    data = t2i.CachedData.build(rows, parts, size, data_sha256, run_folder.out / t2i.LATENTS_CACHE, device,
                                progress=not args.no_progress)
    loss = ConsistencyLoss.build(parts, data, schedule, options, device)
    losses = train(run_folder, schedule, {"lora": lora_layers(loss.unet)}, loss, resume=args.resume,
                   progress=not args.no_progress, description="lcm-lora")
    path = write_lora(run_folder.out / LORA_FILE, loss.unet)
    t2i.write_record(run_folder.out, t2i.training_record(
        args, losses, started, step_losses=losses, images=len(rows), resolution=size, file=LORA_FILE,
        prediction_type=loss.prediction_type, **options.__dict__))
    return path, losses


def check_noise_schedule(model_dir: Path, options: Distillation) -> None:
    """The teacher's scheduler config fits the recipe (an epsilon or v-prediction UNet, at least as many
    training timesteps as solver steps), checked from its file before anything is written or loaded."""
    import json

    config = json.loads((Path(model_dir) / "scheduler" / "scheduler_config.json").read_text())
    prediction_type, timesteps = config.get("prediction_type", "epsilon"), config.get("num_train_timesteps", 1000)
    if prediction_type not in ("epsilon", "v_prediction"):
        raise InputError(f"--model: '{model_dir}' predicts '{prediction_type}' (scheduler/scheduler_config.json); "
                         "train-lcm-lora distils epsilon and v_prediction UNets")
    if options.num_ddim_timesteps > timesteps:
        raise InputError(f"--num-ddim-timesteps: at most the teacher's {timesteps} training timesteps, got "
                         f"{options.num_ddim_timesteps}")


# -- the student: the teacher's UNet with a LoRA ----------------------------------------------------------------
def add_lora(unet, options: Distillation, seed: int):
    """Freeze ``unet`` and add the LoRA (diffusers' peft integration, so the adapter can be switched off for the
    teacher and saved in diffusers' layout). peft initialises lora_B to zero (the student starts as the teacher)
    and lora_A at random from torch's global generator: seeded here, so that a run's result is its seed's."""
    import torch
    from peft import LoraConfig

    unet.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet.add_adapter(LoraConfig(r=options.rank, lora_alpha=options.lora_alpha,
                                    target_modules=list(TARGET_MODULES), init_lora_weights=True))
    return unet


def lora_layers(unet):
    """The student's LoRA layers as one module (the same parameters, not copies): what the shared loop trains and
    checkpoints, so a checkpoint holds the LoRA, not the whole UNet again."""
    import torch

    return torch.nn.ModuleDict({name.replace(".", "/"): module for name, module in unet.named_modules()
                                if name.endswith((".lora_A", ".lora_B"))})


def write_lora(path: Path, unet) -> Path:
    """The student's LoRA as diffusers' ``save_lora_weights`` writes it (``unet.``-prefixed peft keys, the
    LoraConfig in the header), written beside ``path`` and renamed into place."""
    from diffusers import StableDiffusionPipeline
    from peft.utils import get_peft_model_state_dict

    from fashiongen.runtime.files import atomic_file

    weights = {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(unet).items()}
    config = unet.peft_config["default"].to_dict()
    config["target_modules"] = sorted(config["target_modules"])  # a set: sorted, so the header reads the same
    with atomic_file(path) as tmp:
        StableDiffusionPipeline.save_lora_weights(tmp.parent, unet_lora_layers=weights, weight_name=tmp.name,
                                                  unet_lora_adapter_metadata=config)
    return path


# -- the objective ----------------------------------------------------------------------------------------------
@dataclass
class DDIMSolver:
    """The skipping-step DDIM solver LCM distils along (LCM paper, section 4.3): N of the T training timesteps,
    ``t_n = (n + 1) k - 1`` with ``k = T // N``; one step goes from ``t_n`` to ``t_n - k`` (0 at the bottom)."""

    alphas_cumprod: torch.Tensor  # [T]
    skip: int
    count: int

    @classmethod
    def build(cls, alphas_cumprod, num_ddim_timesteps: int) -> "DDIMSolver":
        return cls(alphas_cumprod.float(), len(alphas_cumprod) // num_ddim_timesteps, num_ddim_timesteps)

    def timesteps(self, index):
        """The start ``t_n`` and the end ``t_n - k`` (clamped to 0) of the steps ``index``."""
        start = (index + 1) * self.skip - 1
        return start, (start - self.skip).clamp(min=0)

    def step(self, x0, noise, end):
        """DDIM (eta 0) to ``end`` from the estimates of x0 and the noise."""
        alpha = _per_sample(self.alphas_cumprod.to(x0.device)[end], x0)
        return alpha.sqrt() * x0 + (1 - alpha).sqrt() * noise


def boundary_scalings(t, timestep_scaling: float):
    """LCMScheduler's ``c_skip``, ``c_out`` at the training timestep ``t``: the consistency function
    ``c_skip x + c_out x0`` is x itself at t = 0, and almost x0 elsewhere."""
    scaled = timestep_scaling * t.float()
    return SIGMA_DATA ** 2 / (scaled ** 2 + SIGMA_DATA ** 2), scaled / (scaled ** 2 + SIGMA_DATA ** 2) ** 0.5


def estimates(output, x, t, alphas_cumprod, prediction_type: str):
    """The estimates of x0 and of the noise that a UNet ``output`` at ``x``, timestep ``t`` stands for."""
    alpha = _per_sample(alphas_cumprod.to(x.device)[t], x)
    a, s = alpha.sqrt(), (1 - alpha).sqrt()
    if prediction_type == "epsilon":
        return (x - s * output) / a, output
    return a * x - s * output, a * output + s * x  # v_prediction


def _per_sample(values, like):
    return values.reshape(-1, *([1] * (like.ndim - 1))).to(like.dtype)


@dataclass
class ConsistencyLoss:
    """``loss_fn(step, micro, generator)`` of the shared loop: the LCM-LoRA distillation loss on one micro-batch."""

    unet: object          # the student (peft adapter on); with the adapter off, the teacher
    text_encoder: object
    uncond: torch.Tensor  # the empty prompt's hidden states [1, L, D]
    alphas_cumprod: torch.Tensor
    prediction_type: str
    solver: DDIMSolver
    data: object          # text_to_image.CachedData
    schedule: object
    options: Distillation
    device: object

    @classmethod
    def build(cls, parts: dict, data, schedule, options: Distillation, device) -> "ConsistencyLoss":
        import torch
        from diffusers import DDPMScheduler

        scheduler = DDPMScheduler.from_config(parts["scheduler_config"])  # checked by check_noise_schedule
        prediction_type = scheduler.config.prediction_type
        solver = DDIMSolver.build(scheduler.alphas_cumprod, options.num_ddim_timesteps)
        text_encoder = parts["text_encoder"].requires_grad_(False).to(device).eval()
        parts["vae"].requires_grad_(False)
        unet = add_lora(parts["unet"], options, schedule.seed).to(device)
        with torch.no_grad():
            uncond = text_encoder(data.empty_ids.to(device), return_dict=False)[0]
        return cls(unet, text_encoder, uncond, scheduler.alphas_cumprod.float(), prediction_type, solver, data,
                   schedule, options, device)

    def __call__(self, step: int, micro: int, generator):
        import torch

        size = self.schedule.batch_size
        latents, ids = self.data.draw(step_batch(len(self.data), self.schedule, step, micro), generator, 0.0)
        noise = torch.randn(latents.shape, generator=generator)
        index = torch.randint(0, self.solver.count, (size,), generator=generator)
        w = self.options.w_min + (self.options.w_max - self.options.w_min) * torch.rand(size, generator=generator)
        latents, ids, noise, index, w = (v.to(self.device) for v in (latents, ids, noise, index, w))
        start, end = self.solver.timesteps(index)
        a = _per_sample(self.alphas_cumprod.to(self.device)[start], latents)
        noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
        with torch.no_grad():
            hidden = self.text_encoder(ids, return_dict=False)[0]
        prediction = self.consistency(noisy, start, hidden)
        with torch.no_grad():
            x_prev = self.solver.step(*self.teacher(noisy, start, hidden, w), end)
            target = self.consistency(x_prev, end, hidden)
        return self.distance(prediction.float(), target.float())

    def consistency(self, x, t, hidden):
        """The student's consistency function f(x, t) = c_skip x + c_out x0(x, t)."""
        output = self.unet(x, t, hidden, return_dict=False)[0]
        x0, _ = estimates(output, x, t, self.alphas_cumprod, self.prediction_type)
        c_skip, c_out = (_per_sample(c, x) for c in boundary_scalings(t, self.options.timestep_scaling))
        return c_skip * x + c_out * x0

    def teacher(self, x, t, hidden, w):
        """The teacher's (the UNet without the LoRA) guided estimates of x0 and the noise, the LCM paper's
        ``cond + w (cond - uncond)``; conditional and unconditional in one batch."""
        import torch

        self.unet.disable_adapters()
        try:
            both = self.unet(torch.cat([x, x]), torch.cat([t, t]),
                             torch.cat([hidden, self.uncond.expand_as(hidden)]), return_dict=False)[0]
        finally:
            self.unet.enable_adapters()
        (cond_x0, uncond_x0), (cond_noise, uncond_noise) = (
            v.chunk(2) for v in estimates(both, torch.cat([x, x]), torch.cat([t, t]), self.alphas_cumprod,
                                          self.prediction_type))
        w = _per_sample(w, x)
        return cond_x0 + w * (cond_x0 - uncond_x0), cond_noise + w * (cond_noise - uncond_noise)

    def distance(self, prediction, target):
        """Pseudo-Huber ``sqrt(d^2 + c^2) - c`` (the LCM-LoRA recipe; robust to the target's outliers) or MSE."""
        import torch
        import torch.nn.functional as F

        if self.options.loss == "l2":
            return F.mse_loss(prediction, target)
        c = self.options.huber_c
        return (torch.sqrt((prediction - target) ** 2 + c ** 2) - c).mean()
