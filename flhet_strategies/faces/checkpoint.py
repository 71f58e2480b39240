"""Write a face's round state to disk after every round, atomically, and read it back.

A checkpoint is the whole :class:`~flhet_strategies.faces.driver.RoundDriver` (the
server half with its arrays, ledgers, privacy accounting and random generators, the
history, the rounds done), pickled. Explanations: docs/resume.md.
"""

from __future__ import annotations

import io
import os
import pickle
import tempfile
from pathlib import Path

FORMAT = 1
"""Version of the checkpoint layout; a file of another version is refused."""


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read, or that belongs to another run."""


def write_atomically(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, whole.

    The bytes go to a temporary file in the same folder, are flushed to disk and moved
    into place with ``os.replace``; a crash leaves at worst a stray ``.tmp`` file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                                             suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def save_checkpoint(driver, path: str | os.PathLike) -> Path:
    """Pickle ``driver`` (a ``RoundDriver``) to ``path`` atomically."""
    buffer = io.BytesIO()
    pickle.dump({"format": FORMAT, "driver": driver}, buffer, protocol=pickle.HIGHEST_PROTOCOL)
    return write_atomically(path, buffer.getvalue())


def load_checkpoint(path: str | os.PathLike):
    """The ``RoundDriver`` saved at ``path``.

    Only load checkpoints you wrote: like any pickle, a file from elsewhere can run code.

    Raises
    ------
    FileNotFoundError
        If there is no file at ``path``.
    CheckpointError
        If the file is truncated, not a checkpoint, or of another format version.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        with path.open("rb") as handle:
            content = pickle.load(handle)
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, ValueError) as err:
        raise CheckpointError(f"{path} is not a readable flhet checkpoint: {err}") from err
    if not isinstance(content, dict) or "driver" not in content:
        raise CheckpointError(f"{path} is not a flhet checkpoint")
    if content.get("format") != FORMAT:
        raise CheckpointError(f"{path} has checkpoint format {content.get('format')!r}; "
                              f"this flhet reads format {FORMAT}")
    return content["driver"]


__all__ = ["CheckpointError", "FORMAT", "load_checkpoint", "save_checkpoint",
           "write_atomically"]
