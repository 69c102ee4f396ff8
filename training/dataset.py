"""The procedural fashion data set: a garment worn by a figure in a studio, and the same garment alone on white.

Torso-free numpy + Pillow, deterministic: item ``index`` of seed ``seed`` is drawn from
``numpy.random.Generator(PCG64(SeedSequence([seed, index])))`` alone, so any item re-renders by itself and
every run writes the same bytes.

Each item has two views of one garment (:mod:`.attributes` says which garments exist):

* **worn**: a simple figure (head, face, hair, neck, arms with hands, legs, shoes; skin tone, hair colour and
  style, pose, scale and position jittered) in front of a studio backdrop (soft vertical gradient, jittered
  tint, a floor shadow) wearing the garment, framed as an on-model shot is for the garment it sells: from the
  head to a little below the garment's hem (:data:`BELOW_HEM`), so a top fills a third of the frame's height
  and pants or a maxi dress show the whole figure. A top comes with neutral pants, shorts or a skirt; a skirt,
  pants or shorts with a neutral tucked-in top; a dress alone. Companions are never the garment's colour.
  Its label map is the 18-class clothes layout of :data:`.attributes.SEGMENT_CLASSES`, exact: each pixel
  holds the class of the shape rendered at the centre sample of that pixel (no blended values). Rules:

  - left/right are the **figure's**: it faces the camera, so its left arm (14), left leg (12) and left
    shoe (9) are on the image's right;
  - hands are arm (14/15); legs include the knees and ankles (12/13); shoes 9/10;
  - all skin of the head, neck and torso (the face, the neck, skin showing through a v-neck or scoop
    neckline, a bare midriff under a crop top, bare shoulders beside straps) is 11 Face, since the layout
    has no neck or torso-skin class; hair (also hair behind the neck) is 2;
  - the garment's own class: 4 tops, 5 skirt, 6 pants and shorts, 7 dress, including its collar, ribbing,
    buttons and stripes; companion garments have their own class (4, 5 or 6).

* **product**: the garment alone, laid flat (sleeves spread, the inside of the back showing through the
  neckline), centred on pure white (255, 255, 255) with no shadow, as the cutout pipeline pastes garments; a
  family keeps one scale (a mini skirt is drawn smaller than a maxi one). Its mask is the garment's pixels
  (255) by the same centre-sample rule; every pixel not within one pixel of the mask is exactly white.

Drawing: every shape is a polygon drawn at ``SUPERSAMPLE`` times the size into an "L" image of part ids
(painter's order); the RGB image is the part colours box-averaged down (anti-aliased), then shaded at the
final size (a soft light gradient, rounded edges, folds, fine fabric noise or knit ribs); stripes are drawn at
the high resolution as horizontal bands with a slight sag, so they stay sharp.

Layout written by :func:`write_dataset` (Hugging Face ``imagefolder``)::

    DIR/dataset.json                      arguments, counts, held-out list, version
    DIR/worn/{train,test,unseen}/         00000.png ..., labels/00000.png (mode L), metadata.jsonl
    DIR/product/{train,test,unseen}/      00000.png ..., masks/00000.png (mode L, 0/255), metadata.jsonl
    DIR/edits/train/                      with --edit-pairs: InstructPix2Pix pairs of the training items
                                          (:mod:`.edit_renders`)

``metadata.jsonl`` rows: ``file_name``, ``text`` (the caption), ``type``, ``colour``, ``pattern``, ``sleeve``,
``neckline``, ``length`` (null where not applicable), ``item`` (the index), and ``label_file`` (worn) or
``mask_file`` (product), paths relative to the metadata file like ``file_name``. train/test hold combinations
not in :data:`.attributes.HELD_OUT` (test: other renders of training combinations), unseen holds only
held-out ones. Item indices: train ``0 .. n_train-1``, test ``n_train .. count-1``, unseen
``count .. count+n_unseen-1``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from fashiongen.runtime.errors import InputError
from fashiongen.runtime.files import replace_folder

from .attributes import (
    COLOURS, HELD_OUT, NEUTRAL_COLOURS, PANTS, SEGMENT_CLASSES, SKIRT, STRIPE_COLOURS, TYPES, UPPER_CLOTHES,
    FACE, HAIR, LEFT_ARM, LEFT_LEG, LEFT_SHOE, RIGHT_ARM, RIGHT_LEG, RIGHT_SHOE, Garment, caption,
    training_garments,
)
from .options import add_progress_argument


VERSION = 1
SUPERSAMPLE = 4
SPLITS = ("train", "test", "unseen")


class DatasetError(InputError):
    """A data set argument refused; the message names the argument (one line)."""


# -- part ids of the high-resolution id map ------------------------------------------------------------------------
(P_BG, P_HAIR, P_FACE, P_FACE_DARK, P_SKIN, P_ARM_L, P_ARM_R, P_LEG_L, P_LEG_R, P_SHOE_L, P_SHOE_R,
 P_G, P_G_STRIPE, P_G_DARK, P_G_LIGHT, P_TOP2, P_TOP2_DARK, P_BOT2, P_BOT2_DARK) = range(19)
GARMENT_PARTS = (P_G, P_G_STRIPE, P_G_DARK, P_G_LIGHT)
SKIN_PARTS = (P_FACE, P_SKIN, P_ARM_L, P_ARM_R, P_LEG_L, P_LEG_R)

# side: -1 is the image's left (the figure's right), +1 the image's right (the figure's left)
_ARM_PART = {-1: P_ARM_R, 1: P_ARM_L}
_LEG_PART = {-1: P_LEG_R, 1: P_LEG_L}
_SHOE_PART = {-1: P_SHOE_R, 1: P_SHOE_L}

SKIN_TONES = ((255, 223, 196), (240, 196, 160), (226, 173, 132), (200, 140, 100), (164, 108, 74), (122, 80, 54),
              (90, 60, 42))
HAIR_COLOURS = ((22, 20, 20), (55, 38, 28), (96, 64, 40), (150, 108, 62), (205, 168, 98), (128, 52, 30),
                (168, 166, 162))
SHOE_COLOURS = ((28, 28, 30), (236, 236, 232), (92, 60, 40), (150, 118, 86), (26, 30, 58))
#: Worn view framing, as an on-model shot is framed for the garment it sells: from the head down to this fraction
#: of the figure's height below the garment's hem (the whole figure for pants and long dresses). A whole figure at
#: 128 px left a top ~35 px tall, ~4 latent cells of the SD VAE: too few for its neckline, sleeves and colour.
BELOW_HEM = 0.12
_FAMILY_SCALE = {"top": 1.5, "dress": 1.06, "skirt": 1.5, "bottom": 1.55}  # product view: px per unit / size


# -- geometry (body units: the figure is ~1 tall, y down from the top of the head, x right, 0 its centre) --------
def _ellipse(cx, cy, rx, ry, angle=0.0, n=20) -> np.ndarray:
    t = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    x, y = rx * np.cos(t), ry * np.sin(t)
    c, s = math.cos(angle), math.sin(angle)
    return np.stack([cx + c * x - s * y, cy + s * x + c * y], axis=1)


def _arc(cx, cy, rx, ry, t0, t1, n=9) -> np.ndarray:
    t = np.linspace(t0, t1, n)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def _mirror(pts: np.ndarray) -> np.ndarray:
    """The right half of a left-half outline: x negated, order reversed."""
    out = pts[::-1].copy()
    out[:, 0] = -out[:, 0]
    return out


def _strip(axis: np.ndarray, widths: Sequence[float]) -> np.ndarray:
    """A polygon around a polyline with a half-width at each of its points (limbs, sleeves, legs)."""
    axis = np.asarray(axis, float)
    d = np.diff(axis, axis=0)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    tang = np.concatenate([d[:1], d[:-1] + d[1:], d[-1:]])
    tang /= np.linalg.norm(tang, axis=1, keepdims=True)
    normal = np.stack([tang[:, 1], -tang[:, 0]], axis=1)
    w = np.asarray(widths, float)[:, None]
    return np.concatenate([axis + normal * w, (axis - normal * w)[::-1]])


def _quad_bezier(p0, p1, p2, n=6) -> np.ndarray:
    t = np.linspace(0.0, 1.0, n)[:, None]
    p0, p1, p2 = (np.asarray(p, float) for p in (p0, p1, p2))
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2


@dataclass
class Body:
    """The figure's proportions and pose (also the invisible mannequin of the product view)."""

    sy: float = 0.178  # shoulder line
    sw: float = 0.108  # shoulder half-width
    cw: float = 0.094  # chest half-width (at the armpits)
    ww: float = 0.071  # waist half-width
    hw: float = 0.094  # hip half-width
    waist_y: float = 0.40
    hip_y: float = 0.50
    arm_angle: tuple[float, float] = (0.25, 0.25)  # outward from vertical (radians), image-left then image-right
    elbow_bend: tuple[float, float] = (0.05, 0.05)  # the forearm turns this much back toward vertical
    leg_angle: tuple[float, float] = (0.06, 0.06)

    @property
    def neck_y(self) -> float:
        return self.sy - 0.02

    @property
    def armpit_y(self) -> float:
        return self.sy + 0.08

    @property
    def crotch_y(self) -> float:
        return self.hip_y + 0.045

    def torso_half(self, y: float) -> float:
        return float(np.interp(y, [self.sy, self.armpit_y, self.waist_y, self.hip_y, 0.7],
                               [self.sw, self.cw, self.ww, self.hw, self.hw]))

    def arm(self, side: int) -> np.ndarray:
        """Shoulder joint, elbow, wrist and fingertip."""
        i = 0 if side < 0 else 1
        a, b = self.arm_angle[i], self.arm_angle[i] - self.elbow_bend[i]
        j = np.array([side * (self.sw - 0.022), self.sy + 0.018])
        e = j + 0.155 * np.array([side * math.sin(a), math.cos(a)])
        w = e + 0.145 * np.array([side * math.sin(b), math.cos(b)])
        h = w + 0.058 * np.array([side * math.sin(b), math.cos(b)])
        return np.stack([j, e, w, h])

    def leg_point(self, side: int, t: float) -> np.ndarray:
        """The leg's axis at ``t`` (0 hip joint, 1 ankle)."""
        a = self.leg_angle[0 if side < 0 else 1]
        return np.array([side * 0.047 + side * math.sin(a) * 0.42 * t, self.hip_y + 0.015 + math.cos(a) * 0.42 * t])


