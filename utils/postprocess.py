"""Model outputs in the deployment layout -> boxes in network-input pixels -> detections after NMS.

One decode and one NMS serve evaluation, test.py and every backend (torch, onnxruntime, OpenCV DNN, NCNN), so a
number measured with one backend means the same with another. The input is the deployment layout of
docs/architecture.md: per output scale (strides ascending) one NHWC array whose values are already activated.

anchor head, channels [reg 4A (anchor-major: a*4 + (x, y, w, h)), obj A, cls C], all after sigmoid/softmax:
    cx = (2 * reg_x - 0.5 + grid_x) * stride_x          w = (2 * reg_w) ** 2 * anchor_w_px
    cy = (2 * reg_y - 0.5 + grid_y) * stride_y          h = (2 * reg_h) ** 2 * anchor_h_px
    score[class] = obj * cls_prob[class]   (the A anchors of a cell share its class probabilities)
leyolo head, channels [l, t, r, b (distances in grid cells, after DFL), sigmoid(cls) C]:
    x1 = (grid_x + 0.5 - l) * stride_x,  y1 = (grid_y + 0.5 - t) * stride_y,  x2 = (.. + r) ..,  y2 = (.. + b) ..
    score[class] = cls_prob[class]

Strides are taken per axis from the output shape (input_width / W, input_height / H), so non-square inputs decode
right. (Yolo-FastestV2's own decode uses the height stride for x as well, which is only right for square inputs.)

NMS keeps, per box, its best class only (as Yolo-FastestV2 does), then runs class-aware NMS with OpenCV's
`cv2.dnn.NMSBoxesBatched` (a box suppresses another of the same class when their IoU is above the threshold).
"""
from __future__ import annotations

import cv2
import numpy as np

from utils.errors import ConfigError

# An exported model's outputs are checked against the .data file only here: a mismatch is the user's to fix.
FROM_ANOTHER_DATA_FILE = ('the model does not fit the .data file (classes, anchor_num, anchors, head): was it '
                          'exported from another one?')
MAX_BOXES_INTO_NMS = 30000   # keep the highest-scoring boxes only, so a near-zero threshold cannot stall NMS


def to_numpy(array) -> np.ndarray:
    """A torch tensor (any device) or array-like -> float32 numpy array."""
    if hasattr(array, 'detach'):
        array = array.detach().float().cpu().numpy()
    return np.asarray(array, dtype=np.float32)


