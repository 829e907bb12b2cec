"""Backends and checkpoints: the exported ONNX graph, looped through onnxruntime with its own BEV, agrees with
PyTorch frame by frame and in every metric; checkpoints load strictly."""
import pytest
import torch

from drive.data.dataset import NuScenesDrivingDataset, collate
from drive.evaluation.backends import OnnxBackend, TorchBackend
from drive.evaluation.checkpoint import load_model
from drive.evaluation.errors import EvalError
from drive.evaluation.runner import BevStream, evaluate
from drive.models import INPUT_NAMES, FlatOutputs, ModelOutputs
from drive.models.example_inputs import example_inputs
from eval_fixtures import fast_options, write_checkpoint


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("onnx")
    ckpt = write_checkpoint(tmp / "tiny.ckpt", seed=2)
    model, cfg, _ = load_model(ckpt)
    inputs = example_inputs(1, cfg.image_hw, model.bev_shape, cfg.num_cameras, seed=0)
    program = torch.onnx.export(FlatOutputs(model).eval(), inputs, dynamo=True, opset_version=18,
                                input_names=list(INPUT_NAMES), output_names=list(ModelOutputs.export_names()),
                                optimize=False, verbose=False)
    path = str(tmp / "tiny.onnx")
    program.save(path)
    return ckpt, path, model, cfg


@pytest.mark.timeout(300)
def test_onnx_and_torch_agree_frame_by_frame_with_the_bev_looped(exported, realformat_root):
    ckpt, path, model, cfg = exported
    ds = NuScenesDrivingDataset(realformat_root.root, "v1.0-mini", "mini_train", image_size=cfg.image_hw,
                                bev_range=cfg.bev_range, map_size=cfg.map.map_size, cache_images=False)
    torch_stream, onnx_stream = BevStream(TorchBackend(model)), BevStream(OnnxBackend(path, threads=1))
    worst = {}
    for i in range(len(ds)):
        batch = collate([ds[i]])
        a, b = torch_stream(batch), onnx_stream(batch)
        for name in ModelOutputs.export_names():
            x, y = getattr(a, name), getattr(b, name)
            assert x.shape == y.shape and x.dtype == y.dtype, name
            worst[name] = max(worst.get(name, 0.0), float((x.double() - y.double()).abs().max()))
    assert torch_stream.linked == onnx_stream.linked == len(ds) - 1  # the BEV was carried through the scene
    assert max(worst.values()) <= 1e-4, worst


@pytest.mark.timeout(300)
def test_onnx_backend_metrics_equal_torch(exported, realformat_root, tmp_path):
    ckpt, path, _, _ = exported
    common = dict(ckpt_path=ckpt, report=False, threads=1)
    m_torch = evaluate(fast_options(realformat_root.root, "mini_train", tmp_path / "torch", **common))
    m_onnx = evaluate(fast_options(realformat_root.root, "mini_train", tmp_path / "onnx", backend="onnx",
                                   onnx_path=path, **common))
    assert m_onnx["run"]["backend"] == "onnx" and m_onnx["run"]["onnx"]["sha256"]
    for method in ("plan", "plan_refined"):
        for key, value in m_torch["planning"]["methods"][method].items():
            other = m_onnx["planning"]["methods"][method][key]
            assert (value is None and other is None) or value == pytest.approx(other, abs=1e-3), (method, key)
    assert m_torch["detection"]["NDS"] == pytest.approx(m_onnx["detection"]["NDS"], abs=1e-3)
    assert m_torch["run"]["samples"] == m_onnx["run"]["samples"] == 4
    assert m_torch["planning"]["methods"]["plan"]["l2_1s_per_step"] > 0


def test_onnx_exported_for_another_config_is_named(exported, tmp_path, realformat_root):
    _, path, _, _ = exported
    other = write_checkpoint(tmp_path / "other.ckpt", embed_dim=16)
    with pytest.raises(EvalError, match="prev_bev shape"):
        evaluate(fast_options(realformat_root.root, "mini_train", tmp_path / "o", backend="onnx", onnx_path=path,
                              ckpt_path=other))
    with pytest.raises(EvalError, match="ONNX file not found"):
        OnnxBackend(str(tmp_path / "missing.onnx"))


def test_checkpoint_round_trip_and_strict_loading(tmp_path):
    ckpt = write_checkpoint(tmp_path / "a.ckpt", seed=3)
    model, cfg, meta = load_model(ckpt)
    saved = torch.load(ckpt, weights_only=True)["state_dict"]
    assert all(torch.equal(v, saved[f"model.{k}"]) for k, v in model.state_dict().items())
    assert cfg.embed_dim == 32 and meta.weights == "model" and len(meta.sha256) == 64 and not model.training

    # EMA weights win when present (validation and export use them)
    state = dict(saved)
    state.update({f"ema.module.{k[len('model.'):]}": v + 1 for k, v in saved.items() if v.is_floating_point()})
    state.update({f"ema.module.{k[len('model.'):]}": v for k, v in saved.items() if not v.is_floating_point()})
    torch.save({"state_dict": state, "hyper_parameters": meta.hyper_parameters}, str(tmp_path / "ema.ckpt"))
    ema, _, meta2 = load_model(str(tmp_path / "ema.ckpt"))
    k = next(n for n, v in model.state_dict().items() if v.is_floating_point())
    assert meta2.weights == "ema" and torch.equal(ema.state_dict()[k], model.state_dict()[k] + 1)

    # weights of another config: the first mismatching key is named
    wrong = write_checkpoint(tmp_path / "wrong.ckpt", hparams=meta.hyper_parameters,
                             model=load_model(write_checkpoint(tmp_path / "w16.ckpt", embed_dim=16))[0])
    with pytest.raises(EvalError, match=r"key '.*' has shape \(.*\), the model expects"):
        load_model(wrong)
    missing = {kk: v for kk, v in saved.items() if "planning_head" not in kk}
    torch.save({"state_dict": missing, "hyper_parameters": meta.hyper_parameters}, str(tmp_path / "missing.ckpt"))
    with pytest.raises(EvalError, match=r"key 'planning_head\..*' is missing"):
        load_model(str(tmp_path / "missing.ckpt"))
    extra = dict(saved, **{"model.extra.weight": torch.zeros(1)})
    torch.save({"state_dict": extra, "hyper_parameters": meta.hyper_parameters}, str(tmp_path / "extra.ckpt"))
    with pytest.raises(EvalError, match="unexpected key 'extra.weight'"):
        load_model(str(tmp_path / "extra.ckpt"))
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(EvalError, match=r"cannot read checkpoint .*junk.ckpt: not a torch.save archive"):
        load_model(str(tmp_path / "junk.ckpt"))
    torch.save({"state_dict": saved}, str(tmp_path / "nohp.ckpt"))
    with pytest.raises(EvalError, match="no 'model' node"):
        load_model(str(tmp_path / "nohp.ckpt"))
