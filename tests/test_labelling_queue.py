"""The review queue: idempotent enqueue, best-first atomic claims, concurrent writers in several processes,
stale reviews released, and the Scalabel export / import round trip with validation."""
from __future__ import annotations

import json
import math
import multiprocessing as mp
import queue as queue_mod
import sqlite3
import time
from datetime import datetime, timedelta, timezone

import pytest

from drive.labelling.errors import LabellingError
from drive.labelling.queue import QueueRequest, ReviewQueue
from drive.labelling.records import LabelBox

S, R = "ours", 1


def req(token: str, score: float, reason: str = "uncertain") -> QueueRequest:
    return QueueRequest(sample_token=token, scene_token="scene-" + token[:1], reason=reason, score=score)


@pytest.fixture
def queue(tmp_path):
    q = ReviewQueue(str(tmp_path / "queue.sqlite"))
    yield q
    q.close()


def test_schema_wal_and_version(queue):
    conn = sqlite3.connect(queue.path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("SELECT version FROM schema_version").fetchall() == [(1,)]
    with pytest.raises(sqlite3.IntegrityError):  # the status CHECK constraint holds
        conn.execute("INSERT INTO items(strategy, round, sample_token, scene_token, reason, score, status, "
                     "created_at, updated_at) VALUES ('s', 0, 't', 'sc', 'r', 1.0, 'lost', 'x', 'x')")
    conn.close()


def test_newer_schema_and_non_database_rejected(tmp_path):
    path = tmp_path / "q.sqlite"
    ReviewQueue(str(path)).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE schema_version SET version = 99")
    conn.commit()
    conn.close()
    with pytest.raises(LabellingError, match="schema version 99"):
        ReviewQueue(str(path))
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(LabellingError, match="junk.sqlite"):
        ReviewQueue(str(junk))


def test_enqueue_is_idempotent(queue):
    assert queue.enqueue(S, R, [req("a1", 0.5), req("a2", 0.9)]) == 2
    # The same frames again (even with another score), plus one new: only the new one goes in.
    assert queue.enqueue(S, R, [req("a1", 0.99), req("a2", 0.1), req("a3", 0.3)]) == 1
    # A duplicate inside one batch goes in once.
    assert queue.enqueue(S, R, [req("a4", 0.2), req("a4", 0.2)]) == 1
    items = queue.items(S, R)
    assert [i.sample_token for i in items] == ["a2", "a1", "a3", "a4"]  # by score, desc
    assert next(i for i in items if i.sample_token == "a1").score == 0.5  # the first enqueue wins
    # Another round or strategy is another queue.
    assert queue.enqueue(S, R + 1, [req("a1", 0.5)]) == 1
    assert queue.enqueue("random", R, [req("a1", 0.5)]) == 1
    assert len(queue.items()) == 6 and len(queue.items(round=R)) == 5 and len(queue.items(strategy=S)) == 5
    # A done item is not reset by enqueueing it again.
    (it,) = queue.claim(S, R, "ann", limit=1)
    queue.complete(it.id, "ann", boxes=3, cost=3.5)
    assert queue.enqueue(S, R, [req(it.sample_token, 5.0)]) == 0
    assert queue.items(S, R, "done")[0].sample_token == it.sample_token


def test_enqueue_rejects_bad_requests(queue):
    with pytest.raises(LabellingError, match=r"items\[1\]\.score"):
        queue.enqueue(S, R, [req("a", 1.0), req("b", math.nan)])
    with pytest.raises(LabellingError, match=r"items\[0\]\.sample_token"):
        queue.enqueue(S, R, [QueueRequest("", "sc", "r", 1.0)])
    with pytest.raises(LabellingError, match="round"):
        queue.enqueue(S, -1, [req("a", 1.0)])
    assert queue.items() == []  # nothing half-inserted


def test_claim_order_and_states(queue):
    queue.enqueue(S, R, [req("low", 0.1), req("high", 0.9), req("mid", 0.5), req("mid2", 0.5)])
    first = queue.claim(S, R, "ann", limit=2)
    assert [i.sample_token for i in first] == ["high", "mid"]  # score desc, ties by insertion order
    assert all(i.status == "in_review" and i.reviewer == "ann" for i in first)
    assert [i.sample_token for i in queue.claim(S, R, "bob", limit=5)] == ["mid2", "low"]
    assert queue.claim(S, R, "carl") == []
    assert queue.claim("other", R, "ann") == []

    queue.complete(first[0].id, "ann", boxes=4, cost=4.5)
    with pytest.raises(LabellingError, match="in review by 'ann'"):
        queue.complete(first[1].id, "bob", boxes=1, cost=1.0)
    with pytest.raises(LabellingError, match="status is 'done'"):
        queue.complete(first[0].id, "ann", boxes=4, cost=4.5)
    skipped = queue.skip(first[1].id, "camera image corrupt")
    assert skipped.status == "skipped" and skipped.note == "camera image corrupt"
    with pytest.raises(LabellingError, match="no item with id 999"):
        queue.skip(999, "x")
    assert queue.summary(S, R) == {"pending": 0, "in_review": 2, "done": 1, "skipped": 1, "total": 4,
                                   "boxes": 4, "cost": 4.5}
    assert [i.sample_token for i in queue.items(S, R, "in_review")] == ["mid2", "low"]
    with pytest.raises(LabellingError, match="status must be one of"):
        queue.items(status="finished")

    released = queue.release(queue.items(S, R, "in_review")[1].id, "bob", note="does not fit")
    assert released.status == "pending" and released.reviewer is None
    with pytest.raises(LabellingError, match="not in review by 'ann'"):
        queue.release(released.id, "ann")


def test_release_stale(queue):
    queue.enqueue(S, R, [req("old", 0.9), req("new", 0.5), req("wait", 0.1)])
    old, new = queue.claim(S, R, "crashed", limit=2)
    # Backdate the first claim by two hours, as if its reviewer died long ago.
    then = (datetime.now(timezone.utc) - timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    conn = sqlite3.connect(queue.path)
    conn.execute("UPDATE items SET updated_at = ? WHERE id = ?", (then, old.id))
    conn.commit()
    conn.close()
    assert queue.release_stale(3600) == 1
    by_token = {i.sample_token: i for i in queue.items(S, R)}
    assert by_token["old"].status == "pending" and by_token["old"].reviewer is None
    assert by_token["new"].status == "in_review" and by_token["wait"].status == "pending"
    assert queue.release_stale(3600) == 0
    # With a clock an hour ahead the recent claim is stale too.
    assert queue.release_stale(1800, now=datetime.now(timezone.utc) + timedelta(hours=1)) == 1
    assert [i.sample_token for i in queue.claim(S, R, "next", limit=3)] == ["old", "new", "wait"]


# ---------------------------------------------------------------------- several processes at once
def _worker(path: str, worker: int, n: int, start, out) -> None:
    try:
        out.put((worker, *_work(path, worker, n, start), ""))
    except Exception as e:  # report instead of dying, so the parent fails fast with the reason
        out.put((worker, 0, [], f"{type(e).__name__}: {e}"))


def _work(path: str, worker: int, n: int, start) -> tuple[int, list[int]]:
    start.wait(timeout=300)  # all workers open the fresh file and write together (imports end at different times)
    q = ReviewQueue(path)
    inserted = q.enqueue(S, R, [req(f"w{worker}-{k:03d}", (k * 7919 + worker) % 101 / 100.0) for k in range(n)])
    # Everyone also re-enqueues worker 0's frames: those must still go in exactly once.
    inserted += q.enqueue(S, R, [req(f"w0-{k:03d}", 0.0) for k in range(n)])
    claimed: list[int] = []
    empty_rounds = 0
    while empty_rounds < 3:
        got = q.claim(S, R, f"reviewer-{worker}", limit=3)
        if not got:
            empty_rounds += 1
            continue
        empty_rounds = 0
        claimed += [i.id for i in got]
        for i in got:
            q.complete(i.id, f"reviewer-{worker}", boxes=1, cost=1.5)
    q.close()
    return inserted, claimed


def _collect(out, procs, timeout_s: float) -> list:
    """One result per process; fails fast if a process died without reporting."""
    results, deadline = [], time.monotonic() + timeout_s
    while len(results) < len(procs):
        try:
            results.append(out.get(timeout=2))
        except queue_mod.Empty:
            dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            assert not dead, f"worker process(es) died with exit code(s) {dead}"
            assert time.monotonic() < deadline, f"only {len(results)} of {len(procs)} workers reported"
    return results


def test_concurrent_writers_never_lose_or_double_claim(tmp_path):
    path = str(tmp_path / "shared.sqlite")
    ctx = mp.get_context("spawn")
    n_workers, n = 4, 50
    start, out = ctx.Barrier(n_workers), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(path, w, n, start, out)) for w in range(n_workers)]
    for p in procs:
        p.start()
    results = _collect(out, procs, timeout_s=300)  # spawn re-imports torch per child: slow on a busy machine
    assert [r[3] for r in results] == [""] * n_workers  # no worker hit an error
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert sum(r[1] for r in results) == n_workers * n  # every frame inserted exactly once overall
    claimed = [i for r in results for i in r[2]]
    assert len(claimed) == len(set(claimed)) == n_workers * n  # none claimed twice, all claimed
    assert sum(1 for r in results if r[2]) >= 2  # the claims really were concurrent, not one worker's
    q = ReviewQueue(path)
    items = q.items(S, R)
    assert len(items) == n_workers * n and len({i.sample_token for i in items}) == n_workers * n
    assert {i.status for i in items} == {"done"}
    assert q.summary(S, R)["cost"] == pytest.approx(1.5 * n_workers * n)
    # Each item's recorded reviewer is the worker that claimed it.
    owner = {i: w for w, _, ids, _ in results for i in ids}
    assert all(it.reviewer == f"reviewer-{owner[it.id]}" for it in items)
    q.close()