def grid_xy(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Cell column and row indices, each (H, W) float32."""
    grid_y, grid_x = np.meshgrid(np.arange(height, dtype=np.float32), np.arange(width, dtype=np.float32),
                                 indexing='ij')
    return grid_x, grid_y


def decode_anchor_scale(output_nhwc: np.ndarray, anchors_px, num_classes: int, stride_x: float,
                        stride_y: float) -> tuple[np.ndarray, np.ndarray]:
    """One scale of the anchor head -> (boxes_xyxy_px (N, H*W*A, 4), scores (N, H*W*A, C)), cell-major order."""
    n, h, w, channels = output_nhwc.shape
    num_anchors = len(anchors_px)
    if channels != 5 * num_anchors + num_classes:
        raise ConfigError(f'anchor head output has {channels} channels; {num_anchors} anchors and {num_classes} '
                          f'classes need 5 * {num_anchors} + {num_classes} = {5 * num_anchors + num_classes}: '
                          f'{FROM_ANOTHER_DATA_FILE}')
    reg = output_nhwc[..., :4 * num_anchors].reshape(n, h, w, num_anchors, 4)
    obj = output_nhwc[..., 4 * num_anchors:5 * num_anchors]                      # (N, H, W, A)
    cls = output_nhwc[..., 5 * num_anchors:]                                      # (N, H, W, C)
    grid_x, grid_y = grid_xy(h, w)
    anchors = np.asarray(anchors_px, dtype=np.float32)                            # (A, 2)
    cx = (reg[..., 0] * 2 - 0.5 + grid_x[..., None]) * stride_x
    cy = (reg[..., 1] * 2 - 0.5 + grid_y[..., None]) * stride_y
    bw = (reg[..., 2] * 2) ** 2 * anchors[:, 0]
    bh = (reg[..., 3] * 2) ** 2 * anchors[:, 1]
    boxes = np.stack((cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2), -1)   # (N, H, W, A, 4)
    scores = obj[..., None] * cls[..., None, :]                                   # (N, H, W, A, C)
    return boxes.reshape(n, -1, 4), scores.reshape(n, -1, num_classes)


def decode_leyolo_scale(output_nhwc: np.ndarray, num_classes: int, stride_x: float,
                        stride_y: float) -> tuple[np.ndarray, np.ndarray]:
    """One scale of the LeYOLO head -> (boxes_xyxy_px (N, H*W, 4), scores (N, H*W, C))."""
    n, h, w, channels = output_nhwc.shape
    if channels != 4 + num_classes:
        raise ConfigError(f'leyolo head output has {channels} channels; {num_classes} classes need '
                          f'4 + {num_classes} = {4 + num_classes}: {FROM_ANOTHER_DATA_FILE}')
    grid_x, grid_y = grid_xy(h, w)
    centre_x, centre_y = grid_x + 0.5, grid_y + 0.5
    ltrb = output_nhwc[..., :4]
    boxes = np.stack(((centre_x - ltrb[..., 0]) * stride_x, (centre_y - ltrb[..., 1]) * stride_y,
                      (centre_x + ltrb[..., 2]) * stride_x, (centre_y + ltrb[..., 3]) * stride_y), -1)
    return boxes.reshape(n, -1, 4), output_nhwc[..., 4:].reshape(n, -1, num_classes)


def decode(outputs_nhwc: list, spec) -> tuple[np.ndarray, np.ndarray]:
    """Per-scale deployment outputs (torch or numpy, strides ascending) -> (boxes_xyxy_px (N, K, 4),
    scores (N, K, C)) in network-input pixels, every scale's boxes concatenated."""
    if len(outputs_nhwc) != len(spec.strides):
        raise ConfigError(f'got {len(outputs_nhwc)} outputs but the head has {len(spec.strides)} scales '
                          f'(strides {tuple(spec.strides)}): {FROM_ANOTHER_DATA_FILE}')
    all_boxes, all_scores = [], []
    for scale, output in enumerate(outputs_nhwc):
        output = to_numpy(output)
        if output.ndim != 4:
            raise ValueError(f'output {scale}: expected NHWC (4 axes), got shape {output.shape}')
        _, h, w, _ = output.shape
        stride_x, stride_y = spec.input_width / w, spec.input_height / h
        if (stride_x, stride_y) != (spec.strides[scale], spec.strides[scale]):
            raise ConfigError(f'output {scale} is {h}x{w} (HxW), but a {spec.input_width}x{spec.input_height} input '
                              f'at stride {spec.strides[scale]} gives '
                              f'{spec.input_height // spec.strides[scale]}x{spec.input_width // spec.strides[scale]}:'
                              f' is the output NHWC and the input size the one the model was exported with?')
        if spec.kind == 'anchor':
            boxes, scores = decode_anchor_scale(output, spec.anchors_px[scale], spec.num_classes, stride_x, stride_y)
        elif spec.kind == 'leyolo':
            boxes, scores = decode_leyolo_scale(output, spec.num_classes, stride_x, stride_y)
        else:
            raise ValueError(f'unknown head kind "{spec.kind}" (expected "anchor" or "leyolo")')
        all_boxes.append(boxes)
        all_scores.append(scores)
    return np.concatenate(all_boxes, 1), np.concatenate(all_scores, 1)


def nms(boxes_xyxy_px, scores, conf_thresh: float, iou_thresh: float, max_det: int = 300,
        multi_label: bool = False) -> list[np.ndarray]:
    """Per image: best class per box, keep score > conf_thresh, class-aware NMS, at most max_det, best first.
    multi_label: every (box, class) pair above conf_thresh is a candidate of its own (Ultralytics' validation), so a
    box may be kept once for each of several classes.

    boxes_xyxy_px (N, K, 4), scores (N, K, C) -> list of N float32 arrays (M, 6) [x1, y1, x2, y2, score, class].
    """
    boxes_xyxy_px, scores = to_numpy(boxes_xyxy_px), to_numpy(scores)
    detections = []
    for boxes, image_scores in zip(boxes_xyxy_px, scores):
        if multi_label:
            keep, classes = np.nonzero(image_scores > conf_thresh)
            best = image_scores[keep, classes]
        else:
            classes = image_scores.argmax(1)
            best = image_scores[np.arange(len(classes)), classes]
            keep = np.flatnonzero(best > conf_thresh)
            best, classes = best[keep], classes[keep]
        if len(keep) > MAX_BOXES_INTO_NMS:
            top = np.argsort(-best, kind='stable')[:MAX_BOXES_INTO_NMS]
            keep, best, classes = keep[top], best[top], classes[top]
        boxes = boxes[keep]
        if len(keep):
            # OpenCV takes (x, y, w, h) boxes; it offsets each class's boxes apart so classes never suppress each other.
            xywh = np.concatenate((boxes[:, :2], boxes[:, 2:] - boxes[:, :2]), 1).astype(np.float64)
            kept = np.asarray(cv2.dnn.NMSBoxesBatched(xywh, best.astype(np.float64), classes.astype(np.int32),
                                                      conf_thresh, iou_thresh), dtype=np.int64).reshape(-1)
            kept = kept[np.argsort(-best[kept], kind='stable')][:max_det]
        else:
            kept = np.zeros(0, dtype=np.int64)
        detections.append(np.concatenate((boxes[kept], best[kept, None], classes[kept, None]), 1).astype(np.float32))
    return detections


def postprocess(outputs_nhwc: list, spec, conf_thresh: float, iou_thresh: float, max_det: int = 300) -> list:
    """decode + nms: per image an (M, 6) array [x1, y1, x2, y2, score, class] in network-input pixels."""
    boxes, scores = decode(outputs_nhwc, spec)
    return nms(boxes, scores, conf_thresh, iou_thresh, max_det)
