"""One synthetic scene end to end: layout, simulation, lidar, cameras, files and table rows."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

import cv2
import numpy as np
from pyquaternion import Quaternion

from .layout import build_layout
from .lidar import cast_lidar
from .render import Lighting, RenderObject, render_camera
from .scenario import WARMUP_S, WorldKnobs, populate
from .sensors import build_rig, pose_matrix
from .sim import DT, KEYFRAME_EVERY, Simulation, Snapshot

DETECTION_RANGE = {  # devkit detection_cvpr_2019 class ranges, by category prefix
    "vehicle.car": ("car", 50), "vehicle.truck": ("truck", 50), "vehicle.bus": ("bus", 50),
    "vehicle.trailer": ("trailer", 50), "vehicle.construction": ("construction_vehicle", 50),
    "human.pedestrian": ("pedestrian", 40), "vehicle.motorcycle": ("motorcycle", 40),
    "vehicle.bicycle": ("bicycle", 40), "movable_object.trafficcone": ("traffic_cone", 30),
    "movable_object.barrier": ("barrier", 30),
}
ANNOTATION_RADIUS = 80.0  # metres around the ego inside which objects are annotated
LIDAR_AZIMUTH_STEPS = 720  # 0.5 deg (the HDL-32E fires ~1084/rev at 20 Hz; halved to keep the world < 300 MB)
JPEG_QUALITY = 85


def detection_class(category: str) -> tuple[str, float] | None:
    for prefix, v in DETECTION_RANGE.items():
        if category.startswith(prefix):
            return v
    return None


@dataclass
class ScenePlan:
    index: int
    name: str
    split: str  # 'train' | 'val'
    layout: str
    rich: bool  # force every detection class near the ego (val scenes)
    seed: int
    keyframes: int = 40
    width: int = 800
    height: int = 450
    knobs: dict = field(default_factory=lambda: asdict(WorldKnobs()))


@dataclass
class SceneResult:
    plan: ScenePlan
    attempt: int
    events: list[str]
    lighting: str
    keyframes: list[dict]  # per keyframe: timestamp, ego pose, files, situation
    annotations: list[dict]  # per (agent, keyframe)
    map_png: str  # relative path of the drivable mask
    missing_classes: list[str]


def _lighting(rng: np.random.Generator, dusk_prob: float) -> tuple[str, Lighting]:
    r = rng.random()
    az = rng.uniform(0, 2 * np.pi)
    if r < dusk_prob:
        el = np.radians(rng.uniform(3, 10))
        sun = np.array([np.cos(az) * np.cos(el), np.sin(az) * np.cos(el), np.sin(el)])
        return "dusk", Lighting(sun, 0.45, 0.5, (0.25, 0.22, 0.35), (0.95, 0.55, 0.30), 0.62, 4.0, (1.05, 0.9, 0.8))
    if r < dusk_prob + 0.25:
        sun = np.array([0.2, 0.1, 0.97])
        return "overcast", Lighting(sun / np.linalg.norm(sun), 0.75, 0.25, (0.62, 0.64, 0.68), (0.80, 0.81, 0.83),
                                    float(rng.uniform(0.85, 1.0)), 2.5, (1.0, 1.0, 1.02))
    el = np.radians(rng.uniform(25, 65))
    sun = np.array([np.cos(az) * np.cos(el), np.sin(az) * np.cos(el), np.sin(el)])
    return "day", Lighting(sun, float(rng.uniform(0.45, 0.6)), float(rng.uniform(0.5, 0.7)), (0.30, 0.50, 0.85),
                           (0.75, 0.85, 0.95), float(rng.uniform(0.95, 1.1)), 2.0,
                           tuple(rng.uniform(0.96, 1.04, 3)))


def _simulate(plan: ScenePlan, attempt: int):
    rng = np.random.default_rng([plan.seed, plan.index, attempt])
    layout = build_layout(plan.layout, rng)
    sim = Simulation(layout, rng)
    knobs = WorldKnobs(**plan.knobs)
    events = populate(sim, rng, knobs, rich=plan.rich)
    warm = int(round(WARMUP_S / DT))
    snaps: list[Snapshot] = []
    for i in range(warm + plan.keyframes * KEYFRAME_EVERY):
        if i >= warm and (i - warm) % KEYFRAME_EVERY == 0:
            snaps.append(sim.snapshot())
        sim.step()
    return rng, layout, sim, knobs, events, snaps


def _annotated(snaps: list[Snapshot]) -> dict[int, list[int]]:
    """agent id -> keyframe indices where it is annotated (a contiguous span around the ego)."""
    seen: dict[int, list[int]] = {}
    for k, sn in enumerate(snaps):
        d = np.linalg.norm(sn.boxes[:, :2] - sn.ego_xy, axis=1) if len(sn.ids) else np.zeros(0)
        for aid, dist in zip(sn.ids, d):
            if dist < ANNOTATION_RADIUS:
                seen.setdefault(int(aid), []).append(k)
    spans = {}
    for aid, ks in seen.items():
        present = {k for k, sn in enumerate(snaps) if aid in set(sn.ids.tolist())}
        spans[aid] = [k for k in range(min(ks), max(ks) + 1) if k in present]
    return spans


def run_scene(plan: ScenePlan, out_root: str, max_attempts: int = 6) -> SceneResult:
    """Simulate (retrying val scenes until every class is seen), then render and write sensor files."""
    rig = build_rig(plan.width, plan.height)
    lidar = rig[-1]
    for attempt in range(max_attempts):
        rng, layout, sim, knobs, events, snaps = _simulate(plan, attempt)
        spans = _annotated(snaps)
        scenery = np.array([[*s.center, *s.size_lwh, s.yaw] for s in layout.scenery]).reshape(-1, 7)
        scans, seen = [], set()
        for sn in snaps:
            ego_T = pose_matrix(sn.ego_xy, sn.ego_yaw)
            scan = cast_lidar(ego_T @ lidar.ego_T_sensor, sn.boxes, rng, n_azimuth=LIDAR_AZIMUTH_STEPS,
                              occluders=scenery, ego_global_T=ego_T)
            scans.append(scan)
            dist = np.linalg.norm(sn.boxes[:, :2] - sn.ego_xy, axis=1) if len(sn.ids) else []
            for cat, hit, dd in zip(sn.categories, scan.hits, dist):
                det = detection_class(cat)
                if det and hit > 0 and dd <= det[1]:
                    seen.add(det[0])
        missing = sorted({v[0] for v in DETECTION_RANGE.values()} - seen)
        if not plan.rich or not missing:
            break
    light_name, lighting = _lighting(rng, knobs.dusk_prob)
    log_name = f"n900-2026-01-01-{plan.index // 60:02d}-{plan.index % 60:02d}-00+0000"
    t0 = 1_700_000_000_000_000 + plan.index * 100_000_000
    scenery_objs = [RenderObject(s.category, s.center, s.yaw, s.size_lwh, s.color, 100_000 + i, s.variant)
                    for i, s in enumerate(layout.scenery)]
    keyframes, annotations = [], []
    for k, (sn, scan) in enumerate(zip(snaps, scans)):
        ts = t0 + k * 500_000
        ego_T = pose_matrix(sn.ego_xy, sn.ego_yaw)
        objs = [RenderObject(c, b[:3].copy(), float(b[6]), b[3:6].copy(), col, i, int(v), bool(r), float(ph))
                for i, (c, b, col, v, r, ph) in enumerate(zip(sn.categories, sn.boxes, sn.colors, sn.variants,
                                                             sn.riders, sn.phases))]
        vis = np.zeros(len(objs))
        cov = np.zeros(len(objs))
        files = {}
        for sensor in rig[:-1]:
            res = render_camera(layout.ground, objs + scenery_objs, sensor.intrinsic, ego_T @ sensor.ego_T_sensor,
                                plan.width, plan.height, lighting, rng)
            for i in range(len(objs)):
                vis[i] += res.visible_pixels.get(i, 0)
                cov[i] += res.covered_pixels.get(i, 0)
            rel = f"samples/{sensor.channel}/{log_name}__{sensor.channel}__{ts}.jpg"
            ok, buf = cv2.imencode(".jpg", res.image[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
            _write_bytes(os.path.join(out_root, rel), buf.tobytes())
            files[sensor.channel] = rel
        rel = f"samples/LIDAR_TOP/{log_name}__LIDAR_TOP__{ts}.pcd.bin"
        _write_bytes(os.path.join(out_root, rel), scan.points.astype(np.float32).tobytes())
        files["LIDAR_TOP"] = rel
        keyframes.append({"timestamp": ts, "ego_xy": sn.ego_xy.tolist(), "ego_yaw": float(sn.ego_yaw),
                          "ego_speed": float(sn.ego_speed), "files": files, "situation": sn.situation,
                          "leader": sn.leader_kind, "leader_gap": sn.leader_gap})
        for i, aid in enumerate(sn.ids.tolist()):
            if k not in spans.get(aid, ()):
                continue
            frac = vis[i] / cov[i] if cov[i] > 0 else 0.0
            level = "1" if frac < 0.4 else "2" if frac < 0.6 else "3" if frac < 0.8 else "4"
            annotations.append({"agent": aid, "keyframe": k, "category": sn.categories[i],
                                "attribute": sn.attributes[i], "box": sn.boxes[i].tolist(),
                                "num_lidar_pts": int(scan.hits[i]), "visibility": level,
                                "color": [round(float(c), 4) for c in sn.colors[i]]})
    map_rel = f"maps/synth-{plan.index:04d}-{plan.layout}.png"
    mask = np.where(layout.drivable, 255, 0).astype(np.uint8)
    ok, buf = cv2.imencode(".png", mask)
    _write_bytes(os.path.join(out_root, map_rel), buf.tobytes())
    return SceneResult(plan, attempt, events, light_name, keyframes, annotations, map_rel, missing)


def _write_bytes(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
