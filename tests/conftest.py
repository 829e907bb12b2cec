"""Shared pytest fixtures: the hand-written real-format nuScenes root (``tests/fixtures/realformat.py``)
and a small synthetic world written by ``drive synth`` (10 scenes x 8 keyframes at 400x225)."""
import pytest

pytest_plugins = ("fixtures.realformat",)

SYNTH_W, SYNTH_H = 400, 225


@pytest.fixture(scope="session")
def synth_world(tmp_path_factory):
    from drive.data.synth.world import generate_world

    root = str(tmp_path_factory.mktemp("synth") / "world")
    generate_world(root, scenes=10, seed=3, width=SYNTH_W, height=SYNTH_H, keyframes=8, workers=2)
    return root
