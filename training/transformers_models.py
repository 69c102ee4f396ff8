"""What the trainers of transformers models share (``train-segmenter``, ``train-clip``, ``train-captioner``).

Each of them takes the same base arguments (``--model DIR`` to fine-tune, or ``--config FILE.json`` for seeded
random weights of a size dataclass of :mod:`fashiongen.random_checkpoints`), imagefolders (``--data``,
``--eval-data``) and a run folder (``--out``); draws its micro-batches the same way; and ends the same way: the
trained network, with its processor files, as a transformers folder ``OUT/model`` that the serving side loads
as it is, holding ``training.json`` (arguments, seed, every step's loss, wall time, held-out scores), written
beside its final name and renamed into place. Defined once here so that the three read, check and write alike.

Torch-free at import: the command line builds every trainer's parser at start-up.
"""
from __future__ import annotations

import json
import tempfile
import time
from dataclasses import fields
from pathlib import Path
from typing import Callable, Iterable


from fashiongen.runtime.errors import InputError

MODEL_DIR = "model"
RECORD_FILE = "training.json"


def add_run_arguments(p, data: str, model: str, config: str, eval_data: str) -> None:
    """``--data``, ``--model`` | ``--config``, ``--out`` and ``--eval-data``, with each trainer's own help."""
    p.add_argument("--data", type=Path, action="append", required=True, metavar="DIR", help=f"{data}; repeatable")
    base = p.add_mutually_exclusive_group(required=True)
    base.add_argument("--model", type=Path, metavar="DIR", help=model)
    base.add_argument("--config", type=Path, metavar="FILE.json", help=config)
    p.add_argument("--out", type=Path, required=True,
                   help="run folder: run.json, checkpoints/, and the trained model in model/")
    p.add_argument("--eval-data", type=Path, action="append", default=[], metavar="DIR",
                   help=f"held-out imagefolder like --data: {eval_data} at the end; repeatable")


# -- the base model -------------------------------------------------------------------------------------------
def read_size(path: Path, size_class: type):
    """(``size_class`` instance, the JSON object as read) from a ``--config`` file; unknown fields are refused.
    Lists become tuples, as the size dataclasses hold them."""
    from .text_to_image import read_config_object

    raw = read_config_object(path, [f.name for f in fields(size_class)], f"{size_class.__name__} fields")
    return size_class(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}), raw


def random_base(config: Path, size_class: type, seed: int, write: Callable, load: Callable, what: str):
    """(what ``load`` returns, the ``--config`` JSON as read): the random checkpoint that ``write(folder, size,
    seed)`` makes (the one tests and the demo build) written to a temporary folder and read back by ``load``, the
    loader of ``--model``, so that a random start and a fine-tune are loaded by the same code."""
    from huggingface_hub.errors import StrictDataclassError  # transformers 5 configs validate themselves

    size, raw = read_size(Path(config), size_class)
    with tempfile.TemporaryDirectory(prefix="fashiongen-base-") as tmp:
        try:
            folder = write(Path(tmp) / "base", size, seed)
        except (ValueError, TypeError, IndexError, StrictDataclassError) as exc:
            why = str(exc.__cause__ or exc).strip().splitlines()[0]  # a config's validator wraps the reason
            raise InputError(f"--config: '{config}' does not make {what} ({why})") from None
        return load(folder), raw


def check_model_type(folder: Path, expected: str, what: str, arg: str = "--model") -> Path:
    """``folder``, if its ``config.json`` says ``model_type`` ``expected``; else one line naming what it is.
    Why: transformers loads a folder of another architecture with a warning and random weights, so a wrong
    ``--model`` would train from noise without a word."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{arg}: '{folder}' is not a folder ({what} folder expected)")
    try:
        found = json.loads((folder / "config.json").read_text()).get("model_type")
    except (OSError, json.JSONDecodeError, AttributeError):
        raise InputError(f"{arg}: '{folder}' has no readable config.json (not {what} folder)") from None
    if found != expected:
        raise InputError(f"{arg}: '{folder}' holds a '{found}' model; expected {what} (model_type '{expected}')")
    return folder


# -- the run --------------------------------------------------------------------------------------------------
def schedule_identity(schedule) -> dict:
    """The schedule's part of a run's identity: what a resume must repeat (not --steps: a resume may extend)."""
    return {"batch_size": schedule.batch_size, "gradient_accumulation": schedule.gradient_accumulation,
            "learning_rate": schedule.learning_rate, "warmup_steps": schedule.warmup_steps, "seed": schedule.seed,
            "mixed_precision": schedule.mixed_precision}


def run_record(arguments: dict, schedule, losses: list[float], started: float, **extra) -> dict:
    """``training.json``: the arguments (not the command line's handler), seed, every step's loss, this
    invocation's wall time, and ``extra`` (counts, held-out scores)."""
    return {"arguments": {k: v for k, v in arguments.items() if not callable(v)}, "seed": schedule.seed,
            "steps": len(losses), "final_loss": losses[-1], "losses": losses, **extra,
            "wall_time_s": round(time.perf_counter() - started, 3)}


def write_model(folder: Path, parts: Iterable, record: dict, what: str) -> Path:
    """``folder``: every one of ``parts`` (a model, its processor or tokenizer) saved with ``save_pretrained``,
    and ``training.json``; built beside it and renamed into place, so a reader never sees half a model."""
    import transformers

    from fashiongen.runtime.files import staged_folder

    transformers.utils.logging.disable_progress_bar()  # a bar for writing one small file says nothing
    with staged_folder(folder, "config.json", what) as stage:
        for part in parts:
            part.save_pretrained(stage)
        (stage / RECORD_FILE).write_text(json.dumps(record, indent=2, default=str) + "\n")  # paths as text
    return Path(folder)


def print_summary(folder: Path) -> dict:
    """One line saying what a run wrote (steps, first and last loss, time); returns its record."""
    record = json.loads((Path(folder) / RECORD_FILE).read_text())
    losses = record["losses"]
    print(f"wrote {folder}: {len(losses)} steps, loss {losses[0]:.4f} -> {losses[-1]:.4f} in "
          f"{record['wall_time_s']:.0f} s")
    return record
