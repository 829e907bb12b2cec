"""nuScenes tracking submission and the devkit's ``TrackingEval`` behind one function.

Submission records (``tracker.py`` writes them): ``sample_token``, ``translation`` (global, box centre),
``size`` [w, l, h], ``rotation`` (w, x, y, z), ``velocity`` [vx, vy] global, ``tracking_id``, ``tracking_name``
(one of the 7 tracking classes), ``tracking_score``. Write them with ``write_results`` (same file layout as
detection: ``{"meta": ..., "results": {sample_token: [records]}}``).

Devkit notes, handled here:
* ``TrackingEval`` opens its own ``NuScenes`` from ``nusc.version`` / ``nusc.dataroot``; it is opened with the
  data layer's lenient map masks, so a root whose map PNGs are missing (placeholder maps) still evaluates.
* Built-in split names need the matching version (``mini_val`` with ``v1.0-mini``, ``val`` with
  ``v1.0-trainval``); custom names come from ``<root>/<version>/splits.json`` (devkit 1.2). A submission
  missing samples of the split is a ``ValueError`` (the devkit would assert or raise ``KeyError``).
* AMOTA / AMOTP average over recall thresholds; the MOTA-style values are taken per class at its best-MOTA
  threshold, then summed over classes for mt ml tp fp fn ids frag and averaged (NaN-skipping) for the others,
  exactly as the devkit's summary does.
"""
from __future__ import annotations

import os

from .detection import evaluate_and_save, prepare_result_file, write_results  # noqa: F401  (write_results re-exported)

TRACKING_CONFIG = "tracking_nips_2019"


def evaluate_tracking(nusc, result_path: str, split: str, out_dir: str, verbose: bool = False,
                      config_name: str = TRACKING_CONFIG) -> dict[str, float]:
    """Run the devkit ``TrackingEval``; returns a flat dict of floats.

    Keys: the devkit's summary ``amota``, ``amotp``, ``recall``, ``motar``, ``mota``, ``motp``, ``mt``, ``ml``,
    ``faf``, ``gt``, ``tp``, ``fp``, ``fn``, ``ids``, ``frag``, ``tid``, ``lgd`` (see the module doc) and
    ``amota_<class>`` per tracking class (NaN for a class without GT). Writes the devkit's
    ``metrics_summary.json`` / ``metrics_details.json`` to ``out_dir``.
    """
    from nuscenes.eval.common.config import config_factory
    from nuscenes.eval.tracking.evaluate import TrackingEval

    from drive.data.nusc import _lenient_map_masks

    os.makedirs(out_dir, exist_ok=True)
    path = prepare_result_file(nusc, result_path, split, out_dir)
    cfg = config_factory(config_name)
    try:
        with _lenient_map_masks():
            ev = TrackingEval(config=cfg, result_path=path, eval_set=split, output_dir=out_dir,
                              nusc_version=nusc.version, nusc_dataroot=nusc.dataroot, verbose=verbose)
    except AssertionError as e:
        raise ValueError(f"devkit rejected {path} for split {split!r}: {e}") from e
    metrics, summary = evaluate_and_save(ev, out_dir)
    out = {k: float(v) for k, v in summary.items() if k in metrics.label_metrics and v is not None}
    for name in cfg.class_names:
        out[f"amota_{name}"] = float(metrics.label_metrics["amota"][name])
    return out
