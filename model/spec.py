"""What a detector's outputs mean: everything decode, the loss, export and the C++ app need to know about a head."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class HeadSpec:
    kind: str                  # 'anchor' (Yolo-FastestV2's obj/cls/reg head) or 'leyolo' (anchor-free, DFL boxes)
    strides: tuple             # one per output scale, ascending
    num_classes: int
    input_width: int
    input_height: int
    anchors_px: tuple = field(default=())   # per scale, a tuple of (w, h) in input pixels; empty for 'leyolo'
    reg_max: int = 16          # DFL bins per box side ('leyolo' only)

    def to_dict(self) -> dict:
        d = asdict(self)
        d['strides'] = list(self.strides)
        d['anchors_px'] = [[list(wh) for wh in scale] for scale in self.anchors_px]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> 'HeadSpec':
        d = dict(d)
        d['strides'] = tuple(d['strides'])
        d['anchors_px'] = tuple(tuple(tuple(wh) for wh in scale) for scale in d.get('anchors_px', ()))
        return cls(**d)
