"""Benchmark: the labelling loop over several rounds, three strategies side by side at equal labelling cost.

    python scripts/bench_loop.py --teacher outputs/bench_edge30/checkpoints/last.ckpt
    python scripts/bench_loop.py --teacher T.ckpt --student S.ckpt --rounds 3 review.budget=80   # + drive-loop overrides

1. The round-0 student: the edge model trained from scratch on the human-labelled base world
   (``data/synth``, ``mini_train``) for ``--student-steps`` steps, unless ``--student`` is given.
2. ``drive-loop`` (``drive.labelling.loop.Loop``) with the teacher, ``--rounds`` rounds, strategies
   triggers / random / human, everything under ``--out``.
3. Figures: per strategy and round the long-tail val NDS / mAP / minADE / plan L2 / collision, cumulative
   label cost, uploaded bytes, auto / human boxes, teacher vs edge pseudo-label mAP on the uploaded frames, ORT
   latency; written to ``--json`` and a line in BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train_student(out_dir: str, steps: int, root: str) -> str:
    from hydra import compose, initialize_config_dir

    from drive.training.run import train

    last = os.path.join(out_dir, "checkpoints", "last.ckpt")
    if os.path.isfile(last) and os.path.isfile(os.path.join(out_dir, "metrics.json")):
        return last
    with initialize_config_dir(config_dir=os.path.join(ROOT, "configs"), version_base="1.3"):
        cfg = compose("train", overrides=[
            "experiment=edge", f"paths.output_dir={out_dir}", f"data.root={root}", f"trainer.max_steps={steps}",
            "trainer.max_epochs=-1", "trainer.limit_val_batches=0", "final_validation=false", "metrics=null",
            "callbacks.bev_plot=null", "callbacks.model_checkpoint=null", "trainer.max_time=null"])
    train(cfg)
    return last


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", required=True, help="teacher checkpoint")
    p.add_argument("--student", default=None, help="round-0 edge checkpoint (default: train one)")
    p.add_argument("--student-steps", type=int, default=300)
    p.add_argument("--base-root", default=os.path.join(ROOT, "data", "synth"))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default=os.path.join(ROOT, "outputs", "bench_loop"))
    p.add_argument("--json", default=os.path.join(ROOT, "benchmarks", "loop.json"))
    p.add_argument("--no-record", action="store_true")
    p.add_argument("overrides", nargs="*", help="drive-loop overrides (configs/loop.yaml keys)")
    a = p.parse_args()
    t0 = time.time()
    load0 = os.getloadavg()[0]
    student = a.student or train_student(os.path.join(a.out, "student"), a.student_steps, a.base_root)
    t_student = time.time() - t0

    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from drive.cli.loop import loop_config
    from drive.labelling.loop import Loop, read_json

    with initialize_config_dir(config_dir=os.path.join(ROOT, "configs"), version_base="1.3"):
        cfg = compose("loop", overrides=[f"out_dir={a.out}", f"student_ckpt={student}",
                                         f"teacher_ckpt={os.path.abspath(a.teacher)}", f"rounds={a.rounds}",
                                         f"base.root={a.base_root}", *a.overrides])
    typed = loop_config(cfg)
    loop = Loop(typed)
    os.makedirs(loop.paths.root, exist_ok=True)
    OmegaConf.save(OmegaConf.structured(typed), os.path.join(loop.paths.root, "config.yaml"))
    summary = loop.run()

    def lt(rep, key):
        v = (rep.get("longtail") or {}).get(key)
        return round(v, 4) if isinstance(v, float) else v

    figures = {"wall_minutes": round((time.time() - t0) / 60, 2), "student_minutes": round(t_student / 60, 2),
               "load_avg_start": round(load0, 2), "rounds": a.rounds, "config": summary["config"],
               "start": {k: lt(summary["start"], k) for k in ("NDS", "mAP", "minADE", "plan_l2_avg_averaged",
                                                              "collision_avg_averaged")},
               "strategies": {}}
    def mining(rep):
        return rep.get("longtail_mining") or {}

    def distill_of(strategy, r):
        d = (read_json(os.path.join(loop.paths.round_dir(strategy, r), "train.json")) or {}).get("distill") or {}
        return {k: d[k] for k in ("weight", "frames_with_maps", "feature", "heatmap") if k in d}

    for s, reps in summary["strategies"].items():
        figures["strategies"][s] = [{
            "round": rep["round"], "cost_cumulative": rep["cost_cumulative"], "uploaded_bytes": rep["uploaded_bytes"],
            "auto_boxes": rep["auto_boxes"], "human_boxes": rep["human_boxes"],
            "NDS": lt(rep, "NDS"), "mAP": lt(rep, "mAP"), "minADE": lt(rep, "minADE"),
            "plan_l2_avg_averaged": lt(rep, "plan_l2_avg_averaged"), "collision_avg_averaged": lt(rep, "collision_avg_averaged"),
            "teacher_mAP": ((rep["pseudo_label_quality"] or {}).get("teacher") or {}).get("mAP"),
            "edge_mAP": ((rep["pseudo_label_quality"] or {}).get("edge") or {}).get("mAP"),
            "latency_ms": rep.get("latency_ms"),
            "longtail_uploaded": mining(rep).get("uploaded_longtail"),
            "fleet_longtail": mining(rep).get("fleet_longtail"),
            "trigger_auc": mining(rep).get("clip_score_auc"), "signal_auc": mining(rep).get("signal_auc"),
            "distill": distill_of(s, rep["round"])}
            for rep in reps]
    print(json.dumps(figures, indent=1))

    def distill_text(d):
        if not d.get("weight"):
            return ""
        f, h = d.get("feature") or {}, d.get("heatmap") or {}
        return (f", distilled (weight {d['weight']}, last round {d.get('frames_with_maps')} frames with teacher maps, "
                f"feature loss {f.get('start')}->{f.get('end')}, heatmap KL {h.get('start')}->{h.get('end')})")
    parts = [f"start NDS {figures['start']['NDS']} L2 {figures['start']['plan_l2_avg_averaged']}"]
    for s, reps in figures["strategies"].items():
        if reps:
            last = reps[-1]
            tm = [r["teacher_mAP"] for r in reps if r["teacher_mAP"] is not None]
            em = [r["edge_mAP"] for r in reps if r["edge_mAP"] is not None]
            parts.append(f"{s}: NDS " + "/".join(str(r["NDS"]) for r in reps) + f" L2 {last['plan_l2_avg_averaged']} "
                         f"at cost {last['cost_cumulative']:.0f}"
                         + (f", teacher mAP {sum(tm) / len(tm):.3f} vs edge {sum(em) / len(em):.3f}" if tm and em else "")
                         + (", long-tail clips uploaded " + "/".join(f"{r['longtail_uploaded']} of {r['fleet_longtail']}"
                                                                   for r in reps)
                            if all(r["longtail_uploaded"] is not None for r in reps) else "")
                         + distill_text(last.get("distill") or {}))
    summary_line = f"{a.rounds} rounds in {figures['wall_minutes']} min; " + "; ".join(parts)
    if a.no_record:
        with open(a.json, "w") as f:
            json.dump({"name": "loop", "figures": figures, "summary": summary_line}, f, indent=1)
    else:
        from benchlib import record

        record("loop", figures, summary_line, path=a.json)
    print(summary_line)


if __name__ == "__main__":
    main()
