"""PyTorch -> ONNX: the model's deployment graph, simplified by onnxsim.

Why the TorchScript ("legacy", dynamo=False) exporter: torch 2.13 defaults to the torch.export-based one, which
needs onnxscript (not installed: it fails with ModuleNotFoundError) and emits opset 18 graphs; the TorchScript
exporter at opset 11 gives the plain Conv / Concat / Transpose / Softmax graph that onnxsim, pnnx and OpenCV's DNN
all read (it is what Yolo-FastestV2 itself used).
"""
from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import onnx
import torch

from utils.errors import ExportError

INPUT_NAME = 'in0'   # the names pnnx gives, used in the ONNX too so every backend speaks of the same blobs


def output_names(num_outputs: int) -> list[str]:
    return [f'out{i}' for i in range(num_outputs)]


@contextlib.contextmanager
def deployment_mode(model: torch.nn.Module):
    """eval() and `.export = True` for the block, then the model's previous state: export may run mid-training."""
    was_training, was_export = model.training, getattr(model, 'export', False)
    model.eval()
    model.export = True
    try:
        yield model
    finally:
        model.train(was_training)
        model.export = was_export


def export_onnx(model: torch.nn.Module, onnx_path, width: int, height: int, opset: int = 11,
                simplify: bool = True) -> Path:
    """Write the model's deployment graph (one NHWC output per scale, stride order) to `onnx_path`."""
    onnx_path = Path(onnx_path)
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.rand(1, 3, height, width)   # float 0..1 BGR: the deployment input
    with deployment_mode(model), torch.no_grad(), warnings.catch_warnings():
        num_outputs = len(model(dummy))
        # The exporter warns that it is the legacy one; that choice is deliberate (see the module docstring).
        warnings.simplefilter('ignore', DeprecationWarning)
        torch.onnx.export(model, (dummy,), str(onnx_path), opset_version=opset, dynamo=False,
                          input_names=[INPUT_NAME], output_names=output_names(num_outputs),
                          do_constant_folding=True)
    graph = onnx.load(str(onnx_path))
    onnx.checker.check_model(graph)
    if simplify:
        import onnxsim
        simplified, ok = onnxsim.simplify(graph)
        if not ok:
            raise ExportError(f'{onnx_path}: onnxsim could not validate the simplified graph')
        onnx.save(simplified, str(onnx_path))
    return onnx_path
