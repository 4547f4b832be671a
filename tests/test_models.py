"""Models: the released Yolo-FastestV2 weights reproduce the reference outputs; shapes and the export layout of
every variant; the config -> model checks."""
import math
from pathlib import Path

import cv2
import pytest
import torch
from conftest import shared_path

from model.architectures import ARCHITECTURES
from model.build import build_model
from model.weights import load_weights
from utils.config import YFV2_COCO_ANCHORS_352, YOLOV5_COCO_ANCHORS_640, Config
from utils.preprocess import resize_image

torch.set_num_threads(1)

RELEASE = 'weights/yolo-fastestv2/coco2017-0.241078ap-model.pth'
REFERENCE = 'reference/yfv2_raw_outputs.pt'
# The reference's input_img is this image, stretched to 352x352 with cv2 INTER_LINEAR, BGR, /255
# (checked: identical to the last bit).
REFERENCE_IMAGE = 'images/yfv2_000139.jpg'


def make_cfg(model='yolo-fastestv2', head='anchor', width=352, height=352, classes=80, **fields) -> Config:
    """A Config without a dataset on disk: only the fields the model builder reads."""
    strides = {'yolo-fastestv2': 2}.get(model, 3)
    if head == 'anchor' and 'anchors' not in fields:
        base, side = (YFV2_COCO_ANCHORS_352, 352) if strides == 2 else (YOLOV5_COCO_ANCHORS_640, 640)
        fields['anchors'] = tuple(v * (width if i % 2 == 0 else height) / side for i, v in enumerate(base))
    return Config(data_path=Path('test.data'), model=model, head=head, width=width, height=height,
                  classes=classes, **fields)


def release_model():
    model = build_model(make_cfg(), log=lambda *_: None).eval()
    report = load_weights(model, shared_path(RELEASE), strict=True)
    return model, report


def flatten(outputs):
    return [t for scale in outputs for t in scale]


def test_release_weights_load_strictly():
    model, report = release_model()
    file_tensors = torch.load(shared_path(RELEASE), map_location='cpu', weights_only=True)
    assert report['loaded'] == report['total'] == len(file_tensors) == len(model.state_dict()) == 444
    assert not report['missing'] and not report['unexpected'] and not report['wrong_shape']


@pytest.mark.parametrize('which', ['rand', 'img'])
def test_release_weights_reproduce_reference_raw_outputs(which):
    model, _ = release_model()
    reference = torch.load(shared_path(REFERENCE), map_location='cpu', weights_only=True)
    with torch.no_grad():
        ours = flatten(model(reference[f'input_{which}']))
    theirs = reference[f'outputs_{which}']   # reg, obj, cls at stride 16, then at stride 32
    assert len(ours) == len(theirs) == 6
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape
        assert (a - b).abs().max().item() <= 1e-5


def test_uint8_bgr_image_gives_the_reference_outputs():
    """The deployment path: cv2 BGR image -> shared resize -> uint8 NCHW (the model divides by 255)."""
    reference = torch.load(shared_path(REFERENCE), map_location='cpu', weights_only=True)
    image, _ = resize_image(cv2.imread(str(shared_path(REFERENCE_IMAGE))), 352, 352, letterbox=False)
    x_uint8 = torch.from_numpy(image).permute(2, 0, 1)[None].contiguous()
    assert torch.equal(x_uint8.float() / 255, reference['input_img'])   # same input as the reference, to the bit
    model, _ = release_model()
    with torch.no_grad():
        ours = flatten(model(x_uint8))
    for a, b in zip(ours, reference['outputs_img']):
        assert (a - b).abs().max().item() <= 1e-5


def test_export_layout_is_sigmoid_softmax_of_reference_logits_in_nhwc():
    model, _ = release_model()
    reference = torch.load(shared_path(REFERENCE), map_location='cpu', weights_only=True)
    model.export = True
    with torch.no_grad():
        exported = model(reference['input_img'])
    theirs = reference['outputs_img']
    assert len(exported) == 2
    for scale, out in enumerate(exported):
        reg, obj, cls = theirs[3 * scale: 3 * scale + 3]
        n, _, h, w = reg.shape
        assert out.shape == (n, h, w, 12 + 3 + 80)
        expected = torch.cat((reg.sigmoid(), obj.sigmoid(), cls.softmax(dim=1)), 1).permute(0, 2, 3, 1)
        assert (out - expected).abs().max().item() <= 1e-5
        # class scores are one distribution per cell
        assert torch.allclose(out[..., 15:].sum(-1), torch.ones(n, h, w), atol=1e-5)


