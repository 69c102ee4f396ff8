"""Training commands: ``dataset`` (torch-free) and the trainers of ``training/`` (torch side).

Each command's options live with its code (``add_arguments``, ``run``) in a module that imports torch only
when it runs, so building the parser keeps ``fashiongen --help`` and the runtime commands torch-free.
"""
from __future__ import annotations

import importlib

COMMANDS = {
    "dataset": ("fashiongen.training.dataset",
                "draw the procedural fashion data set (worn and product views, label maps, captions)"),
    "train-vae": ("fashiongen.training.autoencoder", "train the VAE of an SD 1.x folder on imagefolders"),
    "train-tiny-vae": ("fashiongen.training.tiny_autoencoder",
                       "distil a tiny VAE (TAESD, AutoencoderTiny) from an SD 1.x folder's VAE on imagefolders"),
    "train": ("fashiongen.training.text_to_image",
              "train or fine-tune an SD 1.x checkpoint on captioned images (text to image)"),
    "train-pix2pix": ("fashiongen.training.instruct_pix2pix",
                      "train an InstructPix2Pix editor on pairs of catalog items (approach 2: edit the retrieved item)"),
    "train-embedding": ("fashiongen.training.textual_inversion",
                        "learn a new token by textual inversion (A1111 .pt and diffusers files)"),
    "train-lcm-lora": ("fashiongen.training.lcm_lora",
                       "distil an LCM-LoRA (4-step sampling, --preset fast) from an SD 1.x checkpoint on images"),
    "train-segmenter": ("fashiongen.training.segmenter",
                        "train a SegFormer clothes segmenter on images and label maps"),
    "train-clip": ("fashiongen.training.contrastive",
                   "train or fine-tune a CLIP contrastively on captioned images (catalog retrieval)"),
    "train-captioner": ("fashiongen.training.captioning",
                        "train or fine-tune a BLIP captioner on captioned images (catalog captions)"),
}


def register(sub) -> None:
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=help_text, description=module.__doc__.split("\n\n")[0])
        module.add_arguments(p)
        p.set_defaults(run=module.run)
