"""The garment vocabulary of the procedural data set: one place for each fact.

A garment is a type plus the attributes that apply to it (:data:`TYPE_SPECS`): a colour and a pattern always;
a sleeve and a neckline for tops and dresses; a length for skirts and dresses. Crop versus regular length of a
top is carried by the type ("crop top" is the cropped one), so tops have no ``length``.

Captions name every attribute that applies, in one fixed order::

    colour [striped] [length] [sleeveless | short sleeve | long sleeve] [neckline] type

e.g. "black short sleeve crewneck crop top", "red striped long sleeve v-neck shirt", "navy midi skirt",
"beige shorts", "green maxi sleeveless scoop dress". A type whose attribute has a single possible value still
names it ("grey long sleeve crewneck sweater", "white sleeveless scoop tank top"): one rule, no exceptions.
:func:`parse_caption` reads such a caption back and raises ``ValueError`` on anything else.

:data:`HELD_OUT` lists attribute combinations that the data set never shows in its train/test splits; its
``unseen`` split shows only them, to measure composition (see its comment for how it was chosen).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

# -- the segmenter's layout (mattmdjaga/segformer_b2_clothes, ATR's 18 classes) ------------------------------
SEGMENT_CLASSES = ("Background", "Hat", "Hair", "Sunglasses", "Upper-clothes", "Skirt", "Pants", "Dress", "Belt",
                   "Left-shoe", "Right-shoe", "Face", "Left-leg", "Right-leg", "Left-arm", "Right-arm", "Bag",
                   "Scarf")
BACKGROUND, HAT, HAIR, SUNGLASSES, UPPER_CLOTHES, SKIRT, PANTS, DRESS, BELT = range(9)
LEFT_SHOE, RIGHT_SHOE, FACE, LEFT_LEG, RIGHT_LEG, LEFT_ARM, RIGHT_ARM, BAG, SCARF = range(9, 18)

# -- attribute values -----------------------------------------------------------------------------------------
#: Colour names and the sRGB value a garment of that colour is drawn with (before a small per-item jitter).
COLOURS: dict[str, tuple[int, int, int]] = {
    "black": (30, 30, 33),
    "white": (243, 243, 240),
    "grey": (132, 133, 136),
    "navy": (30, 42, 92),
    "blue": (45, 110, 215),
    "red": (205, 32, 38),
    "pink": (244, 150, 190),
    "green": (38, 145, 64),
    "yellow": (246, 208, 40),
    "beige": (216, 194, 158),
}
#: The colour of the stripes of a striped garment of each colour (the named colour is the ground, the stripes
#: are narrower): white on dark or saturated grounds, navy or black on light ones.
STRIPE_COLOURS: dict[str, str] = {
    "black": "white", "white": "navy", "grey": "white", "navy": "white", "blue": "white", "red": "white",
    "pink": "white", "green": "white", "yellow": "navy", "beige": "black",
}
#: Colours of the companion garments a figure wears with the captioned one (never the captioned colour).
NEUTRAL_COLOURS = ("black", "white", "grey", "navy", "beige")

PATTERNS = ("plain", "striped")
SLEEVES = ("sleeveless", "short", "long")
#: How a sleeve value is written in a caption.
SLEEVE_WORDS = {"sleeveless": "sleeveless", "short": "short sleeve", "long": "long sleeve"}
NECKLINES = ("crewneck", "v-neck", "scoop")
#: Skirt and dress lengths: mini ends mid-thigh, midi mid-calf, maxi at the ankle.
LENGTHS = ("mini", "midi", "maxi")


@dataclass(frozen=True)
class TypeSpec:
    """What a garment type is: how it is worn (segmenter class, family) and which attribute values it takes.

    An empty tuple means the attribute does not apply (it is ``None`` on the garment).
    """

    name: str
    segment_class: int
    family: str  # "top", "dress", "skirt" or "bottom" (pants and shorts)
    sleeves: tuple[str, ...] = ()
    necklines: tuple[str, ...] = ()
    lengths: tuple[str, ...] = ()


TYPE_SPECS: dict[str, TypeSpec] = {s.name: s for s in (
    TypeSpec("t-shirt", UPPER_CLOTHES, "top", ("short", "long"), NECKLINES),
    TypeSpec("crop top", UPPER_CLOTHES, "top", SLEEVES, NECKLINES),
    TypeSpec("tank top", UPPER_CLOTHES, "top", ("sleeveless",), NECKLINES),
    TypeSpec("shirt", UPPER_CLOTHES, "top", ("short", "long"), ("crewneck", "v-neck")),  # collar closed / open
    TypeSpec("sweater", UPPER_CLOTHES, "top", ("long",), ("crewneck", "v-neck")),
    TypeSpec("dress", DRESS, "dress", SLEEVES, NECKLINES, LENGTHS),
    TypeSpec("skirt", SKIRT, "skirt", (), (), LENGTHS),
    TypeSpec("pants", PANTS, "bottom"),
    TypeSpec("shorts", PANTS, "bottom"),
)}
TYPES = tuple(TYPE_SPECS)
ATTRIBUTES = ("type", "colour", "pattern", "sleeve", "neckline", "length")


@dataclass(frozen=True, order=True)
class Garment:
    """One attribute combination; ``None`` where an attribute does not apply to the type. Validated on creation."""

    type: str
    colour: str
    pattern: str = "plain"
    sleeve: str | None = None
    neckline: str | None = None
    length: str | None = None

    def __post_init__(self) -> None:
        spec = TYPE_SPECS.get(self.type)
        if spec is None:
            raise ValueError(f"unknown garment type {self.type!r}; expected one of {', '.join(TYPES)}")
        if self.colour not in COLOURS:
            raise ValueError(f"unknown colour {self.colour!r}; expected one of {', '.join(COLOURS)}")
        if self.pattern not in PATTERNS:
            raise ValueError(f"unknown pattern {self.pattern!r}; expected one of {', '.join(PATTERNS)}")
        for attr, allowed in (("sleeve", spec.sleeves), ("neckline", spec.necklines), ("length", spec.lengths)):
            value = getattr(self, attr)
            if not allowed and value is not None:
                raise ValueError(f"a {self.type} has no {attr} (got {value!r})")
            if allowed and value not in allowed:
                raise ValueError(f"a {self.type} needs a {attr} among {', '.join(allowed)} (got {value!r})")

    @property
    def spec(self) -> TypeSpec:
        return TYPE_SPECS[self.type]

    @property
    def segment_class(self) -> int:
        return TYPE_SPECS[self.type].segment_class

    def attributes(self) -> dict[str, str | None]:
        """The metadata columns: every attribute, ``None`` where it does not apply."""
        return {a: getattr(self, a) for a in ATTRIBUTES}


def caption(garment: Garment) -> str:
    """The garment's caption, e.g. "red striped long sleeve v-neck shirt" (see the module docstring)."""
    words = [garment.colour]
    if garment.pattern == "striped":
        words.append("striped")
    if garment.length is not None:
        words.append(garment.length)
    if garment.sleeve is not None:
        words.append(SLEEVE_WORDS[garment.sleeve])
    if garment.neckline is not None:
        words.append(garment.neckline)
    words.append(garment.type)
    return " ".join(words)


