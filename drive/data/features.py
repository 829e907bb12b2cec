"""Model inputs of one keyframe: images, camera matrices, ego status, command, temporal link.

Nothing here reads ``sample_annotation``: features never see ground truth. Ego status and the
command come from the scene's keyframe ego poses only (status: past poses, backward differences;
command: future poses, the navigation-command proxy of VAD / UniAD).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from nuscenes import NuScenes

from drive.types import CAMERAS, COMMANDS, FUTURE_STEPS, IMAGE_MEAN, IMAGE_STD, LIDAR, PAST_STEPS, Features

from .errors import DataError
from .geometry import intrinsics_4x4, invert, pose_to_matrix, transform_points, yaw_of_matrix
from .nusc import resolve_data_path
from .records import CameraRecord, EgoTrack

REFERENCE_CHANNELS = (LIDAR, "CAM_FRONT")  # whose ego pose defines a keyframe's ego frame
COMMAND_THRESHOLD_M = 2.0
COMMAND_HORIZON_S = 3.0


def reference_sample_data(nusc: NuScenes, sample: dict) -> dict:
    """The keyframe ``sample_data`` whose ego pose is the sample's ego frame (LIDAR_TOP, else CAM_FRONT)."""
    for ch in REFERENCE_CHANNELS:
        if ch in sample["data"]:
            return nusc.get("sample_data", sample["data"][ch])
    raise DataError(f"sample {sample['token']} has neither a {LIDAR} nor a CAM_FRONT keyframe", "sample.data")


def keyframe_pose(nusc: NuScenes, sample: dict) -> tuple[np.ndarray, int]:
    """``global_T_ego`` and timestamp of a keyframe."""
    sd = reference_sample_data(nusc, sample)
    pose = nusc.get("ego_pose", sd["ego_pose_token"])
    return pose_to_matrix(pose["translation"], pose["rotation"]), int(pose["timestamp"])


def read_ego_track(nusc: NuScenes, sample: dict, memo: Optional[dict] = None) -> EgoTrack:
    """Keyframe ego poses at offsets -PAST_STEPS..+FUTURE_STEPS along the scene's sample chain.

    ``memo`` (sample token -> (pose, timestamp)) avoids recomputing poses shared by neighbouring keyframes.
    """
    memo = {} if memo is None else memo
    n = PAST_STEPS + 1 + FUTURE_STEPS
    G = np.tile(np.eye(4), (n, 1, 1))
    ts = np.zeros(n, np.int64)
    valid = np.zeros(n, bool)
    tokens = [""] * n
    for direction, steps in (("prev", PAST_STEPS), ("next", FUTURE_STEPS)):
        s = sample
        for k in range(steps + 1):
            idx = PAST_STEPS + (-k if direction == "prev" else k)
            if s["token"] not in memo:
                memo[s["token"]] = keyframe_pose(nusc, s)
            G[idx], ts[idx] = memo[s["token"]]
            valid[idx], tokens[idx] = True, s["token"]
            if k == steps or not s[direction]:
                break
            s = nusc.get("sample", s[direction])
    return EgoTrack(G, ts, valid, tokens)


def read_cameras(nusc: NuScenes, sample: dict, global_T_ego: np.ndarray) -> list[CameraRecord]:
    """The six keyframe camera records, in CAMERAS order, calibrated into the keyframe ego frame."""
    ego_T_global = invert(global_T_ego)
    cams = []
    for ch in CAMERAS:
        if ch not in sample["data"]:
            raise DataError(f"sample {sample['token']} has no {ch} keyframe image", f"sample_data[{ch}]")
        sd = nusc.get("sample_data", sample["data"][ch])
        cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
        pose = nusc.get("ego_pose", sd["ego_pose_token"])
        K = np.asarray(cs["camera_intrinsic"], dtype=np.float64)
        if K.shape != (3, 3):
            raise DataError(f"calibrated_sensor {cs['token']} ({ch}) has camera_intrinsic of shape {K.shape}, "
                            f"expected 3x3", "calibrated_sensor.camera_intrinsic")
        # cam -> ego at exposure -> global -> keyframe ego
        ego_T_cam = ego_T_global @ pose_to_matrix(pose["translation"], pose["rotation"]) @ pose_to_matrix(
            cs["translation"], cs["rotation"])
        cams.append(CameraRecord(
            channel=ch, sample_data_token=sd["token"], path=resolve_data_path(nusc.dataroot, sd["filename"]),
            width=int(sd.get("width") or 0), height=int(sd.get("height") or 0), intrinsic=K, ego_T_cam=ego_T_cam))
    return cams


