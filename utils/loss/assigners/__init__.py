"""Which anchors of the anchor head learn which box: the .data key `assigner` picks one of four.

    yolov5  YOLOv5's ratio matching (yolov5.py), the default    atss    adaptive training sample selection
    simota  YOLOX's SimOTA, from the predictions                tal     task-aligned (TOOD), from the predictions
Each is called as `assigner(targets (M, 6) [image, class, cx, cy, w, h] normalised, raw head outputs, anchors per
scale in grid cells)` and returns one `ScaleMatches` per scale; the loss (utils/loss/anchor.py) turns them into its
box, objectness and class terms the same way whichever assigner made them. What they share (the candidates, the
head's reach, conflicts between boxes): candidates.py.
"""
from __future__ import annotations

from utils.config import Config
from utils.loss.assigners.atss import ATSSAssigner
from utils.loss.assigners.candidates import ScaleMatches
from utils.loss.assigners.simota import SimOTAAssigner
from utils.loss.assigners.tal import TaskAlignedAnchorAssigner
from utils.loss.assigners.yolov5 import YOLOv5Assigner, match_targets

__all__ = ['ATSSAssigner', 'ScaleMatches', 'SimOTAAssigner', 'TaskAlignedAnchorAssigner', 'YOLOv5Assigner',
           'build_assigner', 'match_targets']


def build_assigner(name: str, strides: tuple, tal_topk: int = Config.tal_topk, tal_alpha: float = Config.tal_alpha,
                   tal_beta: float = Config.tal_beta):
    """The assigner a .data's `assigner` names (utils/config.py ASSIGNERS)."""
    if name == 'yolov5':
        return YOLOv5Assigner()
    if name == 'atss':
        return ATSSAssigner(strides)
    if name == 'simota':
        return SimOTAAssigner(strides)
    if name == 'tal':
        return TaskAlignedAnchorAssigner(strides, topk=tal_topk, alpha=tal_alpha, beta=tal_beta)
    raise ValueError(f'unknown assigner "{name}"; known: yolov5, atss, simota, tal')