def _arm_axis(arm: np.ndarray, upto: float) -> tuple[np.ndarray, np.ndarray]:
    """Points and arm half-widths along the arm from its joint to ``upto`` (0 shoulder, 1 elbow, 2 wrist)."""
    widths = (0.024, 0.018, 0.014)
    pts, ws = [arm[0]], [widths[0]]
    for k in (1, 2):
        if upto >= k:
            pts.append(arm[k]); ws.append(widths[k])
        else:
            f = upto - (k - 1)
            pts.append(arm[k - 1] + f * (arm[k] - arm[k - 1])); ws.append(widths[k - 1] + f * (widths[k] - widths[k - 1]))
            break
    return np.array(pts), np.array(ws)


@dataclass
class Style:
    """Everything jittered about how one garment looks, shared by its two views."""

    rgb: tuple[int, int, int]
    stripe_rgb: tuple[int, int, int]
    stripe_period: float  # body units
    stripe_fill: float  # fraction of a period that is stripe
    stripe_sag: float
    ease: float  # extra half-width beyond the body
    hem: float  # top hem / dress bodice (for tops), flare (skirts)
    neck_w: float


def _neckline(neckline: str, ny: float, nw: float) -> np.ndarray:
    """The front neck opening from (nw, ny) to (-nw, ny) through its lowest point, ends excluded."""
    if neckline == "v-neck":
        return np.array([[0.0, ny + 0.085]])
    depth = 0.074 if neckline == "scoop" else 0.022
    return _arc(0.0, ny, nw, depth, 0.0, np.pi, 13)[1:-1]


def _neck_width(neckline: str) -> float:
    return {"crewneck": 0.031, "v-neck": 0.036, "scoop": 0.052}[neckline]


