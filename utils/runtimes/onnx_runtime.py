"""The two runtimes of an exported .onnx: onnxruntime (CPU) and OpenCV DNN."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from utils.errors import ConfigError


class OnnxRuntime:
    """An exported .onnx run by onnxruntime. A graph exported for batch 1 is run one image at a time."""
    name = 'onnx'

    def __init__(self, onnx_path: Path, spec, num_threads: int = 0):
        import onnxruntime
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3   # onnxruntime warns about unknown CPU vendors on some machines
        options.intra_op_num_threads = num_threads
        try:
            self.session = onnxruntime.InferenceSession(str(onnx_path), options, providers=['CPUExecutionProvider'])
        except Exception as error:   # onnxruntime raises its own types (InvalidProtobuf, Fail, ...) for a bad file
            raise ConfigError(f'{onnx_path}: onnxruntime cannot load it ({type(error).__name__}: '
                              f'{str(error).strip().splitlines()[-1]})') from None
        graph_input = self.session.get_inputs()[0]
        self.input_name = graph_input.name
        check_input_shape(onnx_path, graph_input.shape, spec)
        self.fixed_batch_of_one = graph_input.shape[0] == 1
        self.spec = spec

    def __call__(self, batch_nchw: np.ndarray) -> list[np.ndarray]:
        if self.fixed_batch_of_one:
            return stack_per_image([self.session.run(None, {self.input_name: image[None]}) for image in batch_nchw])
        return self.session.run(None, {self.input_name: batch_nchw})


class OpenCVRuntime:
    """An exported .onnx run by OpenCV DNN, one image at a time (OpenCV cannot rely on a dynamic batch axis)."""
    name = 'opencv'

    def __init__(self, onnx_path: Path, spec):
        import cv2
        import onnx
        try:
            graph = onnx.load(str(onnx_path), load_external_data=False).graph
        except Exception as error:   # protobuf's DecodeError and others for a file that is not an ONNX model
            raise ConfigError(f'{onnx_path}: not a readable ONNX model ({type(error).__name__}: {error})') from None
        dims = [d.dim_value or d.dim_param for d in graph.input[0].type.tensor_type.shape.dim]
        check_input_shape(onnx_path, dims, spec)
        # ask for the graph outputs by name: OpenCV's own list of unconnected outputs is not in stride order
        self.output_names = [output.name for output in graph.output]
        self.net = cv2.dnn.readNetFromONNX(str(onnx_path))
        self.spec = spec

    def __call__(self, batch_nchw: np.ndarray) -> list[np.ndarray]:
        per_image = []
        for image in batch_nchw:
            self.net.setInput(np.ascontiguousarray(image[None]))
            per_image.append(list(self.net.forward(self.output_names)))
        return stack_per_image(per_image)


def stack_per_image(per_image: list) -> list[np.ndarray]:
    """[[scale outputs of image 0], [.. image 1], ...] (each with a batch axis of 1) -> per scale (N, H, W, C)."""
    return [np.concatenate([outputs[scale] for outputs in per_image]) for scale in range(len(per_image[0]))]


def check_input_shape(path, dims: list, spec) -> None:
    """An exported graph has a fixed input size: it must be the .data file's width x height."""
    if len(dims) != 4:
        raise ConfigError(f'{path}: expected one NCHW input, got input dims {dims}')
    height, width = dims[2], dims[3]
    if isinstance(height, int) and isinstance(width, int) and (width, height) != (spec.input_width, spec.input_height):
        raise ConfigError(f'{path}: exported for a {width}x{height} input, but the .data file says width = '
                         f'{spec.input_width}, height = {spec.input_height}')
