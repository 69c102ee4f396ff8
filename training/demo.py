"""The demo family, trained here from nothing: ``python -m fashiongen.training.demo --work DIR``.

One command makes the data set and trains, on a laptop-class CPU, everything the default run of
``fashiongen generate`` uses, with the project's own commands (each stage is a ``fashiongen`` command line,
printed and logged, so what the demo does is what a user would type):

1. ``dataset``: the procedural garments, worn and product views, 128 px, and edit pairs of the product view.
2. ``vae``: an AutoencoderKL trained from random weights (``train-vae --config``) on both views.
3. ``worn``: the UNet trained from random weights on the worn view (``train --model VAE``), on the folder's
   random CLIP text encoder, frozen: approach 1's generator, a person wearing the garment. Frozen, because
   trained jointly from nothing the encoder collapsed (its captions' hidden states grew alike: cosine
   0.34-0.79 between two captions at init, 0.86-0.99 after 2,000 steps) and the UNet learned to ignore the
   prompt; a random encoder keeps every caption apart from the first step. Then ``worn-decoder``: its VAE's
   decoder tuned on the worn view, the encoder frozen (``train-vae --decoder-only``), as the product one below;
   and ``worn-text``: the model trained on for 2,000 more steps with its text encoder, which binds each colour to
   the garment named (the released worn model).
4. ``tokens``: two learned tokens by textual inversion on the worn model (``train-embedding``):
   ``<studio-style>`` (positive) on the shots whose garment fills the most of the frame, and ``<wrong>``
   (negative) on worn shots spoiled on purpose (blurred, noisy, colours rotated away from their caption).
5. ``product``: the worn model fine-tuned on the product view (``train --model WORN``): approach 3; then
   ``product-decoder``: its VAE's decoder tuned on product shots, the encoder frozen (``train-vae
   --decoder-only``), so the product UNet's latents decode sharper, and ``product-sharpen``: it sharpened as the
   worn one is (the released product model).
6. ``tiny-vae`` and ``lcm-lora``: a tiny decoder distilled from that sharpened VAE (``train-tiny-vae``) and an
   LCM-LoRA from the product model (``train-lcm-lora``): approach 3 in a few steps.
7. ``segmenter``: a SegFormer trained from random weights on the worn view's label maps; ``clip`` and
   ``captioner``: approach 2's retrieval networks, a CLIP (``train-clip``) and a BLIP captioner
   (``train-captioner``) trained from random weights on the product view and its captions, the captioner on
   60,000 more product shots too (``captioner-data``, a data set of another seed); ``segmenter-round-trip``:
   the segmenter fine-tuned with half of its examples the released worn VAE's round trips (``--round-trip``),
   the pictures approach 1 cuts out.
8. ``release``: fp16 copies of the models, the tokens and the LoRA (what is exported, measured and shipped).
9. ``export``: the engine folders (``fashiongen export``), from the fp16 copies, each recording the guidance
   its model samples best at (``--guidance``); the worn one also holds the DeepCache parts (``fashiongen
   deepcache``), so ``generate --fast deepcache`` runs on it; the product one the tiny decoder; and
   ``product-fast`` is the product model with its LCM-LoRA merged (``generate --preset fast``).
   ``catalog`` picks the demo catalog from the product training split (one image per caption, none of the
   held-out combinations) and ``index-catalog`` indexes it (``fashiongen index``) with the fp16 CLIP and
   captioner: the index and its CLIP engine folder are what ``search`` and ``edit --from-catalog`` default to.
10. ``pix2pix``: approach 2's editor, an InstructPix2Pix UNet widened from the released product model and trained
   on the data set's edit pairs (``dataset --edit-pairs``: a training item and its re-render with one or two
   attributes changed, every jitter kept; ``train-pix2pix``), then released in fp16 and exported
   (``engines/pix2pix``, recording the text and image guidance it edits best at): ``fashiongen edit``'s default.
11. ``ship`` (with ``--ship [PARTS]``): the weights and the engine folders (of the parts named, default all) into
   ``fashiongen/demo_models/``, with ``recipe.json`` (every command, seed, wall time, final losses); the part
   ``few-step`` is the tiny decoder's and the LCM-LoRA's fp16 weights (``weights/tiny-vae``, ``weights/lcm-lora``).

Every stage is deterministic from ``--seed``, skipped when its output exists, and resumed from its last
checkpoint when it was interrupted: run the same command again. The segmenter, CLIP and captioner need only the
data set, so they train beside stages 2-5, each side on one thread (see :data:`BESIDE`).

Why 128 px: the SD 1.x VAE's factor 8 gives 16x16 latents, small enough to train the UNet for thousands of steps
on two cores, and a garment's attributes (sleeve, neckline, length, stripes) are legible at 128 px when it fills
enough of the frame: the product view fills it; the worn view is framed from the head to below the garment (a top
spans ~8 latent rows; in a whole-figure framing ~4, and the worn model drew no garment the judge could name).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fashiongen.runtime.errors import InputError
from fashiongen.runtime.files import atomic_file, staged_folder

from .attributes import HELD_OUT, SEGMENT_CLASSES, parse_caption
from .ship import PARTS, half_copy, half_embedding, half_tensors

#: The LCM-LoRA in the release (and shipped, ``weights/lcm-lora``): fp16, kohya / diffusers keys as trained.
LCM_LORA = "lcm-lora/lcm-lora.safetensors"
POSITIVE_TOKEN = "<studio-style>"
NEGATIVE_TOKEN = "<wrong>"
SEED = 19687

#: A trained VAE's decoder tuned on one view, its encoder frozen (``train-vae --decoder-only``).
DECODER_TUNE = {"steps": 2000, "batch_size": 8, "learning_rate": 2e-4, "warmup_steps": 50, "lr_schedule": "cosine"}
#: A tuned decoder then sharpened with the adversarial term (``train-vae --decoder-only --adversarial-weight``).
DECODER_SHARPEN = {"steps": 3000, "batch_size": 8, "learning_rate": 1e-4, "warmup_steps": 50, "lr_schedule": "cosine",
                   "adversarial_weight": 0.5}

#: The demo's sizes and schedules: one place, recorded in recipe.json.
RECIPE = {
    # edit_pairs: InstructPix2Pix pairs of every training item (the item re-rendered with the edit, all else the
    # same), what the pix2pix stage trains on
    "dataset": {"count": 10000, "size": 128, "edit_pairs": 4},
    "model": {  # fields of random_checkpoints.sd.SDSize
        "unet_channels": [32, 64, 128], "layers_per_block": 1, "attention_head_dim": 4,
        "cross_attention_dim": 64, "text_layers": 2, "text_heads": 2, "text_intermediate": 256,
        "vae_channels": [16, 32, 64, 64], "sample_size": 16, "norm_groups": 4,
    },
    "vae": {"steps": 2000, "batch_size": 8, "learning_rate": 5e-4, "warmup_steps": 100, "lr_schedule": "cosine",
            "colour_whitening": 0.375},
    "worn": {"steps": 4000, "batch_size": 32, "learning_rate": 5e-4, "ema_decay": 0.998, "warmup_steps": 100,
             "lr_schedule": "cosine", "snr_gamma": 5.0},
    # the worn model with its text encoder trained too, from the worn stage's (decoder tuned): trained jointly from
    # nothing the encoder collapsed, but from a UNet that already reads the random encoder it binds colours to the
    # garment named (approach 1 cut out, 200 test prompts: type / colour 36.5 / 47.5% before, 45.0 / 63.5% after
    # 2,000 steps). The shipped one ran 2,000 steps of a 2,000-step cosine, then 3,000 more from its fp16 release on
    # a fresh cosine from 1.5e-4 (40.4 min on one thread beside another training; `worn_text_as_run` in
    # recipe.json): 49.0 / 76.0% on a 200-prompt probe that gave the 2,000-step model 43.5 / 65.5%
    "worn_text": {"steps": 5000, "batch_size": 32, "learning_rate": 2e-4, "ema_decay": 0.998, "warmup_steps": 50,
                  "lr_schedule": "cosine", "snr_gamma": 5.0},
    "tokens": {"steps": 150, "batch_size": 16, "learning_rate": 5e-3, "images": 600},
    "product": {"steps": 4000, "batch_size": 32, "learning_rate": 3e-4, "ema_decay": 0.998, "warmup_steps": 100,
                "lr_schedule": "cosine", "snr_gamma": 5.0},
    # the product model's decoder tuned on product shots, its encoder frozen (`train-vae --decoder-only`): the
    # VAE trained 2,000 steps blurs a garment's outline (held-out product renders through it: type 88.5%, shorts
    # read as skirts); the UNets' latent space stays, so nothing else retrains. (The shipped decoder's run began as a
    # 3,000-step cosine and was resumed at step 1,300 as this 2,000-step one, in a session shared with two others.)
    "product_decoder": DECODER_TUNE,
    # then sharpened with the adversarial term (`train-vae --decoder-only --adversarial-weight`): product test
    # renders through it, pattern 89.8 -> 94.5%, neckline 66.5 -> 70.9%; generated shots (200 test prompts) colour
    # 91.5 -> 95.5% (product_sharpen_as_run). The tiny decoder below is distilled from this one: distilled from
    # product-decoder, it left the few-step modes 6-8.5 points of colour under the sharper exact mode
    "product_sharpen": DECODER_SHARPEN,
    # the same for the worn model's decoder on the worn view: the VAE's decoder, trained on both views, drew worn
    # garments soft enough that the judge named 40.5% of their types (whole-figure framing: worn renders through it,
    # cut out); a decoder tuned on product shots alone, 21.5%; this one 58%. On the garment framing, the product-tuned
    # decoder 25.5% type / 46.5% colour, this one 55.5 / 79.0% (with the segmenter then shipped; 71.0 / 83.0% with
    # the one fine-tuned with --blur)
    "worn_decoder": DECODER_TUNE,
    # (sharpened as the product one is, 3,000 steps from the shipped worn model: its round trips of worn test
    # renders, cut out by their true label maps, pattern 74.8 -> 83.5%, colour 79.8 -> 78.8% (400 renders); on 200
    # generated approach-1 shots with the segmenter below, type / colour 54.0 / 77.0% against 59.0 / 77.0% with this
    # decoder (a halo around the figure; a segmenter fine-tuned on its round trips was not tried): not shipped)
    # the few-step parts of approach 3: a tiny decoder distilled from the VAE, an LCM-LoRA from the product UNet
    # (guidance drawn around the scale the product model samples best at, not SD 1.5's 3-15)
    # (AutoencoderTiny keeps one width at every level. The demo VAE's own decoder is small (16 wide at full
    # resolution), so the tiny one barely saves time here: per 128 px image, one ONNX Runtime run on 2 shared cores,
    # full 17.3 ms, 32-wide tiny 13.6 ms, 24-wide 11.1 ms; it is measured here for quality, and for speed on SD 1.5's
    # size in bench/cpu_compare.py)
    # (on the product view alone, in the colour basis: at 1,000 steps on both views, in plain RGB MSE, it drew hues
    # wrong and the judge named 41% of colours right through it, against 89% through the full decoder; at 2,500
    # steps generated shots through it scored type / colour 89.0 / 91.0%. The shipped one ran 2,500 steps of a
    # 2,500-step cosine, then was resumed to 5,000 (the cosine restarted at half the rate))
    # (24 channels, 5,000 steps of pixel MSE alone: held-out product renders through it type / colour 92.0 / 85.5%,
    # through the 16-wide one 84.5 / 85.0%, through the full decoder 97.0 / 95.0% (one judge); it drew striped
    # garments plain, and the judge read black and white striped ones as grey. Now:
    # 32 wide, with the teacher's image (weight 1) and its edges (--edge-weight 4) as targets beside the image,
    # 4,000 steps straight from the shipped product model, 36.5 min on one thread: PSNR to the teacher 35.3 dB (32.7
    # before); on the same 200 generated shots' latents, exact mode through it 93.5 / 89.0% (24-wide: 93.0 / 86.5),
    # pattern 84.5 / 76.0%; 4-step LCM through it 91.5 / 85.0% (88.5 / 85.0); the full decoder 97.0 / 91.5 and
    # 92.5 / 92.0%. The same run with the teacher's terms also on latents jittered by up to 0.3 (--latent-noise:
    # an LCM's 4-step latents are not the exact mode's), probed on the same latents in PyTorch: exact 94.0 / 89.5%,
    # pattern 88.0%, 4-step LCM 92.0 / 87.0%. Distilled from product-sharpen instead: 93.5 / 93.0 and 93.0 / 87.5%;
    # the 4-step LCM's reds came out yellow, its whites pink: its latents' channel means sit 0.03-0.16 nearer zero
    # than the encoder's, which a zero-mean jitter does not cover. With the teacher terms' latents also shifted per
    # image and channel by up to 0.2 (--latent-offset), the same 4,000 steps, 67.1 min on one thread beside another
    # training: exact mode through it 94.5 / 92.5%, 4-step LCM 94.0 / 89.0% (the full decoder 96.5 / 95.5 and 90.0 /
    # 92.0%) on 200 generated shots: shipped, tiny_vae_as_run. 2026-12-04: the shipped one fine-tuned 1,000 steps
    # at 2e-4 with its teacher terms also on the 4-step LCM's own latents (--init, --sampler: the product model with
    # the LCM-LoRA merged, one latent per training caption), 33 min on one thread: on 200 test prompts (another
    # judge) exact mode through it 94.5 / 92.5% (shipped 94.0 / 92.5), 4-step LCM 93.0 / 88.5% (shipped 95.0 / 89.0,
    # full decoder 90.0 / 89.5, exact mode 94.5 / 96.0): not shipped; the LCM's colour is short before any decoder)
    "tiny_vae": {"steps": 4000, "batch_size": 8, "learning_rate": 5e-4, "warmup_steps": 50, "lr_schedule": "cosine",
                 "teacher_weight": 1.0, "edge_weight": 4.0, "latent_noise": 0.3, "latent_offset": 0.2,
                 "size": {"encoder_block_out_channels": [16, 16, 16, 16], "decoder_block_out_channels": [32, 32, 32, 32],
                          "num_encoder_blocks": [1, 1, 1, 1], "num_decoder_blocks": [3, 3, 1, 1]}},
    # (an LCM step costs ~4 UNet passes, ~1 s at batch 8 on one free core; at 200 steps 4-step shots lost 8 points
    # of type and 12 of colour against the 25-step exact mode, at 800 7.5 and 9.5, at 1,600 (resumed) 4 and 2. The
    # first shipped one ran this schedule straight, from the shipped product model, with the teacher's guidance w
    # drawn from 2-6: 38.5 min on one thread beside two other trainings, final loss 0.0087. Once the sharpened
    # decoder raised the exact mode, its 4-step shots were 6.5 colour points under it through the full decoder too.
    # The shipped one draws w from 2.5-3.5, around the exact mode's guidance 4 (w + 1; at 7.5 the product model's
    # colours were 55% right): 45.3 min on one thread beside another training, final loss 0.0074; 200 test prompts
    # (one judge, side by side): exact mode 94.5 / 96.0%, 4-step LCM full decoder 90.0 / 89.5 -> 91.0 / 93.0%,
    # tiny decoder 95.0 / 89.0 -> 94.5 / 91.0% (lcm_lora_as_run))
    "lcm_lora": {"steps": 3200, "batch_size": 8, "learning_rate": 5e-4, "warmup_steps": 20, "lr_schedule": "cosine",
                 "rank": 16, "w_min": 2.5, "w_max": 3.5},
    # the guidance each generator samples best at, recorded in its engine folder (`export --guidance`): measured
    # on 100 held-out prompts of the training combinations (bench/quality.py's judge); product type / colour at
    # 1.5: 75 / 83%, 2.5: 79 / 85%, 4: 83 / 82%, 7.5: 69 / 55%; worn (cut out) at 2: 18 / 25%, 4: 17 / 36%
    "sampling": {"worn": 4.0, "product": 4.0},
    # approach 2's editor, from the released product model (its conv_in widened; only the UNet trains). The shipped
    # one was trained on 36,000 pairs of *catalog items* (the product view's training split, 4 a source item, half
    # told the imperative, half the target's caption), this schedule: 64.7 min on one shared thread, loss 0.0169
    # over the first 100 steps, 0.0131 over the last 100; edit success imperative / caption 5.0 / 44.5%. Such pairs
    # differ in every jitter, so the source says little the caption does not. The data set's edit pairs (now this
    # stage's data: the item re-rendered with only the edit changed) with this schedule, 26.8 min on 2 shared
    # threads: loss 0.0171 -> 0.0128, 4.0 / 45.0% at guidance (2.5, 2.5); 1,000 more steps at 1e-4 with conv_in at
    # 20x (--conv-in-lr-scale 20): 6.0 / 48.0%. Neither shipped: in both, the image channels of conv_in stay near
    # zero (mean |w| 0.003-0.004 against 0.078 for the latent's), the editor keeps the source's layout but not its
    # colour or pattern, and an imperative is followed under 10% of the time. 2026-12-03, second session (1 thread,
    # the same 200 pairs at (2.5, 2.5)): 1,500 more steps with the clean-latent error floored (--snr-floor 0.2,
    # --conv-in-lr-scale 10; 20.6 min): 4.5 / 45.5%; from the product model with the source channels started at
    # 0.25x / 0.5x the latent's (--source-init-scale, --snr-floor 0.2; 3,000 steps, 37.9 / 35.0 min): 8.0 / 40.0%
    # and 8.5 / 40.5%. All keep the garment's outline and lose its colour: with the instruction "" and image
    # guidance 6 a pink long-sleeve tee comes back a black crop top. At training noise levels the source does help
    # (the clean latent's error at t=950 on imperative pairs 0.20 with it, 0.41 with another pair's, 0.09 on pairs
    # told the caption): the UNet sees the source, yet its samples lose the colour. 2026-12-03, sixth session (the
    # judge retrained on the regenerated data set; the shipped editor 4.5 / 50.5% on it, 200 pairs at (4, 2.5)): on
    # the edit pairs from the product model, 3,000 steps, --source-init-scale 0.5 --snr-floor 1.0: 9.5 / 46.0%;
    # the same with --noise-offset 0.1: 15.5 / 41.0% (61.1 min each on one thread, side by side). Both keep the
    # source's outline and draw their own colour. Why, measured on the second in PyTorch (x_t from the source's
    # latent, the prompt "it", the source swapped for its re-render in another colour): at t=999 the clean-latent
    # prediction moves 45-50% of the way between the two sources' latents, at t=800 30-40%, at t=500 10-20%, and
    # it stays near the latent x_t was made from: from t~800 on the editor reads the colour from x_t, which in
    # training always holds the target's colour, and not from its source. A sample's first steps draw a colour
    # from a half-heard source and the noise, and the rest follow it. 2026-12-04: zero terminal SNR instead (the
    # product model's scheduler config: rescale_betas_zero_snr, v_prediction, DDIMScheduler with trailing steps; the
    # same 3,000 steps without the offset, 64 min on one thread): 12.5 / 45.5%. 2026-12-04, with the judge retrained
    # again (the shipped editor 4.0 / 44.5% on it): the offset-noise run's options for 7,000 steps instead of 3,000
    # (--source-init-scale 0.5 --snr-floor 1.0 --noise-offset 0.1, 114 min on one thread, final loss 0.029):
    # 22.5 / 43.0% (asked-for right 55.0 / 66.0%, others kept 37.0 / 62.0%), so more steps help the imperative and not
    # the caption, at about 3 points of imperative success per 1,000 steps. None shipped
    "pix2pix": {"steps": 3000, "batch_size": 32, "learning_rate": 3e-4, "ema_decay": 0.998, "warmup_steps": 100,
                "lr_schedule": "cosine", "snr_gamma": 5.0},
    # the (text, image) guidance the editor edits best at, recorded in engines/pix2pix (`export --guidance
    # --image-guidance`): bench/edit_quality.py's sweep on 50 held-out pairs, success imperative / caption at
    # (7.5, 1.5): 2 / 34%, (4, 2.5): 2 / 50%, (2.5, 2.5): 6 / 44%; on 200 more pairs at (4, 2.5): 4.5 / 36.5%, and
    # 5.0 / 44.5% once exported with the product model's tuned decoder (the bar is 80%: the editor follows captions
    # under half the time and imperatives hardly ever)
    "edit_sampling": {"guidance": 4.0, "image_guidance": 2.5},
    # (blur: approach 1 cuts out generated images, as soft as the VAE decodes them; at 256 px, 4 px is ~2 at 128)
    "segmenter": {"steps": 4000, "batch_size": 16, "learning_rate": 6e-4, "warmup_steps": 100,
                  "lr_schedule": "cosine", "resolution": 256, "blur": 4.0,
                  "size": {"hidden_sizes": [16, 32, 64, 128], "depths": [1, 1, 1, 1], "decoder_hidden_size": 64}},
    # then fine-tuned with half of its examples the released worn VAE's round trips (`--round-trip`): blur is
    # only a stand-in for the decoder, and the blur-trained segmenter named 63% of the garment types of the worn
    # VAE's round trips of test renders (94.5% of the renders themselves); on 200 generated approach-1 images,
    # cut out by each: type / colour / sleeve / length 49.0 / 76.0 / 61.5 / 41.1% before, 59.0 / 77.0 / 79.2 / 50.0%
    # after (segmenter_round_trip_as_run in recipe.json)
    "segmenter_round_trip": {"steps": 1500, "batch_size": 16, "learning_rate": 3e-4, "warmup_steps": 50,
                             "lr_schedule": "cosine"},
    # approach 2's retrieval networks on the product view, from random weights (ClipSize / BlipSize fields); the
    # images stay at 128 px (16 px patches: 64 tokens) because the garment spans nearly the whole frame and its
    # stripes and neckline are a few pixels wide. The shipped ones (seed 19687, 2 shared cores, one thread each):
    # clip: 2,000 steps (32.5 min; held-out text-to-image recall@1 0.892 / @5 0.999 over every test row, image
    # vectors), then resumed to 3,000 (15.2 min; 0.915 / 1.000); at ~3.5 steps/s of batch 64 on an idle thread,
    # 3,000 steps take ~30 min. captioner: 3,000 steps, 14.5 min, greedy captions exact 77.7%, per attribute type
    # 97.5, colour 99.8, pattern 99.9, sleeve 98.6, neckline 68.1, length 95.5% (96 px with 8 px patches,
    # 2,500 steps: neckline 70.9%, type 95.5%, 24.8 min: not kept). Neckline is what both miss most. Both were then
    # resumed on their longer cosine (from 35% and 50% of the peak rate): clip to 5,000 steps (9.8 min; recall@1
    # 0.948 / @5 1.000), captioner to 6,000 (5.9 min; greedy captions exact 84.4%, word accuracy 88.7%, from 77.7 / 84.3).
    "clip": {"steps": 5000, "batch_size": 128, "learning_rate": 5e-4, "warmup_steps": 100, "lr_schedule": "cosine",
             "size": {"text_hidden": 64, "text_layers": 2, "text_heads": 4, "text_intermediate": 256,
                      "vision_hidden": 64, "vision_layers": 3, "vision_heads": 4, "vision_intermediate": 256,
                      "image_size": 128, "patch_size": 16, "projection_dim": 64}},
    # (captioner since 2026-12-02's fourth session: 8 px patches (256 tokens), one straight 6,000-step run, 35.8 min
    # on one thread: greedy captions exact 87.5%, word accuracy 91.3%; necklines 82.2% of held-out product shots
    # (77.5% with 16 px patches), catalog recall@1 94.9% (92.9). With 16 px patches and --flip --zoom 1.1:
    # necklines 78.2%, on unseen combinations 68.6% (77.9 without): not kept)
    # (since 2026-12-03's second session the captioner also reads 60,000 more product shots, `captioner-data`: at
    # 6,000 steps on the 9,000 training shots it captioned them exactly 95.5% of the time and held-out ones 87.5%,
    # an overfit; fine-tuned on 39,000 and then 69,000 shots (5,000 steps each, 22.3 + 26.3 min on one thread):
    # held-out captions exact 96.8%, necklines 95.3% held out and 91.5% on unseen combinations, from 82.2 / 75.4
    # (92.6 / 89.5 after the first 5,000); see captioner_as_run)
    "captioner_data": {"count": 60000, "seed_offset": 1},
    "captioner": {"steps": 16000, "batch_size": 32, "learning_rate": 5e-4, "warmup_steps": 100,
                  "lr_schedule": "cosine",
                  "size": {"hidden": 64, "layers": 2, "heads": 4, "intermediate": 256, "image_size": 128,
                           "patch_size": 8, "projection_dim": 64}},
    # the demo catalog: one product shot per caption of the training split (so no held-out combination), the
    # README's prompt among them (so the demo's search has its exact item)
    "catalog": {"count": 500, "include": ["black short sleeve crewneck crop top"]},
}


#: Recipe keys passed to a stage's command as the flag of the same name where its section has them.
#: A key whose value is ``true`` is a switch (``--flip``).
OPTIONAL_FLAGS = ("ema_decay", "warmup_steps", "lr_schedule", "snr_gamma", "teacher_weight", "edge_weight",
                  "latent_noise", "latent_offset", "zoom", "flip", "adversarial_weight")


@dataclass
class Stage:
    """One ``fashiongen`` command of the recipe: done when ``done`` exists, resumed when ``run_dir`` does."""

    name: str
    argv: list[str]
    done: Path
    run_dir: Path | None = None
    resumable: bool = True
    prepare: object = None  # a callable run before the command (writes its input folders)
    extra: dict = field(default_factory=dict)


def stages(work: Path, seed: int) -> list[Stage]:
    r, data = RECIPE, work / "data"

    def schedule(key: str) -> list[str]:
        s = r[key]
        out = ["--steps", s["steps"], "--batch-size", s["batch_size"], "--learning-rate", s["learning_rate"],
               "--seed", seed, "--checkpoint-every", 100]
        for name in OPTIONAL_FLAGS:
            if name in s:
                flag = "--" + name.replace("_", "-")
                out += [flag] if s[name] is True else [flag, s[name]]
        return [str(x) for x in out]

    worn, product, release = data / "worn", data / "product", work / "release"
    captioner_data = work / "captioner-data"  # more product shots, another seed: the captioner overfits 9,000
    return [
        Stage("dataset", ["dataset", "--out", str(data), "--count", str(r["dataset"]["count"]), "--seed", str(seed),
                          "--size", str(r["dataset"]["size"]), "--edit-pairs", str(r["dataset"]["edit_pairs"])],
              data / "dataset.json", resumable=False),
        Stage("vae", ["train-vae", "--config", str(work / "model-size.json"), "--data", str(worn / "train"),
                      "--data", str(product / "train"), "--resolution", "128", "--out", str(work / "vae"),
                      "--colour-whitening", str(r["vae"]["colour_whitening"]), *schedule("vae")], work / "vae" / "model" / "training.json", work / "vae",
              prepare=lambda: _write_json(work / "model-size.json", r["model"])),
        Stage("worn", ["train", "--model", str(work / "vae" / "model"), "--data", str(worn / "train"),
                       "--no-train-text-encoder", "--caption-dropout", "0.1", "--resolution", "128",
                       "--out", str(work / "worn"), *schedule("worn"),
                       "--validation-prompt", "black short sleeve crewneck crop top",
                       "--validation-prompt", "red striped maxi skirt", "--validation-every", "500"],
              work / "worn" / "model" / "training.json", work / "worn"),
        Stage("worn-decoder", ["train-vae", "--model", str(work / "worn" / "model"), "--decoder-only",
                               "--data", str(worn / "train"), "--resolution", "128",
                               "--colour-whitening", str(r["vae"]["colour_whitening"]),
                               "--out", str(work / "worn-decoder"), *schedule("worn_decoder")],
              work / "worn-decoder" / "model" / "training.json", work / "worn-decoder"),
        Stage("worn-text", ["train", "--model", str(work / "worn-decoder" / "model"), "--data", str(worn / "train"),
                            "--train-text-encoder", "--caption-dropout", "0.1", "--resolution", "128",
                            "--out", str(work / "worn-text"), *schedule("worn_text")],
              work / "worn-text" / "model" / "training.json", work / "worn-text"),
        *[Stage(f"token-{name}", ["train-embedding", "--model", str(work / "worn-text" / "model"),
                                  "--data", str(work / "token-data" / name), "--token", token, "--init-word", init,
                                  "--resolution", "128", "--out", str(work / f"token-{name}"), *schedule("tokens")],
                work / f"token-{name}" / "training.json", work / f"token-{name}",
                prepare=lambda name=name: make_token_data(worn / "train", work / "token-data" / name, name,
                                                          r["tokens"]["images"], seed))
          for name, token, init in (("studio", POSITIVE_TOKEN, "studio"), ("wrong", NEGATIVE_TOKEN, "bad"))],
        Stage("product", ["train", "--model", str(work / "worn-text" / "model"), "--data", str(product / "train"),
                          "--caption-dropout", "0.1", "--resolution", "128", "--out", str(work / "product"),
                          *schedule("product"),
                          "--validation-prompt", "black short sleeve crewneck crop top"],
              work / "product" / "model" / "training.json", work / "product"),
        Stage("product-decoder", ["train-vae", "--model", str(work / "product" / "model"), "--decoder-only",
                                  "--data", str(product / "train"), "--resolution", "128",
                                  "--colour-whitening", str(r["vae"]["colour_whitening"]),
                                  "--out", str(work / "product-decoder"), *schedule("product_decoder")],
              work / "product-decoder" / "model" / "training.json", work / "product-decoder"),
        Stage("product-sharpen", ["train-vae", "--model", str(work / "product-decoder" / "model"), "--decoder-only",
                                  "--data", str(product / "train"), "--resolution", "128",
                                  "--colour-whitening", str(r["vae"]["colour_whitening"]),
                                  "--out", str(work / "product-sharpen"), *schedule("product_sharpen")],
              work / "product-sharpen" / "model" / "training.json", work / "product-sharpen"),
        Stage("tiny-vae", ["train-tiny-vae", "--model", str(work / "product-sharpen" / "model"), "--config",
                           str(work / "tiny-vae-size.json"), "--data", str(product / "train"), "--resolution", "128",
                           "--colour-whitening", str(r["vae"]["colour_whitening"]), "--out", str(work / "tiny-vae"),
                           *schedule("tiny_vae")],
              work / "tiny-vae" / "model" / "training.json", work / "tiny-vae",
              prepare=lambda: _write_json(work / "tiny-vae-size.json", r["tiny_vae"]["size"])),
        Stage("lcm-lora", ["train-lcm-lora", "--model", str(work / "product" / "model"),
                           "--data", str(product / "train"), "--resolution", "128", "--out", str(work / "lcm-lora"),
                           "--rank", str(r["lcm_lora"]["rank"]),
                           "--w-min", str(r["lcm_lora"]["w_min"]), "--w-max", str(r["lcm_lora"]["w_max"]),
                           *schedule("lcm_lora")],
              work / "lcm-lora" / "training.json", work / "lcm-lora"),
        Stage("segmenter", ["train-segmenter", "--config", str(work / "segmenter-size.json"),
                            "--data", str(worn / "train"), "--eval-data", str(worn / "test"),
                            "--resolution", str(r["segmenter"]["resolution"]), "--blur", str(r["segmenter"]["blur"]),
                            "--out", str(work / "segmenter"), *schedule("segmenter")],
              work / "segmenter" / "model" / "training.json", work / "segmenter",
              prepare=lambda: _write_json(work / "segmenter-size.json", r["segmenter"]["size"])),
        Stage("captioner-data", ["dataset", "--out", str(captioner_data), "--count", str(r["captioner_data"]["count"]),
                                 "--seed", str(seed + r["captioner_data"]["seed_offset"]),
                                 "--size", str(r["dataset"]["size"]), "--test-fraction", "0", "--unseen-count", "0"],
              captioner_data / "dataset.json", resumable=False),
        *[Stage(name, [command, "--config", str(work / f"{name}-size.json"), "--data", str(product / "train"),
                       *extra, "--eval-data", str(product / "test"), "--out", str(work / name), *schedule(name)],
                work / name / "model" / "training.json", work / name,
                prepare=lambda name=name: _write_json(work / f"{name}-size.json", r[name]["size"]))
          for name, command, extra in (("clip", "train-clip", []),
                                       ("captioner", "train-captioner",
                                        ["--data", str(captioner_data / "product" / "train")]))],
        Stage("segmenter-round-trip", ["train-segmenter", "--model", str(work / "segmenter" / "model"),
                                       "--data", str(worn / "train"), "--eval-data", str(worn / "test"),
                                       "--resolution", str(r["segmenter"]["resolution"]),
                                       "--blur", str(r["segmenter"]["blur"]),
                                       "--round-trip", str(work / "worn-text" / "model"),
                                       "--out", str(work / "segmenter-round-trip"), *schedule("segmenter_round_trip")],
              work / "segmenter-round-trip" / "model" / "training.json", work / "segmenter-round-trip"),
        Stage("release", [], release / "done", resumable=False, prepare=lambda: make_release(work)),
        Stage("export-worn", ["export", "--model", str(release / "worn"), "--out", str(work / "engines/worn"),
                              "--guidance", str(r["sampling"]["worn"]),
                              "--embedding", f"{release / 'embeddings' / 'studio-style.pt'}={POSITIVE_TOKEN}",
                              "--embedding", f"{release / 'embeddings' / 'wrong.pt'}={NEGATIVE_TOKEN}"],
              work / "engines/worn/manifest.json", resumable=False),
        Stage("deepcache-worn", ["deepcache", "--model", str(release / "worn"), "--engines", str(work / "engines/worn")],
              work / "engines/worn/unet_shallow.onnx", resumable=False),
        Stage("export-product", ["export", "--model", str(release / "product"), "--out", str(work / "engines/product"),
                                 "--guidance", str(r["sampling"]["product"]), "--tiny-vae", str(release / "tiny-vae")],
              work / "engines/product/manifest.json", resumable=False),
        Stage("export-product-fast", ["export", "--model", str(release / "product"),
                                      "--out", str(work / "engines/product-fast"),
                                      "--lcm-lora", str(release / LCM_LORA),
                                      "--tiny-vae", str(release / "tiny-vae")],
              work / "engines/product-fast/manifest.json", resumable=False),
        Stage("export-segmenter", ["export", "--segmenter", str(release / "segmenter"),
                                   "--out", str(work / "engines/segmenter")],
              work / "engines/segmenter/manifest.json", resumable=False),
        Stage("catalog", [], work / "catalog" / "metadata.jsonl", resumable=False,
              prepare=lambda: make_catalog(product / "train", work / "catalog", r["catalog"]["count"], seed,
                                           r["catalog"]["include"])),
        Stage("index-catalog", ["index", str(work / "catalog"), "--out", str(work / "engines/catalog"),
                                "--clip", str(release / "clip"), "--captioner", str(release / "captioner"),
                                "--no-progress"],
              work / "engines/catalog/index.json", resumable=False),
        Stage("pix2pix", ["train-pix2pix", "--model", str(release / "product"), "--data", str(data / "edits" / "train"),
                          "--resolution", "128", "--out", str(work / "pix2pix"), *schedule("pix2pix")],
              work / "pix2pix" / "model" / "training.json", work / "pix2pix"),
        Stage("release-pix2pix", [], release / "pix2pix" / "model_index.json", resumable=False,
              prepare=lambda: half_copy(work / "pix2pix" / "model", release / "pix2pix")),
        Stage("export-pix2pix", ["export", "--model", str(release / "pix2pix"), "--out", str(work / "engines/pix2pix"),
                                 "--guidance", str(r["edit_sampling"]["guidance"]),
                                 "--image-guidance", str(r["edit_sampling"]["image_guidance"])],
              work / "engines/pix2pix/manifest.json", resumable=False),
    ]


def make_release(work: Path) -> None:
    """fp16 copies of the trained models and the learned tokens: what is exported, measured and shipped."""
    release = work / "release"
    for name, run in (("worn", "worn-text"), ("product", "product-sharpen"), ("segmenter", "segmenter-round-trip"),
                      ("tiny-vae", "tiny-vae"), ("clip", "clip"), ("captioner", "captioner")):
        half_copy(work / run / "model", release / name)
    half_tensors(work / "lcm-lora" / "pytorch_lora_weights.safetensors", release / LCM_LORA)
    (release / "embeddings").mkdir(exist_ok=True)
    for name in ("studio", "wrong"):
        for path in (work / f"token-{name}").glob("*.pt"):  # <token>.pt; every run's diffusers file has one name
            half_embedding(path, release / "embeddings" / path.name)
    (release / "done").write_text("")


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")


# -- the demo catalog -----------------------------------------------------------------------------------------------
def make_catalog(source: Path, out: Path, count: int, seed: int, include: list[str] = ()) -> None:
    """``count`` product shots of the training split, one per caption (the most combinations for the images),
    the captions ``include`` first, the rest drawn in a seeded order; with their metadata rows (attributes
    included, to check searches against).

    The held-out combinations are absent from the training split by construction; checked here all the same,
    since a catalog holding one would make the held-out prompts of approach 2 a plain lookup."""
    from PIL import Image

    if (out / "metadata.jsonl").is_file():
        return
    rows = [json.loads(line) for line in (source / "metadata.jsonl").read_text().splitlines() if line.strip()]
    order = np.random.default_rng([seed, 3]).permutation(len(rows))
    first = {text: rank for rank, text in enumerate(include)}
    order = sorted(order, key=lambda i: first.get(rows[i]["text"], len(first)))  # stable: the rest keep theirs
    chosen: dict[str, dict] = {}
    for i in order:
        chosen.setdefault(rows[i]["text"], rows[i])
    chosen = dict(list(chosen.items())[:count])
    missing = [text for text in include if text not in chosen]
    if len(chosen) < count or missing:
        raise InputError(f"catalog: '{source}' has {len(chosen)} captions for {count} items"
                         + (f", none of them {missing[0]!r}" if missing else ""))
    held = set(HELD_OUT)
    held_out = sorted(text for text in chosen if parse_caption(text) in held)
    if held_out:
        raise InputError(f"catalog: '{source}' holds held-out combinations ({', '.join(held_out[:3])}); pick the "
                         "train split of `fashiongen dataset`")
    with staged_folder(out, "metadata.jsonl", "a demo catalog", arg="catalog") as stage, \
            open(stage / "metadata.jsonl", "w") as meta:
        for row in sorted(chosen.values(), key=lambda r: r["file_name"]):
            Image.open(source / row["file_name"]).save(stage / row["file_name"], optimize=True)  # lossless, smaller
            meta.write(json.dumps({k: v for k, v in row.items() if k != "mask_file"}) + "\n")


# -- the learned tokens' data ---------------------------------------------------------------------------------
def make_token_data(source: Path, out: Path, kind: str, count: int, seed: int) -> None:
    """An imagefolder for a learned token, drawn from the worn training split.

    ``studio``: the ``count`` shots whose garment covers the most of the frame (per garment type, so every
    type is there): what a catalog wants to cut out. ``wrong``: ``count`` shots each spoiled on purpose, by one
    or two of blur, noise and a hue rotation that makes the colour disagree with the caption; captions kept,
    so the token learns the defect and, as a negative prompt, steers away from it.
    """
    from PIL import Image, ImageFilter

    if (out / "metadata.jsonl").is_file():
        return
    rows = [json.loads(line) for line in (source / "metadata.jsonl").read_text().splitlines() if line.strip()]
    rng = np.random.default_rng([seed, 1 if kind == "studio" else 2])
    stage = out.with_name(out.name + ".partial")
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    if kind == "studio":
        chosen = _largest_garments(source, rows, count)
    else:
        chosen = [rows[i] for i in rng.choice(len(rows), size=min(count, len(rows)), replace=False)]
    with open(stage / "metadata.jsonl", "w") as meta:
        for row in chosen:
            image = Image.open(source / row["file_name"]).convert("RGB")
            if kind == "wrong":
                image = _spoil(image, rng, ImageFilter)
            image.save(stage / row["file_name"])
            meta.write(json.dumps({"file_name": row["file_name"], "text": row["text"]}) + "\n")
    stage.rename(out)


def _largest_garments(source: Path, rows: list[dict], count: int) -> list[dict]:
    from PIL import Image

    garment_classes = {SEGMENT_CLASSES.index(c) for c in ("Upper-clothes", "Skirt", "Pants", "Dress")}
    by_type: dict[str, list[tuple[float, dict]]] = {}
    for row in rows:
        labels = np.asarray(Image.open(source / row["label_file"]))
        area = float(np.isin(labels, list(garment_classes)).mean())
        by_type.setdefault(row["type"], []).append((area, row))
    per_type = max(1, count // len(by_type))
    chosen = []
    for items in by_type.values():
        items.sort(key=lambda pair: -pair[0])
        chosen += [row for _, row in items[:per_type]]
    return chosen


def _spoil(image, rng: np.random.Generator, image_filter):
    """One or two defects: blur, sensor noise, or the hue rotated by 90-270 degrees (a colour that is wrong)."""
    from PIL import Image

    for defect in rng.choice(["blur", "noise", "hue"], size=int(rng.integers(1, 3)), replace=False):
        if defect == "blur":
            image = image.filter(image_filter.GaussianBlur(float(rng.uniform(1.5, 3.0))))
        elif defect == "noise":
            pixels = np.asarray(image, dtype=np.float32) + rng.normal(0, 28, (*image.size[::-1], 3))
            image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        else:
            hsv = np.asarray(image.convert("HSV")).copy()
            hsv[..., 0] = (hsv[..., 0].astype(np.int32) + int(rng.integers(64, 192))) % 256
            image = Image.fromarray(hsv, "HSV").convert("RGB")
    return image


# -- running -------------------------------------------------------------------------------------------------
def run_stage(stage: Stage, work: Path, log=print, threads: int | None = None) -> float:
    """Run one stage (or resume it), on ``threads`` CPU threads (None: torch's default); return its wall
    seconds (0 when it was already done)."""
    if stage.done.exists():
        log(f"[{stage.name}] done already ({stage.done})")
        return 0.0
    if callable(stage.prepare):
        stage.prepare()
    if not stage.argv:  # a Python step of the recipe, done by ``prepare``
        return 0.0
    argv = list(stage.argv)
    if stage.resumable and stage.run_dir is not None and (stage.run_dir / "run.json").is_file():
        argv.append("--resume")
    command = [sys.executable, "-m", "fashiongen", *argv]
    log(f"[{stage.name}] fashiongen {' '.join(argv)}" + (f" ({threads} thread)" if threads else ""))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)} if threads else None
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with open(logs / f"{stage.name}.log", "a") as out:
        result = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"[{stage.name}] failed (exit {result.returncode}); see {logs / (stage.name + '.log')}")
    log(f"[{stage.name}] {seconds / 60:.1f} min")
    return seconds


#: Stages that need only the data set run beside the diffusion stages, each side on one CPU thread: two
#: one-thread trainings get more out of two cores than two-thread ones one after the other. ``JOIN`` and the
#: stages after it need their output.
BESIDE = ("segmenter", "clip", "captioner-data", "captioner")
JOIN = "segmenter-round-trip"


def run_all(work: Path, seed: int, only: list[str] | None = None, log=print) -> dict:
    """Every stage in order (those of ``BESIDE`` in a second thread once the data set exists); wall times add
    up across resumed sessions in ``work/recipe-times.json``.

    A stage of the main chain that starts while one runs beside it gets one thread, and keeps it to its end.
    """
    work.mkdir(parents=True, exist_ok=True)
    times_file = work / "recipe-times.json"
    lock = threading.Lock()

    def read_times() -> dict:
        return json.loads(times_file.read_text()) if times_file.is_file() else {}

    def run_and_record(stage: Stage, threads: int | None = None) -> None:
        seconds = run_stage(stage, work, log, threads)
        with lock:  # read again: the other thread may have written since
            times = read_times()
            times[stage.name] = times.get(stage.name, 0.0) + seconds
            _write_json(times_file, times)

    chosen = [s for s in stages(work, seed) if not only or s.name in only]
    # a finished stage is not started beside: its thread would end at once, yet give the main chain one thread
    beside = [s for s in chosen if s.name in BESIDE and not s.done.exists()]
    side, failures = None, []

    def run_beside() -> None:
        try:
            for stage in beside:
                run_and_record(stage, threads=1)
        except BaseException as exc:  # noqa: BLE001 (re-raised by the main thread)
            failures.append(exc)

    for stage in chosen:
        if stage in beside:
            continue
        if side is None and beside and stage.name != "dataset":
            side = threading.Thread(target=run_beside, name="beside")
            side.start()
        if side is not None and stage.name == JOIN:
            side.join()
        if failures:
            raise failures[0]
        run_and_record(stage, threads=1 if side is not None and side.is_alive() else None)
    if side is None and beside:  # only the stages that run beside were chosen
        run_beside()
    elif side is not None:
        side.join()
    if failures:
        raise failures[0]
    return read_times()


def ship(work: Path, seed: int, target: Path | None = None, parts: tuple[str, ...] | None = None) -> Path:
    """Copy the trained family (or its ``parts``) into the package: engine folders (without their CPU-specific
    caches) and the weights in fp16, plus ``recipe.json``: the commands, seed, wall times and final losses."""
    from fashiongen.demo_family import DEMO_DIR

    from .ship import ship_family

    return ship_family(work, target or DEMO_DIR, parts=parts or PARTS, recipe={"seed": seed, "recipe": RECIPE,
                                             "stages": [{"name": s.name, "command": "fashiongen " + " ".join(s.argv)}
                                                        for s in stages(work, seed)],
                                             "wall_seconds": json.loads((work / "recipe-times.json").read_text())})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fashiongen.training.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="working folder (data, runs, logs, engines)")
    parser.add_argument("--seed", type=int, default=SEED, help=f"seed of everything (default {SEED})")
    parser.add_argument("--only", default=None, help="comma-separated stage names to run (default: all)")
    parser.add_argument("--ship", nargs="?", const=",".join(PARTS), default=None,
                        metavar="PARTS",
                        help="then copy the family into the package (fashiongen/demo_models/); PARTS, comma-separated, "
                             f"ships (or replaces) only those of {', '.join(PARTS)} (default: all); parts shipped "
                             "before and not named stay")
    args = parser.parse_args(argv)
    try:
        started = time.perf_counter()
        times = run_all(args.work, args.seed, args.only.split(",") if args.only else None)
        print(f"stages: {', '.join(f'{k} {v / 60:.1f} min' for k, v in times.items())}; "
              f"total {sum(times.values()) / 60:.1f} min (this session {(time.perf_counter() - started) / 60:.1f})")
        if args.ship:
            print(f"shipped to {ship(args.work, args.seed, parts=tuple(args.ship.split(',')))}")
    except InputError as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
