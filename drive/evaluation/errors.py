"""The one exception of offline evaluation: bad input (checkpoint, ONNX file, results file, split, options).

``drive-eval`` turns it (and the data layer's ``DataError``) into one line on stderr and exit code 2.
"""
from __future__ import annotations


class EvalError(Exception):
    """Evaluation cannot run on this input; the message is one line and names the offending file / key."""
