"""The one error type of the labelling loop: bad input (a malformed upload, a missing file, a bad queue export,
a budget that cannot be met) is reported with the file or field it concerns, and the CLI exits non-zero."""
from __future__ import annotations


class LabellingError(ValueError):
    """A labelling-loop input or state problem, with a message naming the file / field."""