def test_training_layout_gives_the_reference_formulation_outputs_and_gradients():
    """Training runs channels-last, splits channels through strided views and applies the stem's ReLU after the
    max-pool (model/shufflenetv2.py). Outputs and every gradient must equal the reference formulation: NCHW,
    reshape-permute split, ReLU before the pool; BatchNorm in training mode in both. In float64, so that the
    summation order of the two layouts cannot hide a real difference."""
    import copy
    torch.manual_seed(0)
    model = build_model(make_cfg(width=128, height=96), log=lambda *_: None).train().double()
    x = torch.rand(4, 3, 96, 128, dtype=torch.float64)

    def run(memory_format, reference_order):
        m = copy.deepcopy(model).to(memory_format=memory_format)
        m.backbone.training = not reference_order   # the backbone's own flag picks the stem order; BN still trains
        outputs = flatten(m(x.contiguous(memory_format=memory_format)))
        sum((t * torch.linspace(-1, 1, t.numel(), dtype=t.dtype).view(t.shape)).sum() for t in outputs).backward()
        return outputs, {name: p.grad for name, p in m.named_parameters()}

    outputs, grads = run(torch.channels_last, reference_order=False)
    ref_outputs, ref_grads = run(torch.contiguous_format, reference_order=True)
    for out, ref in zip(outputs, ref_outputs):
        torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9)
    assert grads.keys() == ref_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[name], rtol=1e-7, atol=1e-9, msg=lambda m: f'{name}: {m}')


VARIANTS = [('yolo-fastestv2', 'anchor')] + [(f'leyolo-{v}', head) for v in ('nano', 'small', 'medium', 'large')
                                              for head in ('anchor', 'leyolo')]


@pytest.mark.parametrize('width,height', [(352, 352), (416, 320)])
@pytest.mark.parametrize('model_name,head', VARIANTS)
def test_forward_shapes(model_name, head, width, height):
    classes = 7
    model = build_model(make_cfg(model_name, head, width, height, classes=classes), log=lambda *_: None).eval()
    x = torch.randint(0, 256, (2, 3, height, width), dtype=torch.uint8)
    with torch.no_grad():
        raw = model(x)
        model.export = True
        exported = model(x)
    assert model.spec.strides == ((16, 32) if model_name == 'yolo-fastestv2' else (8, 16, 32))
    assert len(raw) == len(exported) == len(model.spec.strides)
    for stride, scale_raw, out in zip(model.spec.strides, raw, exported):
        h, w = height // stride, width // stride
        if head == 'anchor':
            a = len(model.spec.anchors_px[0])
            assert [tuple(t.shape) for t in scale_raw] == [(2, 4 * a, h, w), (2, a, h, w), (2, classes, h, w)]
            assert out.shape == (2, h, w, 5 * a + classes)
        else:
            assert [tuple(t.shape) for t in scale_raw] == [(2, 4 * model.spec.reg_max, h, w), (2, classes, h, w)]
            assert out.shape == (2, h, w, 4 + classes)


def test_spec_carries_anchors_strides_and_size():
    cfg = make_cfg(width=416, height=320)
    spec = build_model(cfg, log=lambda *_: None).spec
    assert spec.kind == 'anchor' and spec.strides == (16, 32) and spec.num_classes == 80
    assert (spec.input_width, spec.input_height) == (416, 320)
    assert [list(map(list, s)) for s in spec.anchors_px] == [list(map(list, s)) for s in cfg.anchors_px]


def test_objectness_prior_when_training_from_scratch():
    model = build_model(make_cfg(width=416, height=320), log=lambda *_: None)
    # one output conv shared by both scales: the mean of log(8 / cells) over the scales
    cells = [(416 / s) * (320 / s) for s in (16, 32)]
    expected = sum(math.log(8 / c) for c in cells) / 2
    assert torch.allclose(model.head.obj_outs[0].bias, torch.full((3,), expected))
    assert torch.equal(model.head.cls_outs[0].bias, torch.zeros(80))


def test_objectness_prior_per_scale_when_widths_differ():
    model = build_model(make_cfg('leyolo-nano', 'anchor', 320, 320), log=lambda *_: None)
    assert not model.head.shared_outputs and len(model.head.obj_outs) == 3   # P3/P4/P5 widths 32/64/96
    for conv, stride in zip(model.head.obj_outs, (8, 16, 32)):
        assert torch.allclose(conv.bias, torch.full((3,), math.log(8 / (320 / stride) ** 2)))


