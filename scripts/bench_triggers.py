"""Benchmark: do the edge triggers rank a fleet's long-tail clips above its ordinary ones?

    python scripts/bench_triggers.py --graph RUN/export/model_fp32.onnx --out outputs/trig_fleet
    python scripts/bench_triggers.py --ckpt RUN/checkpoints/last.ckpt --scenes 24 --longtail-frac 0.5 --seed 2001

1. A fleet of ``--scenes`` clips (``drive.labelling.fleet.generate_fleet``; reused when ``--out`` already holds
   the same one), ``--longtail-frac`` of them with the long tail turned up. Which ones is hidden truth.
2. The edge model (an exported graph, as in the car, or a checkpoint) mines every clip with the default
   ``TriggerConfig`` or ``--triggers`` JSON overrides; the novelty signal's reference is fitted first with the
   same model on the base world it was trained on (``--base-root`` / ``--base-split``, as the loop does).
3. Figures: the ROC AUC of the clip score and of each signal's clip mean for long-tail against ordinary clips
   (``drive.labelling.report.longtail_mining``: the same figures as the loop's round report), and how many
   long-tail clips the top-k by clip score holds (k = the number of long-tail clips) against what a random
   pick of k is expected to hold. Written to ``--json`` and a line in BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--graph", help="exported edge model (.onnx)")
    src.add_argument("--ckpt", help="drive-train checkpoint")
    p.add_argument("--out", default="outputs/bench_triggers_fleet", help="fleet root (created or reused)")
    p.add_argument("--scenes", type=int, default=24)
    p.add_argument("--keyframes", type=int, default=10)
    p.add_argument("--longtail-frac", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=2001, help="fleet seed (the loop's fleets use 1001, 1002, ...)")
    p.add_argument("--triggers", default="{}", help="TriggerConfig overrides as JSON")
    p.add_argument("--base-root", default="data/synth30", help="the world the edge model was trained on")
    p.add_argument("--base-version", default="v1.0-mini")
    p.add_argument("--base-split", default="synth_train")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default="benchmarks/triggers.json")
    p.add_argument("--no-record", action="store_true", help="write --json only, no BENCHMARKS.md line")
    a = p.parse_args()

    from drive.labelling.errors import LabellingError
    from drive.labelling.fleet import generate_fleet, list_clips
    from drive.labelling.novelty import fit_base_reference
    from drive.labelling.report import longtail_mining
    from drive.labelling.miner import ClipMiner
    from drive.labelling.triggers import TriggerConfig

    t0 = time.time()
    try:
        info = generate_fleet(a.out, round_index=9, scenes=a.scenes, seed=a.seed, keyframes=a.keyframes,
                              workers=2, longtail_frac=a.longtail_frac)
        clips = list_clips(a.out, "v1.0-fleet")
        cfg = TriggerConfig.from_dict(json.loads(a.triggers))
        t1 = time.time()
        ref = fit_base_reference(a.base_root, a.base_version, a.base_split, onnx_path=a.graph, ckpt_path=a.ckpt,
                                 keyframes=a.keyframes, shrinkage=cfg.novelty_shrinkage,
                                 warmup=cfg.novelty_warmup, threads=a.threads)
        ref_s = time.time() - t1
        ref_path = ref.save(os.path.join(a.out, "novelty_reference.npz"))
        runner = ClipMiner(root=a.out, version="v1.0-fleet", onnx_path=a.graph, ckpt_path=a.ckpt, config=cfg,
                           threads=a.threads, reference=ref_path).build()
        t1 = time.time()
        reports = [runner({"scene_token": c.scene_token}) for c in clips]
    except (LabellingError, json.JSONDecodeError) as e:
        sys.exit(f"bench_triggers: {e}")
    mine_s = time.time() - t1
    fleet = {"clips": [{"scene_token": c.scene_token, "scene_name": c.scene_name} for c in clips],
             "info": {"longtail_scenes": info.longtail_scenes}}
    k = len(info.longtail_scenes)
    top = [r["scene_token"] for r in sorted(reports, key=lambda r: (-r["clip_score"], r["scene_token"]))[:k]]
    lm = longtail_mining(fleet, {"clips": reports}, top)
    figures = {"model": a.graph or a.ckpt, "scenes": a.scenes, "keyframes": a.keyframes,
               "longtail_frac": a.longtail_frac, "seed": a.seed, "triggers": cfg.to_dict(),
               "clip_score_auc": lm["clip_score_auc"], "signal_auc": lm["signal_auc"],
               "longtail_in_top_k": lm["uploaded_longtail"], "k": k,
               "random_expected_in_top_k": round(k * k / a.scenes, 3),
               "mine_seconds_per_clip": round(mine_s / max(len(reports), 1), 3),
               "reference": {"root": a.base_root, "split": a.base_split, "frames": ref.frames,
                             "seconds": round(ref_s, 1)},
               "wall_minutes": round((time.time() - t0) / 60, 2),
               "clips": [{"scene_name": c.scene_name, "longtail": c.scene_name in info.longtail_scenes,
                          "clip_score": r["clip_score"]} for c, r in zip(clips, reports)]}
    sig = " ".join(f"{s} {v:.2f}" for s, v in lm["signal_auc"].items() if v is not None)
    summary = (f"{a.scenes} clips ({k} long-tail): clip score AUC {lm['clip_score_auc']:.3f}; per signal {sig}; "
               f"long-tail in top {k}: {lm['uploaded_longtail']} (random {figures['random_expected_in_top_k']}); "
               f"{figures['mine_seconds_per_clip']} s/clip")
    if a.no_record:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        tmp = a.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"name": "triggers", "figures": figures, "summary": summary}, f, indent=1)
        os.replace(tmp, a.json)
    else:
        from benchlib import record

        record("triggers", figures, summary, path=a.json)
    print(summary)


if __name__ == "__main__":
    main()