# ---------------------------------------------------------------------- Scalabel round trip
def _box(token: str, x: float, cls: str = "car", track: str = "inst-1") -> LabelBox:
    c, s = math.cos(0.3), math.sin(0.3)  # yaw 0.6 rad
    return LabelBox(sample_token=token, translation=[x, 20.0, 1.0], size=[1.9, 4.5, 1.6], rotation=[c, 0, 0, s],
                    velocity=[1.5, -0.5], detection_name=cls, attribute_name="vehicle.moving", score=0.42,
                    track_id=track, num_lidar_pts=12)


@pytest.fixture(scope="module")
def realformat_nusc(realformat_root):
    from drive.data.nusc import open_nuscenes

    return open_nuscenes(realformat_root.root, "v1.0-mini")


def _samples(nusc):
    scene = nusc.scene[0]
    tokens, tok = [], scene["first_sample_token"]
    while tok:
        tokens.append(tok)
        tok = nusc.get("sample", tok)["next"]
    return scene, tokens


def test_scalabel_export_edit_import(queue, realformat_nusc, tmp_path):
    nusc = realformat_nusc
    scene, tokens = _samples(nusc)
    t1, t2, t3 = tokens[1], tokens[2], tokens[3]
    queue.enqueue(S, R, [QueueRequest(t1, scene["token"], "flicker", 0.4),
                         QueueRequest(t2, scene["token"], "uncertain", 0.8),
                         QueueRequest(t3, scene["token"], "rare", 0.1)])
    (taken,) = queue.claim(S, R, "someone", limit=1)  # t2 is in review: not exported by default (pending only)
    assert taken.sample_token == t2
    path = tmp_path / "out" / "review.json"
    pre = {t1: [_box(t1, 10.0), _box(t1, 30.0, "pedestrian", "inst-2")], t3: []}
    assert queue.export_scalabel(str(path), S, R, nusc, pre_labels=pre) == 2
    doc = json.loads(path.read_text())
    assert doc["metadata"]["box3d_frame"] == "global"
    assert {c["name"] for c in doc["config"]["categories"]} >= {"car", "pedestrian", "traffic_cone"}
    f1, f3 = doc["frames"]
    assert (f1["name"], f3["name"]) == (t1, t3)  # score order
    assert f1["videoName"] == scene["name"] and f1["frameIndex"] == 1 and f3["frameIndex"] == 3
    cam = nusc.get("sample_data", nusc.get("sample", t1)["data"]["CAM_FRONT"])
    assert f1["url"] == cam["filename"] and not f1["url"].startswith("/")
    assert f1["attributes"] == {"queue_id": queue.items(S, R, "pending")[0].id, "reason": "flicker",
                                "score": 0.4, "status": "pending"}
    lab = f1["labels"][0]
    assert lab["id"] == "inst-1" and lab["category"] == "car"
    assert lab["box3d"]["location"] == [10.0, 20.0, 1.0]
    assert lab["box3d"]["dimension"] == [1.6, 1.9, 4.5]  # Scalabel order (h, w, l)
    assert lab["box3d"]["orientation"] == pytest.approx([0.0, 0.0, 0.6])
    assert lab["attributes"]["score"] == 0.42 and lab["attributes"]["source"] == "auto"
    assert f3["labels"] == []

    # A person moves the car 2 m, turns it to yaw 1.0, deletes the pedestrian and adds a cone on frame 3.
    lab["box3d"]["location"][0] = 12.0
    lab["box3d"]["orientation"] = [0.0, 0.0, 1.0]
    del f1["labels"][1]
    f3["labels"].append({"id": "new", "category": "traffic_cone",
                         "box3d": {"alpha": 0, "location": [5.0, 6.0, 0.4], "dimension": [0.9, 0.4, 0.4],
                                   "orientation": [0, 0, 0]}})
    path.write_text(json.dumps(doc))
    boxes = queue.import_scalabel(str(path), S, R, "alice", cost_per_frame=0.5, cost_per_box=1.0)
    assert set(boxes) == {t1, t3}
    (car,) = boxes[t1]
    assert car.translation == [12.0, 20.0, 1.0] and car.size == pytest.approx([1.9, 4.5, 1.6])
    assert car.rotation == pytest.approx([math.cos(0.5), 0, 0, math.sin(0.5)])
    assert car.velocity == [1.5, -0.5] and car.track_id == "inst-1" and car.detection_name == "car"
    assert car.score == 1.0 and car.num_lidar_pts == 12 and car.attribute_name == "vehicle.moving"
    (cone,) = boxes[t3]
    assert cone.detection_name == "traffic_cone" and cone.size == [0.4, 0.4, 0.9] and cone.velocity == [0.0, 0.0]
    assert cone.rotation == pytest.approx([1, 0, 0, 0]) and cone.track_id == ""
    done = {i.sample_token: i for i in queue.items(S, R, "done")}
    assert set(done) == {t1, t3}
    assert (done[t1].boxes, done[t1].cost, done[t1].reviewer) == (1, 1.5, "alice")
    assert queue.summary(S, R) == {"pending": 0, "in_review": 1, "done": 2, "skipped": 0, "total": 3,
                                   "boxes": 2, "cost": 3.0}
    # Importing again is harmless.
    assert queue.import_scalabel(str(path), S, R, "alice", 0.5, 1.0)[t1][0].translation == [12.0, 20.0, 1.0]
    assert queue.summary(S, R)["done"] == 2


