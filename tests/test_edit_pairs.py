"""The edit pairs of ``train-pix2pix`` (torch-free): pairs differ in exactly the attributes they say, every
imperative names each changed attribute's new value, both instruction forms appear, and the seed fixes it all."""
from __future__ import annotations

from pathlib import Path

import pytest

from fashiongen.runtime.errors import InputError
from fashiongen.training.attributes import ATTRIBUTES, Garment, all_garments, caption
from fashiongen.training.edit_pairs import (attribute_rows, changed_attributes, check_pairing, clause, family,
                                            imperative, make_pairs)
from fashiongen.training.imagefolder import Row

#: Every 7th combination of the vocabulary (160 of 1,120: every type, most values), some twice.
GARMENTS = all_garments()[::7] + all_garments()[::35]


def rows_of(garments) -> list[Row]:
    return [Row(Path(f"/catalog/{i:05d}.png"), {"file_name": f"{i:05d}.png", "text": caption(g), **g.attributes()})
            for i, g in enumerate(garments)]


def pairs_of(garments, seed=0, per_item=3, mix=0.5):
    rows = rows_of(garments)
    return make_pairs(attribute_rows(rows), [r.text for r in rows], seed, per_item, mix)


def test_pairs_differ_in_exactly_the_attributes_they_name():
    pairs = pairs_of(GARMENTS)
    assert len(pairs) == 3 * len(GARMENTS)  # every item of this set has a neighbour
    table = attribute_rows(rows_of(GARMENTS))
    for pair in pairs:
        source, target = GARMENTS[pair.source], GARMENTS[pair.target]
        assert changed_attributes(table[pair.source], table[pair.target]) == pair.changed
        assert 1 <= len(pair.changed) <= 2 and all(getattr(target, a) is not None for a in pair.changed)
        if "type" in pair.changed:
            assert family(source.type) == family(target.type)
    changed = {a for p in pairs for a in p.changed}
    assert changed == set(ATTRIBUTES), changed  # every attribute is edited somewhere


def test_every_imperative_names_each_changed_attribute():
    pairs = pairs_of(GARMENTS, mix=1.0)
    for pair in pairs:
        target = GARMENTS[pair.target]
        assert pair.instruction == imperative(tuple(GARMENTS[pair.source].attributes().values()),
                                              tuple(target.attributes().values()), pair.changed)
        clauses = pair.instruction.split(" and ")
        assert len(clauses) == len(pair.changed)
        for words, attribute in zip(clauses, pair.changed):
            assert getattr(target, attribute) in words, (pair, words)
    assert {len(p.changed) for p in pairs} == {1, 2} and any(" and " in p.instruction for p in pairs)


@pytest.mark.parametrize("attribute,value,words", [
    ("colour", "red", "make it red"), ("pattern", "striped", "make it striped"), ("pattern", "plain", "make it plain"),
    ("sleeve", "long", "give it long sleeves"), ("sleeve", "sleeveless", "make it sleeveless"),
    ("neckline", "v-neck", "make it a v-neck"), ("neckline", "scoop", "give it a scoop neck"),
    ("type", "crop top", "make it a crop top"), ("length", "maxi", "make it maxi length")])
def test_clauses_read_as_a_user_types_them(attribute, value, words):
    assert clause(attribute, value) == words


def test_two_changes_join_with_and_and_plurals_take_them():
    top = Garment("t-shirt", "black", "plain", "short", "crewneck")
    crop = Garment("crop top", "black", "plain", "sleeveless", "crewneck")
    values = [tuple(g.attributes().values()) for g in (top, crop)]
    assert imperative(*values, ("type", "sleeve")) == "make it a crop top and make it sleeveless"
    pants, shorts = Garment("pants", "navy"), Garment("shorts", "red")
    values = [tuple(g.attributes().values()) for g in (pants, shorts)]
    assert imperative(*values, ("type", "colour")) == "make them shorts and make them red"


def test_instruction_mix_gives_both_forms_and_the_seed_fixes_the_pairs():
    pairs = pairs_of(GARMENTS, mix=0.5)
    captions = {caption(g) for g in GARMENTS}
    as_caption = [p for p in pairs if p.instruction in captions]
    assert 0.35 < len(as_caption) / len(pairs) < 0.65
    assert all(p.instruction == caption(GARMENTS[p.target]) for p in as_caption)
    assert pairs == pairs_of(GARMENTS, mix=0.5) != pairs_of(GARMENTS, seed=1, mix=0.5)
    assert all(p.instruction in captions for p in pairs_of(GARMENTS, mix=0.0))


def test_a_dress_never_becomes_a_skirt_and_lone_items_get_no_pair():
    dress = Garment("dress", "red", "plain", "long", "v-neck", "maxi")
    skirt = Garment("skirt", "red", "plain", None, None, "maxi")
    assert pairs_of([dress, skirt]) == []
    refused = pytest.raises(InputError, match="no.* neighbour|none of the 2 items")
    with refused:
        check_pairing([], rows_of([dress, skirt]))


def test_rows_without_the_attribute_columns_are_refused_in_one_line():
    rows = rows_of(GARMENTS[:3])
    del rows[1].columns["neckline"]
    with pytest.raises(InputError) as caught:
        attribute_rows(rows)
    assert "row 2 has no 'neckline' column" in str(caught.value) and "\n" not in str(caught.value)
