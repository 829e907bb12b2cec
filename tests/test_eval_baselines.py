"""Camera-free planning baselines on hand-made cases."""
import numpy as np

from drive.evaluation.baselines import EgoArrays, constant_velocity, fit_ego_mlp, predict_ego_mlp, straight_line


def test_straight_line_keeps_speed():
    plan = straight_line(np.array([[10.0, 0.0, 0.0]]))
    assert np.allclose(plan[0, :, 0], [5, 10, 15, 20, 25, 30]) and np.allclose(plan[0, :, 1], 0)


def test_constant_velocity_repeats_the_last_displacement():
    past = np.array([[[-4.0, -1.0], [-3.0, -0.75], [-2.0, -0.5], [-1.0, -0.25]]])
    plan = constant_velocity(past, np.ones((1, 4), bool), np.array([[2.06, 0, 0]]))
    assert np.allclose(plan[0, 0], [1.0, 0.25]) and np.allclose(plan[0, 5], [6.0, 1.5])
    # no past: falls back to the straight line at the reported speed
    plan = constant_velocity(past, np.zeros((1, 4), bool), np.array([[4.0, 0, 0]]))
    assert np.allclose(plan[0, :, 0], 2.0 * np.arange(1, 7))


def test_ego_mlp_learns_speed_times_time():
    rng = np.random.default_rng(0)
    speed = rng.uniform(0, 12, 256)
    status = np.stack([speed, np.zeros(256), np.zeros(256)], 1)
    fut = np.zeros((256, 6, 2))
    fut[:, :, 0] = speed[:, None] * 0.5 * np.arange(1, 7)
    arr = EgoArrays(status, np.full(256, 2), np.zeros((256, 4, 2)), np.ones((256, 4), bool), fut,
                    np.ones((256, 6), bool))
    model = fit_ego_mlp(arr, steps=800)
    err = np.abs(predict_ego_mlp(model, arr) - fut).mean()
    assert err < 0.3, err
