"""Edit pairs for ``train-pix2pix``: which catalog items an InstructPix2Pix model learns to turn into which, and
the words it is told.

Approach 2 retrieves the catalog item nearest a query and edits it toward the query, so the edits it must learn
are the small ones between neighbouring items: a pair (source, target) of items whose attributes (the data set's
columns ``type``, ``colour``, ``pattern``, ``sleeve``, ``neckline``, ``length``) differ in one or two. A type
changes only within its family (a t-shirt may become a crop top, pants may become shorts; a dress never becomes
a skirt), and a change never takes an attribute away (the target names a value for every attribute changed).

Each pair's instruction is, with probability ``instruction_mix``, the imperative a user types ("make it red",
"give it long sleeves", "make it a crop top and make it sleeveless"), else the target's own caption ("black short
sleeve crewneck crop top"), which is what approach 2 sends after retrieval: the model must follow both.

Every source item gets ``per_item`` pairs. So that rare edits (a type, a neckline) are learned as often as the
plentiful ones (ten colours), a source first draws *which attributes* change, uniformly among the sets of one or
two attributes it has a neighbour for, then a neighbouring combination with that change, then an item of it.
Everything is drawn from one generator seeded by ``seed`` over the rows in order: the same data and seed give
the same pairs. Torch-free.
"""
from __future__ import annotations

import itertools
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from fashiongen.runtime.errors import InputError

from .attributes import ATTRIBUTES, TYPE_SPECS

#: Types that take "them": "make them shorts", "make them red".
PLURAL_TYPES = ("pants", "shorts")
#: The most attributes a pair differs in.
MAX_CHANGES = 2
_CHANGE_SETS = [s for n in range(1, MAX_CHANGES + 1) for s in itertools.combinations(ATTRIBUTES, n)]


@dataclass(frozen=True)
class EditPair:
    """Item ``source`` edited into item ``target`` (row indices), told ``instruction``; ``changed`` names the
    attributes in which they differ, in :data:`ATTRIBUTES` order."""

    source: int
    target: int
    changed: tuple[str, ...]
    instruction: str


def attribute_rows(rows: list, arg: str = "--data") -> list[tuple]:
    """Each row's attribute values in :data:`ATTRIBUTES` order (``None`` where one does not apply), or a one-line
    error naming the first row without one of the columns."""
    table = []
    for number, row in enumerate(rows, 1):
        missing = [a for a in ATTRIBUTES if a not in row.columns]
        if missing:
            raise InputError(f"{arg}: '{row.image.parent}' row {number} has no '{missing[0]}' column (pairs are made "
                             f"from the columns {', '.join(ATTRIBUTES)}, null where one does not apply, as "
                             f"`fashiongen dataset` writes them)")
        table.append(tuple(row.columns[a] for a in ATTRIBUTES))
    return table


def family(garment_type) -> str:
    """The type's family ("top", "dress", ...); a type the vocabulary does not know is a family of its own."""
    spec = TYPE_SPECS.get(garment_type)
    return spec.family if spec is not None else str(garment_type)


def changed_attributes(source: tuple, target: tuple) -> tuple[str, ...]:
    return tuple(a for a, s, t in zip(ATTRIBUTES, source, target) if s != t)


def editable(source: tuple, target: tuple, changed: tuple[str, ...]) -> bool:
    """One or two attributes change, each to a value, and a type only within its family."""
    values = dict(zip(ATTRIBUTES, target))
    if not 1 <= len(changed) <= MAX_CHANGES or any(values[a] is None for a in changed):
        return False
    return "type" not in changed or family(source[0]) == family(target[0])


def neighbours(combinations: list[tuple]) -> dict[tuple, dict[tuple[str, ...], list[tuple]]]:
    """For each combination, the editable combinations by the attributes that change, found through an index of
    the combinations with each set of one or two attributes masked (no comparison of every pair)."""
    index = defaultdict(list)
    for combination in combinations:
        for change in _CHANGE_SETS:
            index[change, _masked(combination, change)].append(combination)
    found = {}
    for combination in combinations:
        by_change = {}
        for change in _CHANGE_SETS:
            near = [other for other in index[change, _masked(combination, change)]
                    if changed_attributes(combination, other) == change and editable(combination, other, change)]
            if near:
                by_change[change] = near
        found[combination] = by_change
    return found


def _masked(combination: tuple, change: tuple[str, ...]) -> tuple:
    return tuple(None if a in change else v for a, v in zip(ATTRIBUTES, combination))


def make_pairs(table: list[tuple], captions: list[str], seed: int, per_item: int,
               instruction_mix: float) -> list[EditPair]:
    """``per_item`` pairs for every row that has a neighbour (see the module docstring), in row order."""
    items = defaultdict(list)
    for number, combination in enumerate(table):
        items[combination].append(number)
    rng = np.random.default_rng(seed)
    pairs = []
    for source, change, combination in plan_edits(table, neighbours(list(items)), rng, per_item):
        target = _pick(rng, items[combination])
        words = (imperative(table[source], table[target], change) if rng.random() < instruction_mix
                 else captions[target])
        pairs.append(EditPair(source, target, change, words))
    return pairs


def plan_edits(table: list[tuple], near: dict, rng: np.random.Generator, per_item: int):
    """(source row, attributes changed, target combination), ``per_item`` for every row of ``table`` that has a
    neighbour in ``near`` (:func:`neighbours`): the change drawn first, uniformly among those the row has, so
    that rare edits are learned as often as plentiful ones; then a combination with that change."""
    for source, combination in enumerate(table):
        changes = list(near.get(combination, ()))
        if not changes:
            continue
        order = rng.permutation(len(changes))
        for k in range(per_item):
            change = changes[order[k % len(changes)]]
            yield source, change, _pick(rng, near[combination][change])


def _pick(rng, choices: list):
    return choices[rng.integers(len(choices))]


def imperative(source: tuple, target: tuple, changed: tuple[str, ...]) -> str:
    """The instruction a user types for ``changed``, e.g. "make it a crop top and make it sleeveless"."""
    pronoun = "them" if source[0] in PLURAL_TYPES else "it"
    values = dict(zip(ATTRIBUTES, target))
    return " and ".join(clause(a, values[a], pronoun) for a in changed)


def clause(attribute: str, value: str, pronoun: str = "it") -> str:
    """One change in words: "make it red", "give it long sleeves", "make it a v-neck", "make it maxi length"."""
    if attribute == "type":
        return f"make {pronoun} {value}" if value in PLURAL_TYPES else f"make {pronoun} {_article(value)} {value}"
    if attribute == "sleeve":
        return f"make {pronoun} sleeveless" if value == "sleeveless" else f"give {pronoun} {value} sleeves"
    if attribute == "neckline":
        if value.endswith("neck"):  # "crewneck", "v-neck"
            return f"make {pronoun} {_article(value)} {value}"
        return f"give {pronoun} a {value} neck"
    if attribute == "length":
        return f"make {pronoun} {value} length"
    return f"make {pronoun} {value}"  # colour, pattern ("make it striped", "make it plain")


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def check_pairing(pairs: list[EditPair], rows: list, arg: str = "--data") -> None:
    """A data set with no item that has a neighbour cannot teach an edit: one line saying so."""
    if not pairs:
        raise InputError(f"{arg}: none of the {len(rows)} items has a neighbour that differs in one or two of "
                         f"{', '.join(ATTRIBUTES)}; train-pix2pix needs such pairs")