def test_scalabel_export_all_statuses_and_unknown_sample(queue, realformat_nusc, tmp_path):
    nusc = realformat_nusc
    scene, tokens = _samples(nusc)
    queue.enqueue(S, R, [QueueRequest(tokens[0], scene["token"], "r", 0.5)])
    queue.claim(S, R, "x")
    path = tmp_path / "all.json"
    assert queue.export_scalabel(str(path), S, R, nusc) == 0
    assert json.loads(path.read_text())["frames"] == []
    assert queue.export_scalabel(str(path), S, R, nusc, status=None) == 1
    with pytest.raises(LabellingError, match="not in the exported queue"):
        queue.export_scalabel(str(path), S, R, nusc, pre_labels={"zzz": []}, status=None)
    queue.enqueue(S, R, [QueueRequest("no-such-sample", scene["token"], "r", 0.9)])
    with pytest.raises(LabellingError, match="'no-such-sample' is not in the data set"):
        queue.export_scalabel(str(path), S, R, nusc)
    assert json.loads(path.read_text())["frames"][0]["name"] == tokens[0]  # the failed export left it intact
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def _good_doc(token: str) -> dict:
    return {"frames": [{"name": token, "labels": [
        {"id": "a", "category": "car", "box3d": {"location": [1, 2, 3], "dimension": [1.5, 2, 4],
                                                 "orientation": [0, 0, 0.1]}}]}]}


