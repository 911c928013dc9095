"""Write a file all at once or not at all: a temporary file beside it, then ``os.replace``."""

from __future__ import annotations

import contextlib
import os
import pathlib
import uuid


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path in ``path``'s directory; write it, and on success it becomes ``path``.

    ``os.replace`` within one directory is atomic, so readers see the old file or the
    complete new one, never a part. If the block raises (or the process dies), ``path``
    is untouched and the temporary file is removed (or, after a crash, left as a
    hidden ``.NAME.*.tmp`` beside it).

        with atomic_path("model.pt") as tmp:
            torch.save(model, tmp)
    """
    path = pathlib.Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as f:  # the data reaches the disk before the name does
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write(path, data: bytes) -> None:
    """Write ``data`` to ``path`` (creating its folder) through :func:`atomic_path`."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
