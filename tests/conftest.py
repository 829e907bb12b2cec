"""Shared pytest fixtures: the hand-written real-format nuScenes root (``tests/fixtures/realformat.py``)."""
pytest_plugins = ("fixtures.realformat",)