@pytest.mark.parametrize("edit, field", [
    (lambda f: f["labels"][0].update(category="spaceship"), r"labels\[0\]\.category"),
    (lambda f: f["labels"][0]["box3d"].update(dimension=[1.5, -2, 4]), r"labels\[0\]\.box3d\.dimension"),
    (lambda f: f["labels"][0]["box3d"].update(location=[1, 2]), r"labels\[0\]\.box3d\.location"),
    (lambda f: f["labels"][0]["box3d"].update(orientation=[0, "x", 0]), r"labels\[0\]\.box3d\.orientation"),
    (lambda f: f["labels"][0].pop("box3d"), r"labels\[0\]\.box3d"),
    (lambda f: f["labels"][0].update(attributes={"vx": float("inf")}), r"labels\[0\]\.attributes\.vx"),
    (lambda f: f.update(labels={"a": 1}), r"\.labels: must be a list"),
    (lambda f: f.update(name="not-queued"), r"frame 'not-queued' \(frames\[0\]\)\.name: unknown sample token"),
    (lambda f: f.pop("name"), r"frames\[0\]\.name"),
])
def test_scalabel_import_rejects_malformed(queue, tmp_path, edit, field):
    queue.enqueue(S, R, [req("tok1", 0.5)])
    doc = _good_doc("tok1")
    edit(doc["frames"][0])
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(LabellingError, match=field) as e:
        queue.import_scalabel(str(path), S, R, "alice")
    assert "edited.json" in str(e.value)
    assert queue.summary(S, R)["done"] == 0  # nothing marked


def test_scalabel_import_file_problems(queue, tmp_path):
    queue.enqueue(S, R, [req("tok1", 0.5)])
    with pytest.raises(LabellingError, match="missing.json"):
        queue.import_scalabel(str(tmp_path / "missing.json"), S, R, "alice")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(LabellingError, match="bad.json is not valid JSON"):
        queue.import_scalabel(str(bad), S, R, "alice")
    twice = tmp_path / "twice.json"
    doc = _good_doc("tok1")
    doc["frames"].append(doc["frames"][0])
    twice.write_text(json.dumps(doc))
    with pytest.raises(LabellingError, match=r"frames\[1\]\)\.name: the frame appears twice"):
        queue.import_scalabel(str(twice), S, R, "alice")
    # The good document imports, and a bare list of frames (also Scalabel) works too.
    good = tmp_path / "good.json"
    good.write_text(json.dumps(_good_doc("tok1")["frames"]))
    (box,) = queue.import_scalabel(str(good), S, R, "alice")["tok1"]
    assert box.size == [2.0, 4.0, 1.5] and box.rotation == pytest.approx([math.cos(0.05), 0, 0, math.sin(0.05)])
