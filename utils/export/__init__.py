"""Export a trained detector for deployment: ONNX (simplified) -> NCNN (.param/.bin) + the sidecar JSON.

The road (then utils/export/check.py runs every backend on one image and compares them with PyTorch):
    Detector with .export = True  --torch.onnx.export (TorchScript exporter)-->  X.onnx  --onnxsim-->  X.onnx
                                                                        utils/export/onnx_export.py
    X.onnx  --pnnx fp16=0-->  X.param / X.bin   (+ X.json: input size, blob names, anchors, classes)
                                                                        utils/export/ncnn_convert.py
"""
from __future__ import annotations

from utils.export.ncnn_convert import DEFAULT_CONF_THRESH, DEFAULT_NMS_IOU, convert_to_ncnn, write_sidecar
from utils.export.onnx_export import export_onnx

__all__ = ['DEFAULT_CONF_THRESH', 'DEFAULT_NMS_IOU', 'export_all']


def export_all(model, cfg, onnx_path, opset: int = 11, simplify: bool = True, ncnn: bool = True,
               conf_thresh: float = DEFAULT_CONF_THRESH, nms_iou: float = DEFAULT_NMS_IOU) -> dict:
    """The whole road for one model and its Config. Returns {'onnx': path, 'param': ..., 'bin': ..., 'json': ...}."""
    paths = {'onnx': export_onnx(model, onnx_path, cfg.width, cfg.height, opset=opset, simplify=simplify)}
    if ncnn:
        paths['param'], paths['bin'] = convert_to_ncnn(paths['onnx'], cfg.width, cfg.height)
        paths['json'] = write_sidecar(paths['param'], model.spec, cfg.class_names, cfg.letterbox,
                                      conf_thresh=conf_thresh, nms_iou=nms_iou)
    return paths
