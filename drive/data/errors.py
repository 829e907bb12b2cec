"""The one exception of the data layer: bad input, naming the offending file or field."""
from __future__ import annotations


class DataError(Exception):
    """A nuScenes-format root (or a file / field in it) is missing, malformed or unsafe.

    ``where`` is the offending path or ``table.field``; the message is one line and names it.
    """

    def __init__(self, message: str, where: str = ""):
        super().__init__(message)
        self.where = where
