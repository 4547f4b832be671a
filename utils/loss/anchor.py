"""The anchor-head loss (Yolo-FastestV2 family).

Head outputs, one triple per scale (strides ascending): reg (N, 4A, H, W) anchor-major (a*4 + x,y,w,h),
obj (N, A, H, W), cls (N, C, H, W): all logits. One class vector per cell, shared by the cell's A anchors.
Decoding (the same as utils/postprocess.py and Yolo-FastestV2's released weights), in grid cells:
    cx = 2*sigmoid(x) - 0.5 + i      w = (2*sigmoid(w))^2 * anchor_w / stride      (y, h alike)

Assignment: which anchors and cells learn which box is the assigner's choice (utils/loss/assigners/, the .data key
`assigner`: YOLOv5's ratio matching by default, ATSS, SimOTA or task-aligned). It returns, per scale, the positives
(image, anchor, cell, class, target box) and optionally their objectness targets; the terms below are the same for
every assigner.

Terms, per scale s:
    box  mean over matches of 1 - CIoU(predicted, target)
    obj  BCE(obj logit, target) over all N*A*H*W positions, the target being the match's CIoU (detached, >= 0), or
         the assigner's objectness target where it gives one, at matched positions and 0 elsewhere; weighted by
         OBJ_BALANCE[stride] (finer scales hold more small, hard objects and more cells)
    cls  softmax cross-entropy of the cell's class logits against the match's class, mean over matches
    total = ANCHOR_LOSS_SCALE * (BOX_GAIN * sum box + OBJ_GAIN * sum balance*obj + cls_gain * sum cls)

Box and objectness gains are YOLOv5's (0.05, 1.0). The class gain is the .data's `anchor_cls_gain`: by default
0.005, not YOLOv5's 0.5 (tuned for per-class BCE, which YOLOv5 also scales by classes/80): a softmax cross-entropy
that strong swamps the cls/obj tower the two share. In our runs a gain ten times larger wrecked the released COCO
weights within a few SGD steps, and from an ImageNet backbone a much larger one stopped the boxes improving.
Yolo-FastestV2 itself weighs cls far below box. A model trained from scratch needs more: at 0.005 the class term
sends the shared tower about a tenth of objectness's gradient and its classes stay at chance (the sample dataset,
data/make_sample.py, sets 0.05; 0.5 stops every term learning there).
Scale: ANCHOR_LOSS_SCALE = 64 gives box 3.2 and obj 64 per unit of mean loss, Yolo-FastestV2's own weights for a loss
that does not grow with the batch size, so its .data files' learning_rate 0.001 takes the steps it takes there.
(YOLOv5 instead multiplies by the batch size and uses lr 0.01.) In our runs ten times this scale at lr 0.001
wrecked the released COCO weights within a few steps of fine-tuning, where 64 keeps their accuracy.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from utils.boxes import ciou
from utils.config import Config
from utils.loss.assigners import YOLOv5Assigner, build_assigner
from utils.loss.targets import checked_targets

BOX_GAIN, OBJ_GAIN = 0.05, 1.0
ANCHOR_LOSS_SCALE = 64.0   # Yolo-FastestV2's scale
OBJ_BALANCE = {8: 4.0, 16: 1.0, 32: 0.4, 64: 0.1}


class AnchorLoss:
    def __init__(self, spec, assigner=None, cls_gain: float = Config.anchor_cls_gain):
        """`assigner`: one of utils/loss/assigners/ (None: YOLOv5's matching); `cls_gain`: the class term's weight."""
        self.cls_gain = cls_gain
        self.strides = tuple(spec.strides)
        self.num_classes = spec.num_classes
        self.anchors_grid = [torch.tensor(a, dtype=torch.float32) / s for a, s in zip(spec.anchors_px, spec.strides)]
        self.balance = [OBJ_BALANCE.get(s, 0.1) for s in self.strides]
        self.assigner = assigner if assigner is not None else YOLOv5Assigner()

    @classmethod
    def from_config(cls, spec, cfg=None) -> AnchorLoss:
        """The loss with the assigner and class gain of a Config (None: the defaults)."""
        c = cfg if cfg is not None else Config
        return cls(spec, build_assigner(c.assigner, spec.strides, c.tal_topk, c.tal_alpha, c.tal_beta),
                   c.anchor_cls_gain)

    def __call__(self, outputs, targets: torch.Tensor):
        targets = checked_targets(outputs, targets, self.strides, self.num_classes)
        device = outputs[0][0].device
        loss_box = torch.zeros((), device=device)
        loss_obj, loss_cls = torch.zeros_like(loss_box), torch.zeros_like(loss_box)
        matches = 0
        anchors_grid = [anchors.to(device) for anchors in self.anchors_grid]
        assigned = self.assigner(targets.to(device), outputs, anchors_grid)
        for (reg, obj, cls), anchors, balance, scale_matches in zip(outputs, anchors_grid, self.balance, assigned):
            reg, obj, cls = reg.float(), obj.float(), cls.float()
            n, num_anchors, grid_h, grid_w = obj.shape
            img, a, gy, gx, tcls, tbox, quality = scale_matches
            obj_target = torch.zeros(obj.shape, device=device)   # contiguous even for channels-last outputs
            if len(img):
                matches += len(img)
                pred = reg.view(n, num_anchors, 4, grid_h, grid_w)[img, a, :, gy, gx].sigmoid()   # (K, 4)
                pred_xy = pred[:, :2] * 2 - 0.5
                pred_wh = (pred[:, 2:] * 2) ** 2 * anchors[a]
                box_iou = ciou(torch.cat([pred_xy, pred_wh], 1), tbox)
                loss_box = loss_box + (1 - box_iou).mean()
                # Where two matches share a position, the better-fitting box sets the objectness target.
                flat = ((img * num_anchors + a) * grid_h + gy) * grid_w + gx
                objectness = box_iou.detach().clamp(min=0) if quality is None else quality
                obj_target.view(-1).scatter_reduce_(0, flat, objectness, 'amax')
                loss_cls = loss_cls + F.cross_entropy(cls[img, :, gy, gx], tcls)
            loss_obj = loss_obj + balance * F.binary_cross_entropy_with_logits(obj, obj_target)
        total = ANCHOR_LOSS_SCALE * (BOX_GAIN * loss_box + OBJ_GAIN * loss_obj + self.cls_gain * loss_cls)
        parts = {'box': loss_box.item(), 'obj': loss_obj.item(), 'cls': loss_cls.item(), 'matches': matches}
        return total, parts