def top_shapes(body: Body, kind: str, sleeve: str, neckline: str, hem_y: float, ease: float, nw: float,
               parts=(P_G, P_G_DARK, P_G_LIGHT), product: bool = False) -> tuple[list, list]:
    """A top (or a dress bodice when ``kind == "dress"``): (body shapes, sleeve shapes), each [(part, polygon)].

    Sleeves are separate so that arms can be drawn between the two in the worn view.
    """
    main, dark, light = parts
    ny = body.neck_y
    half = [(-nw, ny)]
    if sleeve == "sleeveless":
        strap = 0.026 if kind == "tank top" else 0.021
        outer = nw + strap
        half.append((-outer, ny + 0.003))
        armhole_end = (-(body.cw + ease * 0.5), body.armpit_y + 0.006)
        half += [tuple(p) for p in _quad_bezier((-outer, ny + 0.003), (-outer - 0.004, body.armpit_y - 0.01),
                                                 armhole_end, 6)[1:]]
    else:
        half.append((-(body.sw + ease) * 0.985, body.sy - 0.003))
        half.append((-(body.cw + ease), body.armpit_y))
    for y in (body.armpit_y + 0.06, body.waist_y, body.hip_y):
        if body.armpit_y + 0.01 < y < hem_y - 0.015:
            half.append((-(body.torso_half(y) + ease), y))
    corner = hem_y - (0.02 if kind == "shirt" else 0.0)
    half.append((-(body.torso_half(hem_y) + ease + 0.004), corner))
    hem_mid = hem_y + (0.012 if kind == "shirt" else 0.004)
    left = np.array(half)
    outline = np.concatenate([left, [[0.0, hem_mid]], _mirror(left), _neckline(neckline, ny, nw)])
    shapes = [(main, outline)]
    if product:  # the inside of the back shows through the neckline
        back = _arc(0.0, ny, nw, 0.012, np.pi, 0.0, 9)  # the back neckline, higher than the front
        shapes.append((dark, np.concatenate([back, _neckline(neckline, ny, nw)])))
    # neckline details
    if kind == "shirt":
        if neckline == "crewneck":  # closed collar
            for s in (-1, 1):
                shapes.append((light, np.array([[s * (nw + 0.007), ny - 0.01], [s * 0.002, ny + 0.032],
                                                [s * (nw + 0.012), ny + 0.036]])))
            top = ny + 0.03
        else:  # open collar lying along the V
            for s in (-1, 1):
                shapes.append((light, np.array([[s * (nw + 0.006), ny - 0.01], [s * 0.013, ny + 0.07],
                                                [s * (nw + 0.02), ny + 0.036]])))
            top = ny + 0.085
        shapes.append((dark, np.array([[-0.0022, top], [0.0022, top], [0.0022, hem_mid - 0.004],
                                       [-0.0022, hem_mid - 0.004]])))
        for y in np.linspace(top + 0.03, hem_mid - 0.03, 4):
            shapes.append((light, _ellipse(0.0, y, 0.0055, 0.0055, n=8)))
    else:
        band = 0.016 if kind == "sweater" else 0.008
        if kind in ("sweater", "t-shirt", "crop top") or neckline == "crewneck":
            inner = np.concatenate([[[nw, ny]], _neckline(neckline, ny, nw), [[-nw, ny]]])
            outer = np.concatenate([[[nw + band, ny - 0.002]], _neckline(neckline, ny, nw + band)
                                    + [0.0, band], [[-nw - band, ny - 0.002]]])
            shapes.append((dark, np.concatenate([inner, outer[::-1]])))
    if kind == "sweater":  # ribbed hem band
        y0, y1 = hem_y - 0.024, hem_y + 0.004
        shapes.append((dark, np.array([[-(body.torso_half(y0) + ease + 0.004), y0], [body.torso_half(y0) + ease + 0.004, y0],
                                       [body.torso_half(y1) + ease + 0.004, y1], [-(body.torso_half(y1) + ease + 0.004), y1]])))
    sleeves = []
    if sleeve != "sleeveless":
        for side in (-1, 1):
            arm = body.arm(side)
            upto = 0.52 if sleeve == "short" else 2.0
            axis, ws = _arm_axis(arm, upto)
            ws = ws + (0.011 if sleeve == "short" else 0.006) + ease * 0.4
            if sleeve == "short":
                ws[-1] += 0.004  # a flared opening
            start = 0.35 / max(1e-6, upto)  # skip the part hidden inside the shoulder
            strip_pts = axis.copy()
            strip_pts[0] = axis[0] + min(start, 0.6) * (axis[1] - axis[0])
            poly = _strip(strip_pts, ws)
            n = len(strip_pts)
            # _strip's first edge lies to the right of the arm's direction: outside for the image-right arm
            edge_a, edge_b = poly[:n], poly[n:][::-1]
            outer_edge, inner_edge = (edge_a, edge_b) if side > 0 else (edge_b, edge_a)
            shoulder = (side * (body.sw + ease) * 0.985, body.sy - 0.003)
            armpit = (side * (body.cw + ease), body.armpit_y + 0.004)
            sleeves.append((main, np.concatenate([[shoulder], outer_edge, inner_edge[::-1], [armpit]])))
            if kind == "sweater" or (product and sleeve == "long"):  # cuffs
                d = arm[2] - arm[1]
                d /= np.linalg.norm(d)
                cuff = _strip(np.array([arm[2] - 0.026 * d, arm[2]]), [ws[-1] + 0.001, ws[-1] + 0.001])
                sleeves.append((dark if kind == "sweater" else main, cuff))
    return shapes, sleeves


def skirt_shapes(body: Body, top_y: float, hem_y: float, flare: float, part: int, band_part: int | None) -> list:
    """A skirt from ``top_y`` (the waist) to ``hem_y``, A-line by ``flare``; ``band_part``: a waistband."""
    top_half = body.torso_half(top_y) + 0.006
    half = [(-top_half, top_y)]
    if hem_y > body.hip_y + 0.02:
        half.append((-(body.hw + 0.012), body.hip_y))
    hem_half = body.hw + 0.012 + flare * max(0.0, hem_y - body.hip_y)
    half.append((-hem_half, hem_y))
    left = np.array(half)
    hem = _arc(0.0, hem_y, hem_half, 0.014, np.pi, 0.0, 9)[1:-1]
    shapes = [(part, np.concatenate([left, hem, _mirror(left)]))]
    if band_part is not None:
        y1 = top_y + 0.017
        shapes.append((band_part, np.array([[-top_half, top_y], [top_half, top_y],
                                            [body.torso_half(y1) + 0.0065, y1], [-(body.torso_half(y1) + 0.0065), y1]])))
    return shapes


def pants_shapes(body: Body, hem_t: float, part: int, dark: int, ease: float = 0.012) -> list:
    """Pants (``hem_t`` ~0.95, the ankle) or shorts (``hem_t`` ~0.3) from the waist."""
    top_y = body.waist_y + 0.006
    shapes = []
    leg_w = lambda t: float(np.interp(t, [0.0, 0.48, 1.0], [0.048, 0.031, 0.024])) + ease
    for side in (-1, 1):
        ts = [t for t in (0.48,) if t < hem_t - 0.05] + [hem_t]
        outer, inner = [], []
        for t in ts:
            p = body.leg_point(side, t)
            a = body.leg_angle[0 if side < 0 else 1]
            n = np.array([side * math.cos(a), -math.sin(a)])  # outward normal
            outer.append(p + n * leg_w(t))
            inner.append(p - n * (leg_w(t) * 0.8 - ease * 0.5))  # leaves a gap between the legs
        top_half = body.torso_half(top_y) + 0.008
        pts = [(0.0, top_y), (side * top_half, top_y), (side * (body.hw + ease * 0.8), body.hip_y)]
        pts += [tuple(p) for p in outer] + [tuple(p) for p in inner[::-1]] + [(0.0, body.crotch_y + 0.012)]
        shapes.append((part, np.array(pts)))
        if hem_t < 0.6:  # turned-up cuff on shorts
            p = body.leg_point(side, hem_t)
            a = body.leg_angle[0 if side < 0 else 1]
            d = np.array([side * math.sin(a), math.cos(a)])
            shapes.append((dark, _strip(np.array([p - 0.022 * d, p]), [leg_w(hem_t) + 0.001] * 2)))
    y1 = top_y + 0.018
    band_half = body.torso_half(y1) + 0.009
    shapes.append((dark, np.array([[-(body.torso_half(top_y) + 0.008), top_y], [body.torso_half(top_y) + 0.008, top_y],
                                   [band_half, y1], [-band_half, y1]])))
    shapes.append((dark, np.array([[-0.0025, y1], [0.0025, y1], [0.0025, body.crotch_y - 0.01],
                                   [-0.0025, body.crotch_y - 0.01]])))  # fly seam
    return shapes


