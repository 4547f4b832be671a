"""Our models with the released weights against the original implementations' own raw outputs (../shared/reference).

    python3 bench/reference_outputs.py

Yolo-FastestV2: the released coco2017-0.241078ap-model.pth in our model, on the reference's fixed input, against the
reference's three raw output pairs. LeYOLO-Nano: LeYOLONano.pt through our importer, on the fork's fixed 320x320
input (RGB; our first conv takes BGR), against the fork's P3/P4/P5 head maps. Prints max |ours - reference| per output
and the largest value, so a reader sees the difference relative to the numbers' size. Exit 0 when every output is
within the tests' bounds (1e-5 and 1e-4), 1 otherwise, 2 without ../shared.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / 'shared'
sys.path.insert(0, str(REPO))

from model.architectures import ARCHITECTURES  # noqa: E402
from model.detector import Detector  # noqa: E402
from model.heads import AnchorHead  # noqa: E402
from model.leyolo import LeYOLO  # noqa: E402
from model.leyolo_head import LeYOLOHead  # noqa: E402
from model.leyolo_import import import_leyolo  # noqa: E402
from model.spec import HeadSpec  # noqa: E402
from model.weights import load_weights  # noqa: E402

YFV2_WEIGHTS = SHARED / 'weights/yolo-fastestv2/coco2017-0.241078ap-model.pth'
YFV2_REFERENCE = SHARED / 'reference/yfv2_raw_outputs.pt'
NANO_WEIGHTS = SHARED / 'weights/leyolo/LeYOLONano.pt'
NANO_REFERENCE = SHARED / 'reference/leyolo_nano_raw_320.pt'
BOUNDS = {'yolo-fastestv2': 1e-5, 'leyolo-nano': 1e-4}


def yolo_fastestv2_rows() -> list:
    backbone, neck, channels = ARCHITECTURES['yolo-fastestv2'].build_body()
    spec = HeadSpec(kind='anchor', strides=(16, 32), num_classes=80, input_width=352, input_height=352,
                    anchors_px=(((12.64, 19.39), (37.88, 51.48), (55.71, 138.31)),
                                ((126.91, 78.23), (131.57, 214.55), (279.92, 258.87))))
    model = Detector(backbone, neck, AnchorHead(channels, 3, 80), spec)
    load_weights(model, YFV2_WEIGHTS)
    reference = torch.load(YFV2_REFERENCE, map_location='cpu', weights_only=True)
    with torch.no_grad():
        ours = [t for scale in model.eval()(reference['input_img']) for t in scale]
    names = [f'stride {s} {part}' for s in (16, 32) for part in ('reg', 'obj', 'cls')]
    return [(name, (a - b).abs().max().item(), b.abs().max().item())
            for name, a, b in zip(names, ours, reference['outputs_img'])]


def leyolo_nano_rows() -> list:
    body = LeYOLO('nano')
    spec = HeadSpec(kind='leyolo', strides=(8, 16, 32), num_classes=80, input_width=320, input_height=320)
    model = Detector(body, None, LeYOLOHead(body.out_channels, 80, spec), spec)
    import_leyolo(model, NANO_WEIGHTS)
    reference = torch.load(NANO_REFERENCE, map_location='cpu', weights_only=True)
    with torch.no_grad():
        raw = model.eval()(reference['input'][:, [2, 1, 0]])
    return [(f'{name} box+cls', (torch.cat((box, cls), 1) - reference[name]).abs().max().item(),
             reference[name].abs().max().item()) for name, (box, cls) in zip(('p3', 'p4', 'p5'), raw)]


def main() -> int:
    missing = [p for p in (YFV2_WEIGHTS, YFV2_REFERENCE, NANO_WEIGHTS, NANO_REFERENCE) if not p.is_file()]
    if missing:
        print(f'{missing[0]} not found: this benchmark needs ../shared', file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    print('| model | output | max abs diff | max abs value |\n|---|---|---|---|')
    ok = True
    for model_name, rows in (('yolo-fastestv2', yolo_fastestv2_rows()), ('leyolo-nano', leyolo_nano_rows())):
        for output, diff, largest in rows:
            print(f'| {model_name} | {output} | {diff:.1e} | {largest:.1f} |')
            ok &= diff <= BOUNDS[model_name]
    print('PASS' if ok else 'FAIL')
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
