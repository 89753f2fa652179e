"""Output files: atomic writes, the one overwrite rule, and checks that an output folder is writable.

Every file a command writes appears whole or not at all: it is written to a hidden staging file in
the same folder and renamed over the target (``os.replace`` is atomic on POSIX and Windows), so a
crash or ``kill -9`` never leaves a half-written result behind.

The overwrite rule, shared by every command: an existing output is refused with one line naming it,
unless ``--force`` is passed, or the command can resume it (the same inputs, recorded next to the
partial result: ``screen`` shards, ``extract`` caches, ``train`` checkpoints).

The refusal rule: a run that fails creates nothing. Commands check their inputs before they write,
folders appear with the first file written into them (:func:`atomic_path`), and
:func:`output_folder` puts back an output folder a failed run found absent or empty, unless the run
left something to resume from.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from persona_guard.errors import PersonaGuardError

OVERWRITE_HELP = ("replace existing outputs (without it, a command refuses to overwrite a result; "
                  "runs that resume from checkpoints of the same inputs continue instead)")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a staging path next to ``path``; on success rename it over ``path``, on any exception
    (``KeyboardInterrupt`` included) delete it, so no ``.*.tmp`` file is ever left behind.

    For writers that take a file name (``safetensors.save_file``, ``figure.savefig``, GGUF). The
    staging name keeps ``path``'s suffix, since some writers choose a format by it. Errors: an
    ``OSError`` while writing or renaming (``path`` is a folder, disk full) becomes a
    :class:`PersonaGuardError` naming ``path``.
    """
    path = Path(path)
    staging = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp{path.suffix}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield staging
        os.replace(staging, path)
    except OSError as error:
        raise PersonaGuardError(f"cannot write {path}: {error.strerror or error}") from None
    finally:
        staging.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns ``path``."""
    with atomic_path(path) as staging:
        staging.write_text(text, encoding="utf-8")
    return Path(path)


def write_json_atomic(path: str | Path, data, *, indent: int | None = 2) -> Path:
    """Write ``data`` as strict JSON (NaN and infinity refused, not written as bare ``NaN``)."""
    try:
        text = json.dumps(data, indent=indent, ensure_ascii=False, allow_nan=False)
    except ValueError:
        raise PersonaGuardError(f"{path}: refusing to write a non-finite number (NaN or infinity) "
                                "as JSON") from None
    return write_text_atomic(path, text + "\n")


def refuse_overwrite(paths: Iterable[str | Path], force: bool, flag: str = "--force") -> None:
    """Raise naming the first existing path of ``paths`` unless ``force``.

    A folder counts as existing only when it holds something (an empty folder is harmless).
    """
    if force:
        return
    for path in map(Path, paths):
        if path.is_dir() and any(path.iterdir()) or path.exists() and not path.is_dir():
            raise PersonaGuardError(f"{path} exists; pass {flag} to overwrite it")


def holds_a_file(folder: Path) -> bool:
    """Whether anything but empty folders is under ``folder``: the default test of :func:`output_folder`."""
    return any(not path.is_dir() for path in folder.rglob("*"))


@contextmanager
def output_folder(folder: str | Path, *, resumable: Callable[[Path], bool] = holds_a_file,
                  owner: bool = True) -> Iterator[Path]:
    """Run a command's work into ``folder``; when it fails (any exception, ``KeyboardInterrupt``
    included) and ``folder`` was absent or empty before, leave it as found (removed, or emptied)
    unless ``resumable(folder)``: what a run that did real work wrote (shards, caches, checkpoints)
    is kept, so the next run resumes. ``owner``: this process may remove (False on all but the main
    process of a distributed run). A folder that held anything before is never touched."""
    folder = Path(folder)
    existed = folder.is_dir()
    fresh = not folder.exists() or existed and not any(folder.iterdir())
    try:
        yield folder
    except BaseException:
        if fresh and owner and folder.is_dir() and not resumable(folder):
            shutil.rmtree(folder, ignore_errors=True)
            if existed:
                folder.mkdir(exist_ok=True)
        raise


def check_writable(folder: str | Path) -> None:
    """Fail early, naming the folder, when outputs cannot be created under ``folder``.

    Walks up to the nearest existing ancestor (nothing is created there) and checks it is a folder
    where a file can be created: an unnamed temporary file, gone when closed, so read-only mounts
    and pseudo file systems (``/proc``) are caught even for root, whom permission bits do not stop.
    """
    folder = Path(folder).absolute()
    probe = folder
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise PersonaGuardError(f"cannot write under {folder}: {probe} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as error:
        raise PersonaGuardError(f"cannot write under {folder}: {probe} is not writable ({error.strerror})") from None