def garment_shapes(g: Garment, style: Style, body: Body, product: bool) -> tuple[list, list, list]:
    """The garment as (lower layer, upper body layer, sleeves): lower is drawn before the arms."""
    fam = g.spec.family
    if fam == "top":
        hem = style.hem
        shapes, sleeves = top_shapes(body, g.type, g.sleeve, g.neckline, hem, style.ease, style.neck_w, product=product)
        return [], shapes, sleeves
    if fam == "dress":
        hem_y = {"mini": 0.6, "midi": 0.79, "maxi": 0.95}[g.length] + style.hem * 0.2
        skirt = skirt_shapes(body, body.waist_y - 0.01, hem_y, 0.16 + style.hem, P_G, None)
        shapes, sleeves = top_shapes(body, "dress", g.sleeve, g.neckline, body.waist_y + 0.012, style.ease,
                                     style.neck_w, product=product)
        return skirt, shapes, sleeves
    if fam == "skirt":
        hem_y = {"mini": 0.6, "midi": 0.79, "maxi": 0.95}[g.length] + style.hem * 0.2
        return skirt_shapes(body, body.waist_y, hem_y, 0.14 + style.hem, P_G, P_G_DARK), [], []
    hem_t = 0.96 if g.type == "pants" else 0.27
    return pants_shapes(body, hem_t, P_G, P_G_DARK, ease=style.ease), [], []


# -- rasterizing and shading ---------------------------------------------------------------------------------------
def _rasterize(shapes: list, size: int, scale: float, offset: tuple[float, float]) -> np.ndarray:
    """The high-resolution id map: shapes in painter's order, body units -> pixels by ``scale`` and ``offset``."""
    n = size * SUPERSAMPLE
    img = Image.new("L", (n, n), P_BG)
    draw = ImageDraw.Draw(img)
    ox, oy = offset
    for part, pts in shapes:
        xy = pts * scale + (ox, oy)
        draw.polygon(xy.ravel().tolist(), fill=part)
    return np.array(img)


def _bbox(shapes: list) -> tuple[float, float, float, float]:
    allp = np.concatenate([p for _, p in shapes])
    return allp[:, 0].min(), allp[:, 1].min(), allp[:, 0].max(), allp[:, 1].max()


def _add_stripes(ids: np.ndarray, style: Style, bbox, scale: float, offset: tuple[float, float]) -> None:
    """Turn garment pixels into stripe pixels on horizontal bands (in body units, with a slight sag).

    ``bbox``: the garment's box in body units (only that part of the id map is looked at).
    """
    n = ids.shape[0]
    x0, y0 = (max(0, int(bbox[k] * scale + offset[k]) - 1) for k in (0, 1))
    x1, y1 = (min(n, int(bbox[k + 2] * scale + offset[k]) + 2) for k in (0, 1))
    if x1 <= x0 or y1 <= y0:
        return
    ys = (np.arange(y0, y1, dtype=np.float32)[:, None] - offset[1]) / scale
    xs = (np.arange(x0, x1, dtype=np.float32)[None, :] - offset[0]) / scale
    phase = (ys + style.stripe_sag * xs * xs) / style.stripe_period
    band = (phase - np.floor(phase)) < style.stripe_fill
    sub = ids[y0:y1, x0:x1]
    sub[band & (sub == P_G)] = P_G_STRIPE


def _centre(ids: np.ndarray) -> np.ndarray:
    """The part at the centre sample of each final pixel."""
    c = SUPERSAMPLE // 2
    return ids[c::SUPERSAMPLE, c::SUPERSAMPLE]


def _blur(a: np.ndarray, radius: float) -> np.ndarray:
    img = Image.fromarray(np.clip(a * 255.0 + 0.5, 0, 255).astype(np.uint8))
    return np.asarray(img.filter(ImageFilter.GaussianBlur(radius)), dtype=np.float32) / 255.0


def _folds(rng: np.random.Generator, family: str, bbox, size: int, scale: float, offset) -> np.ndarray:
    """Soft darker/lighter streaks (elongated Gaussians and their derivatives) over the garment's box."""
    f = np.zeros((size, size), np.float32)
    x0, y0, x1, y1 = bbox
    w, h = max(x1 - x0, 1e-3), max(y1 - y0, 1e-3)
    for _ in range(int(rng.integers(3, 7))):
        u, v = rng.uniform(0.1, 0.9), rng.uniform(0.15, 0.95)
        if family in ("skirt", "dress") and v > 0.35:
            ang = (u - 0.5) * 0.7 + rng.normal(0, 0.08)  # fanning out from the waist
        elif family == "bottom":
            ang = rng.normal(0, 0.12)
        else:
            ang = rng.uniform(-1.1, 1.1)
        length, width = rng.uniform(0.25, 0.6) * h * scale * 0.5, rng.uniform(0.006, 0.014) * scale
        amp = rng.uniform(0.05, 0.12) * (1 if rng.random() < 0.5 else -1)
        ridge = rng.random() < 0.5
        px, py = (x0 + u * w) * scale + offset[0], (y0 + v * h) * scale + offset[1]
        reach = 2.5 * max(length, width)  # the window it is evaluated on
        ca, cb = max(0, int(px - reach)), min(size, int(px + reach) + 1)
        ra, rb = max(0, int(py - reach)), min(size, int(py + reach) + 1)
        if ca >= cb or ra >= rb:
            continue
        c, s = math.cos(ang), math.sin(ang)  # the fold runs along (s, c)
        dx = np.arange(ca, cb, dtype=np.float32)[None, :] + 0.5 - px
        dy = np.arange(ra, rb, dtype=np.float32)[:, None] + 0.5 - py
        across = (dx * c - dy * s) / width
        along = (dx * s + dy * c) / length
        gauss = np.exp(-across * across - along * along)
        f[ra:rb, ca:cb] += amp * (gauss if ridge else 1.6 * across * gauss)
    return f


_FIGURE_LUT = [0] + [255] * 255  # id -> figure coverage


