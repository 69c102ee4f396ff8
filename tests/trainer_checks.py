"""What every trainer's tests check the same way: a one-line refusal, and a run cut after a checkpoint."""
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
