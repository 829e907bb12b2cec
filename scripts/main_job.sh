#!/usr/bin/env bash
# The main job: synthetic world -> train (experiment=quick) -> evaluate -> export INT8 -> profile.
# Everything lands in outputs/main/ (and the world in data/synth). ~5 min on 2 cores after setup (268 s on 2026-12-04).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-outputs/main}
B=.venv/bin
t0=$(date +%s)
step() { echo; echo "== $1 ($(( $(date +%s) - t0 )) s)"; }
step "world"
[ -f data/synth/v1.0-mini/sample.json ] || $B/drive synth --out data/synth --overwrite
step "train"
rm -rf "$OUT"
$B/drive-train experiment=quick hydra.run.dir="$OUT/train"
CKPT="$OUT/train/checkpoints/last.ckpt"
step "evaluate"
$B/drive-eval ckpt_path="$CKPT" hydra.run.dir="$OUT/eval"
step "export"
$B/drive export "$CKPT" --out "$OUT/export" --precision int8 --calib-samples 32
step "profile"
$B/drive profile "$CKPT" --targets orin-x,journey5,tda4vm,ax650n --report "$OUT/profile" > "$OUT/profile.log"
step "done"
echo "world: data/synth  run: $OUT/train  eval: $OUT/eval/report.md  export: $OUT/export  profile: $OUT/profile/profile.md"