@pytest.mark.parametrize('name', sorted(ARCHITECTURES))
def test_every_architecture_gives_the_strides_it_declares(name):
    """The table's strides (which the config and the anchors use) against the feature maps a forward pass gives."""
    backbone, neck, channels = ARCHITECTURES[name].build_body()
    body = torch.nn.Sequential(backbone, neck if neck is not None else torch.nn.Identity()).eval()
    with torch.no_grad():
        features = body(torch.zeros(1, 3, 128, 96))
    assert tuple(128 // f.shape[-2] for f in features) == ARCHITECTURES[name].strides
    assert tuple(96 // f.shape[-1] for f in features) == ARCHITECTURES[name].strides
    assert tuple(f.shape[1] for f in features) == tuple(channels)


# ---- model/summary.py ------------------------------------------------------------------------------------------

@pytest.mark.parametrize('model_name,head', VARIANTS)
def test_summary_macs_agree_with_torch_flop_counter(model_name, head):
    """Our Conv2d hooks against torch's own operator-level counter (which counts 2 FLOPs per conv MAC)."""
    from torch.utils.flop_counter import FlopCounterMode

    from model.summary import summarize
    width, height = 416, 320
    model = build_model(make_cfg(model_name, head, width, height), log=lambda *_: None).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, height, width))
    summary = summarize(model, width, height)
    assert summary['flops'] == 2 * summary['macs'] == counter.get_total_flops()
    assert summary['macs'] == sum(summary['macs_by_part'].values())


def test_summary_params_of_yolo_fastestv2_equal_the_released_file():
    from model.summary import summarize
    release = torch.load(shared_path(RELEASE), map_location='cpu', weights_only=True)
    # learnable tensors only: BatchNorm running statistics are buffers
    learnable = sum(v.numel() for k, v in release.items() if not k.endswith(('running_mean', 'running_var',
                                                                             'num_batches_tracked')))
    summary = summarize(build_model(make_cfg(), log=lambda *_: None), 352, 352)
    assert summary['params'] == learnable == 243_095
    # the README of Yolo-FastestV2 gives 0.212 GFLOPs at 352x352 (later revised to 0.238 with another counter)
    assert abs(summary['flops'] / 1e9 - 0.212) < 0.002


def leyolo_nano_backbone_neck_macs(side: int) -> int:
    """Conv MACs of LeYOLO-Nano's layers 0-34 at side x side, from the fork's layer table,
    written out by hand: an independent count of what the config implies."""
    def conv(c_in, c_out, k, out_side, groups=1):
        return out_side ** 2 * (c_in // groups) * c_out * k * k

    def block(c_in, hidden, c_out, k, stride, in_side, expand=True):   # MobileNetV3_BLOCK, no SE
        out_side = in_side // stride
        return ((conv(c_in, hidden, 1, in_side) if expand else 0) + conv(hidden, hidden, k, out_side, hidden)
                + conv(hidden, c_out, 1, out_side))

    s2, s4, s8, s16, s32 = (side // d for d in (2, 4, 8, 16, 32))
    backbone = (conv(3, 16, 3, s2) + conv(16, 16, 1, s2) + block(16, 16, 16, 3, 2, s2, expand=False)
                + block(16, 96, 32, 3, 2, s4) + block(32, 96, 32, 3, 1, s8)
                + block(32, 96, 64, 5, 2, s8) + 4 * block(64, 192, 64, 5, 1, s16)
                + block(64, 576, 96, 5, 2, s16) + 3 * block(96, 576, 96, 5, 1, s32)
                + conv(96, 48, 1, s32) + conv(4 * 48, 96, 1, s32))   # SPPF
    top_down = (block(160, 128, 64, 5, 1, s16) + 2 * block(64, 128, 64, 5, 1, s16)
                + block(96, 96, 32, 3, 1, s8, expand=False) + 2 * block(32, 64, 32, 3, 1, s8))
    bottom_up = (conv(32, 64, 3, s16) + block(128, 128, 64, 5, 1, s16) + 2 * block(64, 128, 64, 5, 1, s16)
                 + conv(64, 96, 3, s32) + block(192, 192, 96, 5, 1, s32) + 2 * block(96, 192, 96, 5, 1, s32))
    return backbone + top_down + bottom_up


def test_summary_of_leyolo_nano_body_matches_its_layer_table():
    from model.summary import summarize
    model = build_model(make_cfg('leyolo-nano', 'leyolo', 320, 320), log=lambda *_: None)
    summary = summarize(model, 320, 320)
    body_macs = summary['macs_by_part']['backbone'] + summary['macs_by_part'].get('neck', 0)
    expected = leyolo_nano_backbone_neck_macs(320)
    assert abs(body_macs - expected) / expected < 0.05
    # the fork's whole-model figure: 0.308 conv GMACs at 320
    assert abs(summary['macs'] / 1e9 - 0.308) < 0.001
