"""What every trainer's tests check the same way: a one-line refusal, a run cut after a checkpoint, captioned data."""
from __future__ import annotations

import pytest

from fashiongen.runtime.errors import InputError
from fashiongen.training import runs


def refused(call, *words) -> str:
    """``call()`` raises an InputError of one line holding every one of ``words``; return its message."""
    with pytest.raises(InputError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message and all(w in message for w in words), message
    return message


def interrupted(monkeypatch, call, step: int) -> None:
    """Run ``call()`` until the checkpoint of ``step`` is written, then stop it as Ctrl-C would."""
    save = runs.RunFolder.save

    def save_then_stop(self, at, *args):
        path = save(self, at, *args)
        if at == step:
            raise KeyboardInterrupt
        return path

    with monkeypatch.context() as patch:
        patch.setattr(runs.RunFolder, "save", save_then_stop)
        with pytest.raises(KeyboardInterrupt):
            call()


def captioned_data(root, count: int = 12) -> dict:
    """The procedural data set's product view (64 px garments on white, captions in ``text``), as approach 2's
    trainers take it: ``{"train": imagefolder, "test": imagefolder}``."""
    from fashiongen.training.dataset import write_dataset

    write_dataset(root / "set", count=count, size=64, test_fraction=0.25, unseen_count=0, progress=False)
    return {split: root / "set" / "product" / split for split in ("train", "test")}


def rewrite_rows(folder, edit) -> None:
    """Apply ``edit(rows)`` to an imagefolder's metadata.jsonl (to spoil it for a refusal test)."""
    import json

    meta = folder / "metadata.jsonl"
    rows = [json.loads(line) for line in meta.read_text().splitlines()]
    edit(rows)
    meta.write_text("".join(json.dumps(r) + "\n" for r in rows))
