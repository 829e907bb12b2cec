"""Write a file or a directory whole or not at all: build it in a temporary sibling, then rename it into place."""
from __future__ import annotations

import glob
import os
import shutil
import tempfile
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def staged_dir(final: str, prefix: str, clean_stale: bool = True) -> Iterator[str]:
    """Yield a new empty directory ``<parent of final>/<prefix>*``. When the block ends normally it replaces
    ``final`` (an existing ``final`` is removed first); on any error it is deleted and ``final`` is untouched.
    ``clean_stale`` first removes leftovers ``<prefix>*`` of runs that were killed."""
    parent = os.path.dirname(os.path.abspath(final))
    os.makedirs(parent, exist_ok=True)
    if clean_stale:
        for stale in glob.glob(os.path.join(parent, glob.escape(prefix) + "*")):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = tempfile.mkdtemp(prefix=prefix, dir=parent)
    try:
        yield tmp
        if os.path.lexists(final):
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def staged_file(path: str) -> Iterator[str]:
    """Yield a temporary path beside ``path`` (its folder created); when the block ends normally it is renamed
    onto ``path``, on any error removed, so a half-written file never appears under the final name."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
