"""The tiny DrivingModel exports to standard-domain ONNX and matches eager on every output."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from drive.models import INPUT_NAMES, FlatOutputs, ModelOutputs
from model_fixtures import tiny_inputs, tiny_model, tiny_view_transform

torch.set_num_threads(1)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("view_transform", ["bevformer", "bevformer+conv_fusion", "bevformer+temporal_regression"])
def test_onnx_export_parity(tmp_path, view_transform: str) -> None:
    model, cfg = tiny_model(seed=1, **tiny_view_transform(view_transform))
    model.eval()
    inputs = tiny_inputs(model, cfg, batch=2, seed=1)  # sample 0 is a first frame, sample 1 has a previous BEV
    with torch.no_grad():
        eager = model(*inputs).to_tuple()
    program = torch.onnx.export(FlatOutputs(model), inputs, dynamo=True, opset_version=18,
                                input_names=list(INPUT_NAMES), output_names=list(ModelOutputs.export_names()),
                                optimize=False, verbose=False)
    path = tmp_path / "tiny.onnx"
    program.save(str(path))

    graph = onnx.load(str(path)).graph
    domains = {node.domain for node in graph.node}
    assert domains <= {"", "ai.onnx"}, domains
    assert [i.name for i in graph.input] == list(INPUT_NAMES)
    # no data-dependent control flow or shapes, no einsum (poorly supported by edge compilers)
    op_types = {node.op_type for node in graph.node}
    assert not op_types & {"If", "Loop", "Scan", "NonZero", "Einsum"}, op_types

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feeds = {name: x.numpy() for name, x in zip(INPUT_NAMES, inputs)}
    results = session.run(None, feeds)
    assert len(results) == len(eager) == len(ModelOutputs.export_names())
    errors = {}
    for name, onnx_out, torch_out in zip(ModelOutputs.export_names(), results, eager):
        assert onnx_out.shape == tuple(torch_out.shape), name
        errors[name] = float(np.abs(onnx_out.astype(np.float64) - torch_out.numpy().astype(np.float64)).max())
    assert max(errors.values()) <= 1e-4, errors
    assert eager[-1].abs().max() > 0  # the feasibility layer did act, so its path was compared