_SLEEVE_BY_WORDS = {w: s for s, w in SLEEVE_WORDS.items()}


def parse_caption(text: str) -> Garment:
    """The garment a caption written by :func:`caption` names (case and extra spaces ignored).

    Raises ``ValueError`` naming the first word it cannot place, or the attribute the type is missing.
    """
    words = text.lower().split()
    pos = 0

    def take(options) -> str | None:
        nonlocal pos
        for option in sorted(options, key=lambda o: -len(o.split())):  # longest phrase first
            n = len(option.split())
            if " ".join(words[pos:pos + n]) == option:
                pos += n
                return option
        return None

    colour = take(COLOURS)
    if colour is None:
        raise ValueError(f"caption {text!r}: expected a colour first ({', '.join(COLOURS)})")
    pattern = "striped" if take(("striped",)) else "plain"
    length = take(LENGTHS)
    sleeve_words = take(_SLEEVE_BY_WORDS)
    neckline = take(NECKLINES)
    garment_type = take(TYPES)
    if garment_type is None or pos != len(words):
        where = " ".join(words[pos:]) or "(end)"
        raise ValueError(f"caption {text!r}: cannot read {where!r}; expected "
                         "colour [striped] [length] [sleeve] [neckline] type")
    try:
        return Garment(garment_type, colour, pattern, _SLEEVE_BY_WORDS.get(sleeve_words), neckline, length)
    except ValueError as e:
        raise ValueError(f"caption {text!r}: {e}") from None


def garments_of(garment_type: str) -> list[Garment]:
    """Every valid combination of one type, in a fixed order."""
    spec = TYPE_SPECS[garment_type]
    return [Garment(garment_type, c, p, s, n, l)
            for c, p, s, n, l in itertools.product(COLOURS, PATTERNS, spec.sleeves or (None,),
                                                   spec.necklines or (None,), spec.lengths or (None,))]


def all_garments() -> list[Garment]:
    """Every valid combination (1,120 of them), type by type in :data:`TYPES` order."""
    return [g for t in TYPES for g in garments_of(t)]


