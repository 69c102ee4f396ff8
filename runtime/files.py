"""Writing outputs so that nothing is ever half written: a folder is built beside its destination and
renamed into place only when complete."""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import InputError


@contextmanager
def staged_folder(out_dir: Path, marker: str, what: str, arg: str = "out"):
    """Yield a temporary folder beside ``out_dir``; on success it replaces ``out_dir`` in one rename.

    An existing ``out_dir`` is replaced only if it is one of ours (it holds ``marker``) or empty; anything
    else is refused, so a mistyped path never costs a user their folder. A place where no folder can be made
    (a read-only parent, a file in the way) is refused naming ``arg``, before anything is built.
    """
    out_dir = Path(out_dir).absolute()
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir()) and not (out_dir / marker).exists())):
        raise InputError(f"{arg}: '{out_dir}' exists and is not {what}; refusing to overwrite it")
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.partial-"))
    except OSError as exc:
        raise InputError(f"{arg}: cannot write a folder at '{out_dir}' ({exc.strerror or exc})") from None
    try:
        yield stage
        os.chmod(stage, usual_mode(directory=True))  # mkdtemp makes it 0700: others could not read the engines
        replace_folder(stage, out_dir)
    finally:
        if stage.exists():
            shutil.rmtree(stage)


def replace_folder(stage: Path, out_dir: Path) -> None:
    """Move the finished folder ``stage`` to ``out_dir``, replacing what is there with renames only (the old
    folder is moved aside first and deleted last), so that ``out_dir`` is never half written."""
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        os.replace(out_dir, old)
        os.replace(stage, out_dir)
        shutil.rmtree(old)
    else:
        os.replace(stage, out_dir)


def marker_file(folder: Path, name: str, arg: str, error: type[InputError], made_by: str, kind: str) -> Path:
    """``folder/name``, the file that makes ``folder`` one of ours (an engine folder's manifest, an index's
    metadata); a path that is not a folder, or a folder without it, is refused naming ``arg`` and what makes one
    (``made_by``, a command) or what the folder is not (``kind``)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise error(f"{arg}: '{folder}' is not a folder (run `{made_by}` first)")
    path = folder / name
    if not path.is_file():
        raise error(f"{arg}: '{folder}' has no {name} (not {kind})")
    return path


def link_or_copy(src: Path, dst: Path) -> None:
    """A hard link where the file system allows (model weights are large), else a copy; always of the file
    itself: a symbolic link (a Hugging Face cache snapshot is made of relative ones, and so is the shipped demo
    family) is followed first, since a relative link linked or copied into another folder points nowhere."""
    src = Path(src).resolve()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def usual_mode(directory: bool = False) -> int:
    """The permissions a new file (or folder) gets from ``open`` (``mkdir``) under the process's umask; temporary
    files and folders (mkstemp, mkdtemp) and some writers (ONNX's external data) make theirs private instead, which
    a server running as another user could not read."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def publish(tmp: str | Path, path: Path) -> None:
    """Give a finished temporary file the usual permissions (mkstemp makes it 0600) and rename it into place."""
    os.chmod(tmp, usual_mode())
    os.replace(tmp, path)


@contextmanager
def atomic_file(path: Path):
    """Yield a temporary path beside ``path``; when the block succeeds it is renamed onto ``path``.

    The one way this project writes a file: a reader (or a crash) never sees half of one, and a failed write
    leaves the previous file as it was.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp" + path.suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
