"""Training: the Lightning system (``system.py``), temporal training data (``temporal.py``), validation
metrics (``validation.py``), callbacks, and ``builders.py``, the one place configs become objects.
The Hydra app is ``drive-train`` (``drive/cli/train.py``, configs in ``configs/``)."""