# Held-out combinations (75 of 1,120, 6.7%): never in train/test, the only ones in `unseen`. Chosen once by a
# deterministic greedy rule and written out here so that they never move: per type, max(2, round(6.5% of its
# combinations)); colours assigned round-robin across all of them (black, white, ... beige, then again) so that
# every colour and every type is held out several times, patterns alternating, and the other attributes cycling
# through their values; a candidate was kept only if, after removing it, every pair of its attribute values
# (colour+pattern, colour+sleeve, sleeve+neckline, ... within its type) is still seen in training, and every
# single value with its type is still seen. So each held-out caption is a new composition of parts the model saw.
# pants and shorts have only colour+pattern, so for them only the single values are guaranteed seen.
_HELD_OUT_CAPTIONS = (
    # t-shirt (8 of 120)
    "black short sleeve crewneck t-shirt",
    "white striped long sleeve scoop t-shirt",
    "grey long sleeve v-neck t-shirt",
    "navy striped long sleeve crewneck t-shirt",
    "blue short sleeve scoop t-shirt",
    "red striped short sleeve v-neck t-shirt",
    "pink short sleeve crewneck t-shirt",
    "green striped long sleeve scoop t-shirt",
    # crop top (12 of 180)
    "yellow sleeveless crewneck crop top",
    "beige striped short sleeve scoop crop top",
    "black sleeveless v-neck crop top",
    "white striped long sleeve crewneck crop top",
    "grey sleeveless scoop crop top",
    "navy striped long sleeve v-neck crop top",
    "blue short sleeve crewneck crop top",
    "red striped long sleeve scoop crop top",
    "pink short sleeve v-neck crop top",
    "green striped sleeveless crewneck crop top",
    "yellow short sleeve scoop crop top",
    "beige striped sleeveless v-neck crop top",
    # tank top (4 of 60)
    "black sleeveless crewneck tank top",
    "white striped sleeveless scoop tank top",
    "grey sleeveless v-neck tank top",
    "navy striped sleeveless crewneck tank top",
    # shirt (5 of 80)
    "blue short sleeve crewneck shirt",
    "red striped short sleeve v-neck shirt",
    "pink long sleeve crewneck shirt",
    "green striped long sleeve v-neck shirt",
    "yellow short sleeve crewneck shirt",
    # sweater (3 of 40)
    "beige long sleeve crewneck sweater",
    "black striped long sleeve v-neck sweater",
    "white long sleeve crewneck sweater",
    # dress (35 of 540)
    "grey mini sleeveless crewneck dress",
    "navy striped maxi sleeveless v-neck dress",
    "blue midi short sleeve crewneck dress",
    "red striped mini short sleeve scoop dress",
    "pink maxi long sleeve crewneck dress",
    "green striped midi long sleeve scoop dress",
    "yellow mini sleeveless v-neck dress",
    "beige striped maxi sleeveless scoop dress",
    "black midi short sleeve v-neck dress",
    "white striped mini long sleeve crewneck dress",
    "grey maxi long sleeve v-neck dress",
    "navy striped midi sleeveless crewneck dress",
    "blue mini sleeveless scoop dress",
    "red striped maxi short sleeve crewneck dress",
    "pink midi short sleeve scoop dress",
    "green striped mini long sleeve v-neck dress",
    "yellow maxi long sleeve scoop dress",
    "beige striped midi sleeveless v-neck dress",
    "black mini short sleeve crewneck dress",
    "white striped maxi short sleeve v-neck dress",
    "grey midi long sleeve crewneck dress",
    "navy striped mini long sleeve scoop dress",
    "blue maxi sleeveless crewneck dress",
    "red striped midi sleeveless scoop dress",
    "pink mini short sleeve v-neck dress",
    "green striped maxi short sleeve scoop dress",
    "yellow midi long sleeve v-neck dress",
    "beige striped mini sleeveless crewneck dress",
    "black maxi sleeveless v-neck dress",
    "white striped midi short sleeve crewneck dress",
    "grey mini short sleeve scoop dress",
    "navy striped maxi long sleeve crewneck dress",
    "blue midi long sleeve scoop dress",
    "red striped mini sleeveless v-neck dress",
    "pink maxi sleeveless scoop dress",
    # skirt (4 of 60)
    "green mini skirt",
    "yellow striped maxi skirt",
    "beige midi skirt",
    "black striped mini skirt",
    # pants (2 of 20)
    "white pants",
    "grey striped pants",
    # shorts (2 of 20)
    "navy shorts",
    "blue striped shorts",
)
HELD_OUT: tuple[Garment, ...] = tuple(parse_caption(c) for c in _HELD_OUT_CAPTIONS)


def training_garments() -> list[Garment]:
    """Every combination that train/test may show: :func:`all_garments` minus :data:`HELD_OUT`."""
    held = set(HELD_OUT)
    return [g for g in all_garments() if g not in held]
