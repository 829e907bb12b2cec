"""Parameters, forward FLOPs per stage and wall time of a model preset.

    python scripts/profile_model.py --config edge --threads 2 [--train-steps 5] [--batch 1]

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` (matmul / conv / bmm / addmm and
their backward; ``grid_sample``, pooling, norms and element-wise ops are not counted), grouped by
the model's top-level children and the parts of the view transform. Times are medians over
``--repeats`` eval-mode forwards after one warm-up, and, with ``--train-steps``, the wall time
of forward + ``total_loss`` + backward + AdamW step on random targets.
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

import torch
from torch.utils.flop_counter import FlopCounterMode

from drive.losses import LossConfig, total_loss
from drive.models import build_model, cloud_config, edge_config, tiny_config
from drive.models.example_inputs import example_inputs
from drive.types import Targets

PRESETS = {"edge": edge_config, "cloud": cloud_config, "tiny": tiny_config}


def random_targets(batch: int, num_boxes: int, map_size: int, bev_range: float) -> Targets:
    g = torch.Generator().manual_seed(1)
    boxes = torch.zeros(batch, num_boxes, 9)
    boxes[..., :2] = (torch.rand(batch, num_boxes, 2, generator=g) - 0.5) * 1.6 * bev_range
    boxes[..., 2] = 0.8
    boxes[..., 3:6] = torch.tensor([4.5, 1.9, 1.6])
    boxes[..., 6] = torch.rand(batch, num_boxes, generator=g) * 6.28
    boxes[..., 7:9] = torch.randn(batch, num_boxes, 2, generator=g)
    steps = torch.arange(1, 7).view(1, 1, 6, 1) * 0.5
    fut = boxes[..., None, :2] + steps * boxes[..., None, 7:9]
    ego_fut = torch.stack([torch.arange(1, 7) * 2.5, torch.zeros(6)], -1).expand(batch, 6, 2)
    m = torch.ones(batch, num_boxes, dtype=torch.bool)
    return Targets(
        boxes=boxes, labels=torch.randint(0, 10, (batch, num_boxes), generator=g), attributes=torch.full((batch, num_boxes), -1),
        instance_ids=torch.arange(num_boxes).expand(batch, -1), num_pts=torch.full((batch, num_boxes), 10), mask=m,
        past=fut.flip(2)[..., :4, :] * -1, past_mask=torch.ones(batch, num_boxes, 4, dtype=torch.bool), future=fut,
        future_yaw=torch.zeros(batch, num_boxes, 6), future_mask=torch.ones(batch, num_boxes, 6, dtype=torch.bool),
        ego_past=torch.zeros(batch, 4, 2), ego_past_mask=torch.ones(batch, 4, dtype=torch.bool), ego_future=ego_fut,
        ego_future_yaw=torch.zeros(batch, 6), ego_future_mask=torch.ones(batch, 6, dtype=torch.bool),
        drivable=(torch.rand(batch, map_size, map_size, generator=g) > 0.5).float(), map_valid=torch.ones(batch),
    )


def stage_of(module_path: str) -> str:
    parts = module_path.split(".")
    if len(parts) < 2:
        return parts[0]
    if parts[1] == "view_transform" and len(parts) > 4 and parts[2] == "layers":
        return f"view_transform.{parts[4]}"
    return parts[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="edge", choices=sorted(PRESETS))
    ap.add_argument("--view-transform", default=None, choices=["bevformer", "bilinear"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--train-steps", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = PRESETS[args.config]()
    if args.view_transform:
        cfg.view_transform = args.view_transform
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    inputs = example_inputs(args.batch, cfg.image_hw, model.bev_shape)

    print(f"config={args.config} view_transform={cfg.view_transform} images={cfg.num_cameras}x3x{cfg.image_hw} "
          f"bev={cfg.bev_size}x{cfg.bev_size}x{cfg.embed_dim} batch={args.batch} threads={args.threads}")
    total_params = 0
    for name, child in model.named_children():
        n = sum(p.numel() for p in child.parameters())
        total_params += n
        print(f"  params {name:18s} {n / 1e6:8.3f} M")
    print(f"  params {'total':18s} {total_params / 1e6:8.3f} M")

    counter = FlopCounterMode(display=False, depth=None)
    with counter:  # grad mode on: the module tracker needs it
        model(*inputs)
    per_stage: dict[str, int] = defaultdict(int)
    for path, ops in counter.get_flop_counts().items():
        parts = path.split(".")
        # leaf-level attribution: count a path only at depth 2, or depth 5 inside the encoder layers
        if len(parts) == 2 and parts[1] != "view_transform" or (len(parts) == 5 and parts[1:3] == ["view_transform", "layers"]):
            per_stage[stage_of(path)] += sum(ops.values())
    vt_total = sum(counter.get_flop_counts().get("DrivingModel.view_transform", {}).values())
    per_stage["view_transform.(other)"] = vt_total - sum(v for k, v in per_stage.items() if k.startswith("view_transform."))
    total = counter.get_total_flops()
    for k, v in per_stage.items():
        print(f"  GFLOP  {k:30s} {v / 1e9 / args.batch:8.3f} per sample")
    print(f"  GFLOP  {'total':30s} {total / 1e9 / args.batch:8.3f} per sample")

    with torch.no_grad():
        model(*inputs)
        times, cpu = [], []
        for _ in range(args.repeats):
            t, c = time.perf_counter(), time.process_time()
            model(*inputs)
            times.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
    # process CPU time summed over threads: with --threads 1 it estimates the uncontended latency
    # when other jobs share the cores
    print(f"  forward (eval, no_grad) median {statistics.median(times) * 1e3:.0f} ms wall "
          f"(min {min(times) * 1e3:.0f}), {statistics.median(cpu) * 1e3:.0f} ms CPU, per batch of {args.batch}")

    if args.train_steps:
        model.train()
        targets = random_targets(args.batch, 30, cfg.map.map_size, cfg.bev_range)
        loss_cfg = LossConfig(bev_range=cfg.bev_range, map_range=cfg.map.map_range)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        times, cpu = [], []
        for i in range(args.train_steps + 1):
            t, c = time.perf_counter(), time.process_time()
            out = model(*inputs, query_boxes=targets.boxes, query_labels=targets.labels, query_mask=targets.mask)
            loss = total_loss(out, targets, loss_cfg)["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
            if i:
                times.append(time.perf_counter() - t)
                cpu.append(time.process_time() - c)
        med = statistics.median(times)
        print(f"  train step median {med * 1e3:.0f} ms wall, {statistics.median(cpu) * 1e3:.0f} ms CPU, per batch of "
              f"{args.batch} -> {args.batch / med:.2f} samples/s (wall)")


if __name__ == "__main__":
    main()