def _downsample(ids: np.ndarray, palette: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The id map coloured by ``palette`` (256 x 3 uint8, background black) and the figure's coverage,
    box-averaged to the final size with Pillow (in C): premultiplied RGB 0..255 and alpha 0..1, float32.

    (Not one RGBA image: Pillow's ``reduce`` un-premultiplies RGBA.)
    """
    n = ids.shape[0]
    raw = ids.tobytes()
    img = Image.frombytes("P", (n, n), raw)
    img.putpalette(palette.tobytes())
    rgb = np.asarray(img.convert("RGB").reduce(SUPERSAMPLE), dtype=np.float32)
    alpha = Image.frombytes("L", (n, n), raw).point(_FIGURE_LUT).reduce(SUPERSAMPLE)
    return rgb, np.asarray(alpha, dtype=np.float32) * (1.0 / 255.0)


# shading groups of the centre-sampled parts: 1 garment, 2 companion garments, 3 skin
_GROUP = np.zeros(256, np.uint8)
_GROUP[list(GARMENT_PARTS)] = 1
_GROUP[[P_TOP2, P_TOP2_DARK, P_BOT2, P_BOT2_DARK]] = 2
_GROUP[list(SKIN_PARTS)] = 3
_TEXTURES = {}


def _texture(size: int, knit: bool) -> np.ndarray:
    """A fixed fine weave (diagonal twill) or knit (vertical ribs) at the final size."""
    key = (size, knit)
    if key not in _TEXTURES:
        ix = np.arange(size)
        if knit:
            t = np.where(ix % 2 == 0, 0.05, -0.05)[None, :].repeat(size, 0)
        else:
            t = np.where((ix[None, :] + ix[:, None]) % 3 == 0, -0.025, 0.0125)
        _TEXTURES[key] = t.astype(np.float32)
    return _TEXTURES[key]


def _shade(ids: np.ndarray, palette: np.ndarray, background: np.ndarray, rng: np.random.Generator, g: Garment,
           bbox, scale_lo: float, offset_lo, light: tuple[float, float, float], texture: float) -> np.ndarray:
    """The final RGB (float, 0..255): part colours box-averaged, shaded, over ``background``.

    Shading multiplies the figure's premultiplied colour only, so a pixel no shape touches stays exactly the
    background.
    """
    size = ids.shape[0] // SUPERSAMPLE
    rgb, alpha = _downsample(ids, palette)
    group = _GROUP[_centre(ids)]
    grid = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
    gain, lx, ly = light
    m = 1.0 + gain * (grid[None, :] * lx + grid[:, None] * ly)  # the light's direction
    cloth = (group == 1) | (group == 2)
    skin = group == 3
    for mask, k, r in ((cloth, 0.28, 1.5), (skin, 0.3, 1.2)):  # rounded edges: darker near each silhouette
        if mask.any():
            c = mask.astype(np.float32)
            m = m * (1.0 - k * c * (1.0 - _blur(c, r * size / 128)))
    folds = _folds(rng, g.spec.family, bbox, size, scale_lo, offset_lo)
    noise = rng.standard_normal((size, size), dtype=np.float32) * texture + _texture(size, g.type == "sweater")
    detail = np.where(group == 1, folds + noise, np.where(group == 2, 0.5 * (folds[::-1] + noise), 0.0))
    m = m * (1.0 + detail)
    return rgb * m[..., None] + (1.0 - alpha)[..., None] * background


def _jitter_rgb(rng, rgb, amount=6, bright=(0.94, 1.05)) -> tuple[int, int, int]:
    f = rng.uniform(*bright)
    return tuple(int(np.clip(round(c * f + rng.uniform(-amount, amount)), 0, 255)) for c in rgb)


def _make_style(rng: np.random.Generator, g: Garment) -> Style:
    rgb = _jitter_rgb(rng, COLOURS[g.colour])
    stripe = _jitter_rgb(rng, COLOURS[STRIPE_COLOURS[g.colour]], 4, (0.97, 1.02))
    fam = g.spec.family
    if fam == "top":
        hem = {"crop top": 0.33, "shirt": 0.555, "sweater": 0.535, "tank top": 0.515}.get(g.type, 0.525)
        hem += rng.uniform(-0.012, 0.012)
        ease = {"sweater": 0.02, "shirt": 0.014, "t-shirt": 0.012}.get(g.type, 0.006)
    elif fam in ("dress", "skirt"):
        hem, ease = rng.uniform(-0.04, 0.12), 0.004  # hem: the flare; its small part also jitters the length
    else:
        hem, ease = 0.0, 0.012
    return Style(rgb=rgb, stripe_rgb=stripe, stripe_period=rng.uniform(0.036, 0.05), stripe_fill=rng.uniform(0.34, 0.45),
                 stripe_sag=rng.uniform(0.0, 1.5), ease=ease + rng.uniform(-0.002, 0.004), hem=hem,
                 neck_w=_neck_width(g.neckline) * rng.uniform(0.94, 1.06) if g.neckline else 0.03)


def _shade_of(rgb, f) -> np.ndarray:
    return np.clip(np.asarray(rgb, np.float32) * f, 0, 255)


def _palette(style: Style, skin, hair, shoes, top2, bot2) -> np.ndarray:
    pal = np.zeros((256, 3), np.float32)  # uint8 once filled
    rgb = np.asarray(style.rgb, np.float32)
    pal[P_HAIR] = hair
    pal[P_FACE] = pal[P_SKIN] = pal[P_ARM_L] = pal[P_ARM_R] = pal[P_LEG_L] = pal[P_LEG_R] = skin
    pal[P_FACE_DARK] = _shade_of(skin, 0.45)
    pal[P_SHOE_L] = pal[P_SHOE_R] = shoes
    pal[P_G] = rgb
    pal[P_G_STRIPE] = style.stripe_rgb
    pal[P_G_DARK] = rgb * 0.78 if rgb.mean() > 60 else rgb * 0.7 + 14
    pal[P_G_LIGHT] = np.minimum(255, rgb * 1.08 + 10) if rgb.mean() < 200 else rgb * 0.92
    pal[P_TOP2] = top2
    pal[P_TOP2_DARK] = _shade_of(top2, 0.8) if np.mean(top2) > 60 else np.asarray(top2) * 0.7 + 14
    pal[P_BOT2] = bot2
    pal[P_BOT2_DARK] = _shade_of(bot2, 0.8) if np.mean(bot2) > 60 else np.asarray(bot2) * 0.7 + 14
    pal[P_BG] = 0
    return np.clip(pal + 0.5, 0, 255).astype(np.uint8)


def _labels(g: Garment, bottom_class: int) -> np.ndarray:
    lut = np.zeros(256, np.uint8)
    lut[[P_HAIR]] = HAIR
    lut[[P_FACE, P_FACE_DARK, P_SKIN]] = FACE
    lut[P_ARM_L], lut[P_ARM_R] = LEFT_ARM, RIGHT_ARM
    lut[P_LEG_L], lut[P_LEG_R] = LEFT_LEG, RIGHT_LEG
    lut[P_SHOE_L], lut[P_SHOE_R] = LEFT_SHOE, RIGHT_SHOE
    lut[list(GARMENT_PARTS)] = g.segment_class
    lut[[P_TOP2, P_TOP2_DARK]] = UPPER_CLOTHES
    lut[[P_BOT2, P_BOT2_DARK]] = bottom_class
    return lut


# -- the two views ------------------------------------------------------------------------------------------------
def _random_body(rng: np.random.Generator) -> Body:
    return Body(sy=0.178 + rng.uniform(-0.006, 0.006), sw=0.108 + rng.uniform(-0.006, 0.006),
                cw=0.094 + rng.uniform(-0.005, 0.004), ww=0.071 + rng.uniform(-0.006, 0.006),
                hw=0.094 + rng.uniform(-0.006, 0.008), waist_y=0.40 + rng.uniform(-0.01, 0.01),
                hip_y=0.50 + rng.uniform(-0.008, 0.008),
                arm_angle=tuple(rng.uniform(0.12, 0.42, 2)), elbow_bend=tuple(rng.uniform(-0.06, 0.22, 2)),
                leg_angle=tuple(rng.uniform(0.02, 0.12, 2)))


def _figure_shapes(rng, body: Body, g: Garment, style: Style) -> tuple[list, int, list]:
    """All shapes of the worn view in painter's order, the companion bottom's class, and its foot points."""
    hair_style = int(rng.integers(0, 4))  # 0 short, 1 bob, 2 long, 3 bun
    head_c, head_rx, head_ry = np.array([0.0, 0.066]), 0.046 + rng.uniform(-0.003, 0.003), 0.061
    shapes = []
    if hair_style == 1:
        shapes.append((P_HAIR, _ellipse(0.0, 0.085, head_rx + 0.012, 0.068, n=20)))
    elif hair_style == 2:
        hl = rng.uniform(0.2, 0.3)
        shapes.append((P_HAIR, np.concatenate([_arc(0.0, 0.066, head_rx + 0.012, 0.066, np.pi, 2 * np.pi, 9),
                                               [[head_rx + 0.02, hl], [-head_rx - 0.02, hl]]])))
    # skin: neck and torso, legs, shoes
    neck = np.array([[-0.021, 0.1], [0.021, 0.1], [0.023, body.sy], [-0.023, body.sy]])
    torso_half = np.array([(-0.023, body.neck_y - 0.004), (-body.sw * 0.8, body.sy - 0.006), (-body.sw, body.sy + 0.012),
                           (-body.cw, body.armpit_y), (-body.ww, body.waist_y), (-body.hw, body.hip_y),
                           (-body.hw * 0.8, body.crotch_y + 0.01)])
    shapes += [(P_SKIN, neck), (P_SKIN, np.concatenate([torso_half, _mirror(torso_half)]))]
    feet = []
    for side in (-1, 1):
        ts = np.array([0.0, 0.25, 0.48, 0.66, 0.9, 1.04])
        axis = np.stack([body.leg_point(side, t) for t in ts])
        shapes.append((_LEG_PART[side], _strip(axis, [0.049, 0.041, 0.028, 0.031, 0.02, 0.017])))
    shoe_kind = int(rng.integers(0, 2))
    for side in (-1, 1):
        a = body.leg_point(side, 1.0)
        toe = a + (side * 0.014, 0.034)
        if shoe_kind == 0:  # flat shoe
            shapes.append((_SHOE_PART[side], _ellipse(*toe, 0.031, 0.019, n=14)))
            shapes.append((_SHOE_PART[side], np.array([a + (-0.019, 0.0), a + (0.019, 0.0), toe + (0.02, -0.005),
                                                       toe + (-0.02, -0.005)])))
        else:  # ankle boot
            shapes.append((_SHOE_PART[side], np.array([a + (-0.022, -0.045), a + (0.022, -0.045), a + (0.024, 0.02),
                                                       a + (-0.024, 0.02)])))
            shapes.append((_SHOE_PART[side], _ellipse(*toe, 0.033, 0.02, n=14)))
        feet.append(toe + (0.0, 0.02))
    # clothes below the arms
    fam = g.spec.family
    lower, upper, sleeves = garment_shapes(g, style, body, product=False)
    bottom_class = PANTS
    if fam == "top":
        r = rng.random()
        if r < 0.6:
            shapes += pants_shapes(body, 0.96, P_BOT2, P_BOT2_DARK, ease=rng.uniform(0.006, 0.016))
        elif r < 0.75:
            shapes += pants_shapes(body, 0.27, P_BOT2, P_BOT2_DARK, ease=0.012)
        else:
            bottom_class = SKIRT
            shapes += skirt_shapes(body, body.waist_y, rng.choice([0.6, 0.79]), 0.14 + rng.uniform(0, 0.1),
                                   P_BOT2, P_BOT2_DARK)
    elif fam in ("skirt", "bottom"):
        top2_sleeve = "short" if rng.random() < 0.7 else "long"
        # tucked in: it ends at the waistband, drawn over the arms like any top
        top2, top2_sleeves = top_shapes(body, "t-shirt", top2_sleeve, "crewneck", body.waist_y + 0.003, 0.008, 0.031,
                                        parts=(P_TOP2, P_TOP2_DARK, P_TOP2))
        lower, upper, sleeves = lower, top2, top2_sleeves
    shapes += lower
    shapes += _arm_shapes(body)
    shapes += upper + sleeves
    shapes += _head_shapes(rng, head_c, head_rx, head_ry, hair_style)
    return shapes, bottom_class, feet


def _arm_shapes(body: Body) -> list:
    out = []
    for side in (-1, 1):
        arm = body.arm(side)
        out.append((_ARM_PART[side], _strip(arm[:3], [0.024, 0.018, 0.014])))
        out.append((_ARM_PART[side], _ellipse(*arm[0], 0.024, 0.024, n=12)))
        d = arm[3] - arm[2]
        centre = arm[2] + 0.55 * d
        out.append((_ARM_PART[side], _ellipse(*centre, 0.016, 0.034, angle=-side * math.atan2(abs(d[0]), d[1]), n=12)))
    return out


def _head_shapes(rng, c, rx, ry, hair_style) -> list:
    out = [(P_FACE, _ellipse(c[0], c[1], rx, ry, n=24))]
    # hair cap over the top of the head, a little lower at the sides
    cap = np.concatenate([_arc(c[0], c[1] + 0.004, rx + 0.006, ry + 0.006, np.pi * 0.93, np.pi * 2.07, 13),
                          _arc(c[0], c[1] - 0.012, rx * 0.9, ry * 0.55, np.pi * 0.05, np.pi * 0.95, 7)[::-1] * [1, 1]])
    out.append((P_HAIR, cap))
    if hair_style == 3:
        out.append((P_HAIR, _ellipse(c[0], c[1] - ry - 0.008, 0.022, 0.018, n=12)))
    ey = c[1] + 0.006
    for s in (-1, 1):
        out.append((P_FACE_DARK, _ellipse(c[0] + s * rx * 0.42, ey, 0.0065, 0.005, n=8)))
    out.append((P_FACE_DARK, _ellipse(c[0], c[1] + ry * 0.55, 0.011, 0.0035, n=8)))
    return out


def render_worn(rng: np.random.Generator, g: Garment, style: Style, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The worn view: (RGB uint8 image, uint8 label map), both ``size`` x ``size``."""
    body = _random_body(rng)
    shapes, bottom_class, feet = _figure_shapes(rng, body, g, style)
    gb = _bbox([s_ for s_ in shapes if s_[0] in GARMENT_PARTS])
    x0, y0, x1, y1 = _bbox(shapes)
    y1 = min(y1, gb[3] + BELOW_HEM * (y1 - y0))  # framed from the head to just below the garment
    height = rng.uniform(0.84, 0.95) * size
    scale_lo = height / (y1 - y0)
    width = (x1 - x0) * scale_lo
    if width > 0.96 * size:  # wide poses: shrink to fit
        scale_lo *= 0.96 * size / width
        width, height = 0.96 * size, (y1 - y0) * scale_lo
    left = rng.uniform(0.02 * size, max(0.02 * size, 0.98 * size - width))
    top = rng.uniform(0.01 * size, max(0.01 * size, 0.985 * size - height))
    offset_lo = (left - x0 * scale_lo, top - y0 * scale_lo)
    s = SUPERSAMPLE
    ids = _rasterize(shapes, size, scale_lo * s, (offset_lo[0] * s, offset_lo[1] * s))
    if g.pattern == "striped":
        _add_stripes(ids, style, gb, scale_lo * s, (offset_lo[0] * s, offset_lo[1] * s))
    skin = _jitter_rgb(rng, SKIN_TONES[int(rng.integers(len(SKIN_TONES)))], 5, (0.96, 1.03))
    hair = _jitter_rgb(rng, HAIR_COLOURS[int(rng.integers(len(HAIR_COLOURS)))], 6)
    shoes = _jitter_rgb(rng, SHOE_COLOURS[int(rng.integers(len(SHOE_COLOURS)))], 5)
    neutrals = [c for c in NEUTRAL_COLOURS if c != g.colour]
    top2 = _jitter_rgb(rng, COLOURS[neutrals[int(rng.integers(len(neutrals)))]], 5)
    bot2 = _jitter_rgb(rng, COLOURS[neutrals[int(rng.integers(len(neutrals)))]], 5)
    pal = _palette(style, skin, hair, shoes, top2, bot2)
    # backdrop: a soft vertical gradient with a tint, a floor shadow under the feet
    base = rng.uniform(150, 228)
    tint = rng.normal(0, 1, 3)
    tint = tint / np.linalg.norm(tint) * rng.uniform(0, 16)
    c_top = np.clip(base * rng.uniform(1.0, 1.08) + tint, 0, 255)
    c_bot = np.clip(base * rng.uniform(0.8, 0.95) + tint, 0, 255)
    t = ((np.arange(size, dtype=np.float32) + 0.5) / size)[:, None, None]
    background = np.broadcast_to(c_top * (1 - t) + c_bot * t, (size, size, 3)).astype(np.float32)
    feet_px = np.array(feet) * scale_lo + offset_lo
    shadow = Image.new("L", (size, size), 0)
    fx, fy = feet_px[:, 0].mean(), feet_px[:, 1].max()
    rx, ry = max(6.0, abs(feet_px[1, 0] - feet_px[0, 0]) * 0.5 + 0.12 * scale_lo), 0.025 * scale_lo + 1.5
    sx = rng.uniform(-0.3, 0.3) * rx
    ImageDraw.Draw(shadow).ellipse([fx + sx - rx, fy - ry, fx + sx + rx, fy + ry], fill=int(rng.uniform(60, 130)))
    shadow = np.asarray(shadow.filter(ImageFilter.GaussianBlur(max(1.0, size / 64))), np.float32) / 255.0
    background = background * (1.0 - shadow)[..., None]
    lang = rng.uniform(0, 2 * np.pi)
    light = (rng.uniform(0.12, 0.3), math.cos(lang), math.sin(lang))
    rgb = _shade(ids, pal, background, rng, g, gb, scale_lo, offset_lo, light, texture=0.03)
    labels = _labels(g, bottom_class)[_centre(ids)]
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8), labels


def render_product(rng: np.random.Generator, g: Garment, style: Style, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The product view: (RGB uint8 image on white, uint8 mask 0/255), both ``size`` x ``size``."""
    body = Body(arm_angle=(0.8, 0.8) if g.sleeve == "short" else (0.42, 0.42), elbow_bend=(0.08, 0.08),
                leg_angle=(0.07, 0.07))
    if g.sleeve is not None:
        a = body.arm_angle[0] + rng.uniform(-0.08, 0.08)
        body.arm_angle = (a, a)
    lower, upper, sleeves = garment_shapes(g, style, body, product=True)
    # the body layer last so that the inner back (part of it) stays on top of the skirt of a dress
    shapes = lower + sleeves + upper
    x0, y0, x1, y1 = _bbox(shapes)
    scale_lo = _FAMILY_SCALE[g.spec.family] * size * rng.uniform(0.93, 1.03)
    fit = 0.94 * size / max(x1 - x0, y1 - y0)
    scale_lo = min(scale_lo, fit)
    cx = size / 2 + rng.uniform(-0.02, 0.02) * size
    cy = size / 2 + rng.uniform(-0.02, 0.02) * size
    offset_lo = (cx - (x0 + x1) / 2 * scale_lo, cy - (y0 + y1) / 2 * scale_lo)
    s = SUPERSAMPLE
    ids = _rasterize(shapes, size, scale_lo * s, (offset_lo[0] * s, offset_lo[1] * s))
    if g.pattern == "striped":
        _add_stripes(ids, style, (x0, y0, x1, y1), scale_lo * s, (offset_lo[0] * s, offset_lo[1] * s))
    pal = _palette(style, (0, 0, 0), (0, 0, 0), (0, 0, 0), (0, 0, 0), (0, 0, 0))
    background = np.full((size, size, 3), 255.0, np.float32)
    lang = rng.uniform(0, 2 * np.pi)
    light = (rng.uniform(0.06, 0.16), math.cos(lang), math.sin(lang))
    rgb = _shade(ids, pal, background, rng, g, (x0, y0, x1, y1), scale_lo, offset_lo, light, texture=0.025)
    mask = np.where(_centre(ids) != P_BG, 255, 0).astype(np.uint8)
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8), mask


# -- items ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Item:
    """One rendered item: the garment, its worn view with labels, its product view with mask."""

    index: int
    garment: Garment
    worn: np.ndarray  # (size, size, 3) uint8
    labels: np.ndarray  # (size, size) uint8, SEGMENT_CLASSES
    product: np.ndarray  # (size, size, 3) uint8 on white
    mask: np.ndarray  # (size, size) uint8, 255 on the garment

    @property
    def text(self) -> str:
        return caption(self.garment)


def item_rng(seed: int, index: int) -> np.random.Generator:
    """The one random stream item ``index`` of seed ``seed`` draws from."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), int(index)])))


def _by_type(pool: Sequence[Garment]) -> list[list[Garment]]:
    groups = {t: [] for t in TYPES}
    for g in pool:
        groups[g.type].append(g)
    return [v for v in groups.values() if v]


_POOLS: dict[bool, list[list[Garment]]] = {}


def _pool(held_out: bool) -> list[list[Garment]]:
    if held_out not in _POOLS:
        _POOLS[held_out] = _by_type(HELD_OUT if held_out else training_garments())
    return _POOLS[held_out]


def sample_garment(rng: np.random.Generator, held_out: bool = False) -> Garment:
    """A type uniformly, then one of its combinations uniformly (training ones, or only held-out ones)."""
    groups = _pool(held_out)
    group = groups[int(rng.integers(len(groups)))]
    return group[int(rng.integers(len(group)))]


def render_garment(rng: np.random.Generator, g: Garment, size: int = 128) -> tuple[np.ndarray, ...]:
    """Both views of ``g``: (worn RGB, worn labels, product RGB, product mask)."""
    style = _make_style(rng, g)
    worn, labels = render_worn(rng, g, style, size)
    product, mask = render_product(rng, g, style, size)
    return worn, labels, product, mask


def render_item(seed: int, index: int, size: int = 128, held_out: bool = False) -> Item:
    """Item ``index`` of seed ``seed``, alone; ``held_out`` for the unseen split's combinations."""
    rng = item_rng(seed, index)
    g = sample_garment(rng, held_out)
    return Item(index, g, *render_garment(rng, g, size))


# -- writing -------------------------------------------------------------------------------------------------------
def split_counts(count: int, test_fraction: float, unseen_count: int | None) -> dict[str, int]:
    n_test = int(round(count * test_fraction))
    n_unseen = max(50, count // 20) if unseen_count is None else unseen_count
    return {"train": count - n_test, "test": n_test, "unseen": n_unseen}


def _check(count: int, size: int, test_fraction: float, unseen_count: int | None, seed: int, edit_pairs: int) -> None:
    if count < 1:
        raise DatasetError(f"--count: expected a positive number of items, got {count}")
    if size < 32 or size % 8:
        raise DatasetError(f"--size: expected a multiple of 8, at least 32, got {size}")
    if not 0.0 <= test_fraction < 1.0:
        raise DatasetError(f"--test-fraction: expected a fraction in [0, 1), got {test_fraction}")
    if unseen_count is not None and unseen_count < 0:
        raise DatasetError(f"--unseen-count: expected 0 or more, got {unseen_count}")
    if seed < 0:
        raise DatasetError(f"--seed: expected 0 or more, got {seed}")
    if edit_pairs < 0:
        raise DatasetError(f"--edit-pairs: expected 0 or more, got {edit_pairs}")


def save_png(path: Path, array: np.ndarray, mode: str) -> None:
    Image.fromarray(array, mode).save(path, compress_level=1)


def write_dataset(out: Path, count: int, seed: int = 0, size: int = 128, test_fraction: float = 0.1,
                  unseen_count: int | None = None, overwrite: bool = False, progress: bool = True,
                  edit_pairs: int = 0) -> dict:
    """Render the data set into ``out`` (see the module docstring); return what ``dataset.json`` holds.
    ``edit_pairs``: that many edits of every training item, in ``out/edits/train``.

    The folder is built beside ``out`` (``out.tmp-XXXX``) and renamed into place when complete. An existing
    non-empty ``out`` is refused unless ``overwrite``.
    """
    from tqdm.auto import tqdm

    _check(count, size, test_fraction, unseen_count, seed, edit_pairs)
    out = Path(out).absolute()
    if out.exists():
        if not out.is_dir():
            raise DatasetError(f"--out: '{out}' exists and is not a folder")
        if any(out.iterdir()) and not overwrite:
            raise DatasetError(f"--out: '{out}' exists and is not empty; pass --overwrite to replace it")
    counts = split_counts(count, test_fraction, unseen_count)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=out.parent, prefix=f"{out.name}.tmp-"))
    try:
        start = {"train": 0, "test": counts["train"], "unseen": count}
        with tqdm(total=sum(counts.values()), desc="rendering", unit="item", disable=not progress) as bar:
            for split in SPLITS:
                wdir, pdir = stage / "worn" / split, stage / "product" / split
                (wdir / "labels").mkdir(parents=True)
                (pdir / "masks").mkdir(parents=True)
                with open(wdir / "metadata.jsonl", "w") as wmeta, open(pdir / "metadata.jsonl", "w") as pmeta:
                    for k in range(counts[split]):
                        index = start[split] + k
                        item = render_item(seed, index, size, held_out=split == "unseen")
                        name = f"{k:05d}.png"
                        save_png(wdir / name, item.worn, "RGB")
                        save_png(wdir / "labels" / name, item.labels, "L")
                        save_png(pdir / name, item.product, "RGB")
                        save_png(pdir / "masks" / name, item.mask, "L")
                        row = {"file_name": name, "text": item.text, **item.garment.attributes(), "item": index}
                        wmeta.write(json.dumps({**row, "label_file": f"labels/{name}"}) + "\n")
                        pmeta.write(json.dumps({**row, "mask_file": f"masks/{name}"}) + "\n")
                        bar.update(1)
        edits = write_edit_pairs(stage, seed, size, counts["train"], edit_pairs, progress)
        info = {
            "version": VERSION,
            "generator": "fashiongen.training.dataset",
            "arguments": {"count": count, "seed": seed, "size": size, "test_fraction": test_fraction,
                          "unseen_count": unseen_count, "edit_pairs": edit_pairs},
            "counts": counts,
            "item_ranges": {s: [start[s], start[s] + counts[s]] for s in SPLITS},
            "supersample": SUPERSAMPLE,
            "segment_classes": list(SEGMENT_CLASSES),
            "held_out": [caption(g) for g in HELD_OUT],
            **({"edit_pairs": edits} if edit_pairs else {}),
        }
        (stage / "dataset.json").write_text(json.dumps(info, indent=2) + "\n")
        os.chmod(stage, 0o777 & ~_umask())
        replace_folder(stage, out)
    finally:
        if stage.exists():
            shutil.rmtree(stage)
    return info


def write_edit_pairs(stage: Path, seed: int, size: int, n_train: int, per_item: int, progress: bool) -> int:
    """``per_item`` edit pairs of each training item in ``stage/edits/train`` (none for 0); how many were written."""
    from tqdm.auto import tqdm

    from .edit_renders import EDITS, write_edits

    if not per_item:
        return 0
    with tqdm(total=n_train * per_item, desc="rendering edits", unit="pair", disable=not progress) as bar:
        return write_edits(stage / EDITS / "train", seed, size, range(n_train), per_item, bar)


def _umask() -> int:
    u = os.umask(0)
    os.umask(u)
    return u


# -- command line --------------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``dataset`` command's arguments (``fashiongen dataset`` and ``python -m training.dataset``)."""
    parser.add_argument("--out", required=True, type=Path, help="folder to write (must not exist or be empty)")
    parser.add_argument("--count", required=True, type=int, help="items in train + test")
    parser.add_argument("--seed", type=int, default=0, help="seed (default 0); item i of a seed is always the same")
    parser.add_argument("--size", type=int, default=128, help="image side in pixels, a multiple of 8 (default 128)")
    parser.add_argument("--test-fraction", type=float, default=0.1,
                        help="share of --count rendered as test items (default 0.1)")
    parser.add_argument("--unseen-count", type=int, default=None,
                        help="items of held-out combinations (default max(50, count // 20))")
    parser.add_argument("--edit-pairs", type=int, default=0, metavar="N",
                        help="also write N edits of every training item (the item re-rendered with one or two "
                        "attributes changed, all else the same) in DIR/edits/train, InstructPix2Pix pairs for "
                        "`fashiongen train-pix2pix` (default 0: none)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    add_progress_argument(parser)


def run(args: argparse.Namespace) -> int:
    """Write the data set the arguments describe; print a summary. Raises :class:`DatasetError` on bad input."""
    info = write_dataset(args.out, args.count, seed=args.seed, size=args.size, test_fraction=args.test_fraction,
                         unseen_count=args.unseen_count, overwrite=args.overwrite,
                         progress=not getattr(args, "no_progress", False), edit_pairs=args.edit_pairs)
    c = info["counts"]
    edits = f", {info['edit_pairs']} edit pairs" if "edit_pairs" in info else ""
    print(f"wrote {args.out}: {c['train']} train, {c['test']} test, {c['unseen']} unseen items{edits} "
          f"({info['arguments']['size']} px, worn + product views)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.dataset",
        description="Render the procedural fashion data set: each item a garment worn by a figure (with its "
        "18-class label map) and the same garment alone on white (with its mask), as imagefolder splits.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