def prev_T_cur(track: EgoTrack) -> tuple[np.ndarray, float]:
    """Current ego frame -> previous keyframe's ego frame, and ``has_prev`` (identity, 0 at a scene start)."""
    i = EgoTrack.NOW
    if not track.valid[i - 1]:
        return np.eye(4), 0.0
    return invert(track.global_T_ego[i - 1]) @ track.global_T_ego[i], 1.0


def ego_status(track: EgoTrack) -> np.ndarray:
    """(speed m/s, longitudinal acceleration m/s^2, yaw rate rad/s) from PAST keyframe poses only.

    Backward differences: the velocity over (t-1, t) expressed in the current ego frame gives the
    speed (horizontal norm) and yaw rate; acceleration is the change of the longitudinal velocity
    between (t-2, t-1) and (t-1, t). Unavailable terms (scene start) are zero.
    """
    G, ts, ok, i = track.global_T_ego, track.timestamps, track.valid, EgoTrack.NOW

    def step(a: int, b: int) -> Optional[tuple[np.ndarray, float, float]]:
        """Velocity of (a -> b) in frame b, yaw rate, dt."""
        if not (ok[a] and ok[b]) or ts[b] <= ts[a]:
            return None
        dt = (ts[b] - ts[a]) * 1e-6
        a_T_b = invert(G[a]) @ G[b]
        v_b = a_T_b[:3, :3].T @ a_T_b[:3, 3] / dt  # displacement a -> b, expressed in frame b
        return v_b, float(yaw_of_matrix(a_T_b)) / dt, dt

    out = np.zeros(3)
    cur = step(i - 1, i)
    if cur is None:
        return out
    v, yaw_rate, dt = cur
    out[0] = float(np.hypot(v[0], v[1]))
    out[2] = yaw_rate
    before = step(i - 2, i - 1)
    if before is not None:
        out[1] = (v[0] - before[0][0]) / (0.5 * (dt + before[2]))
    return out


def command_index(track: EgoTrack) -> int:
    """Navigation command (index into COMMANDS) from the ego's future keyframe poses.

    The VAD / UniAD proxy: the lateral offset y (current ego frame) of the last available future
    keyframe within 3 s: > 2 m -> 'left', < -2 m -> 'right', else 'straight' (also when no future).
    It reads ego poses, never annotations.
    """
    i = EgoTrack.NOW
    horizon_us = COMMAND_HORIZON_S * 1e6 + 1e5  # tolerate timestamp jitter
    last = None
    for k in range(1, FUTURE_STEPS + 1):
        if track.valid[i + k] and track.timestamps[i + k] - track.timestamps[i] <= horizon_us:
            last = i + k
    if last is None:
        return COMMANDS.index("straight")
    y = transform_points(invert(track.global_T_ego[i]), track.global_T_ego[last][:3, 3])[1]
    if y > COMMAND_THRESHOLD_M:
        return COMMANDS.index("left")
    if y < -COMMAND_THRESHOLD_M:
        return COMMANDS.index("right")
    return COMMANDS.index("straight")


def normalise_images(images_NHW3: np.ndarray) -> torch.Tensor:
    """uint8 RGB ``(N, H, W, 3)`` -> float32 ``(N, 3, H, W)`` normalised with IMAGE_MEAN / IMAGE_STD."""
    x = torch.from_numpy(np.ascontiguousarray(images_NHW3)).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGE_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def build_features(cameras: list[CameraRecord], track: EgoTrack, images_NHW3: np.ndarray,
                   img_aug_N33: np.ndarray) -> Features:
    """Features of one keyframe (no batch dim) from its records and the already resized / augmented images.

    ``img_aug_N33`` maps recorded-image pixels to network-input pixels (resize, and in training the
    random scale / crop / flip); it is folded into ``intrinsics`` and ``ego2img``.
    """
    K = np.stack([a @ c.intrinsic for a, c in zip(img_aug_N33, cameras)])
    ego_T_cam = np.stack([c.ego_T_cam for c in cameras])
    ego2img = np.stack([intrinsics_4x4(a @ c.intrinsic) @ invert(c.ego_T_cam)
                        for a, c in zip(img_aug_N33, cameras)])
    p_T_c, has_prev = prev_T_cur(track)
    f32 = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731
    return Features(
        images=normalise_images(images_NHW3),
        intrinsics=f32(K),
        ego_T_cam=f32(ego_T_cam),
        ego2img=f32(ego2img),
        ego_status=f32(ego_status(track)),
        command=torch.tensor(command_index(track), dtype=torch.int64),
        prev_T_cur=f32(p_T_c),
        has_prev=torch.tensor(has_prev, dtype=torch.float32),
    )
