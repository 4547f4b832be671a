"""Weight loading: backbone_weights and pre_weights from a real .data file, our checkpoints, clear errors."""
import random

import numpy as np
import pytest
import torch
from conftest import shared_path

from model.build import build_model
from model.weights import WeightsError, load_weights, read_state_dict
from utils.config import load_config

torch.set_num_threads(1)

RELEASE = 'weights/yolo-fastestv2/coco2017-0.241078ap-model.pth'
IMAGENET_BACKBONE = 'weights/yolo-fastestv2/shufflenetv2-0.5x-imagenet-backbone.pth'
REFERENCE = 'reference/yfv2_raw_outputs.pt'


def write_data(tmp_path, classes=80, model='yolo-fastestv2', head='anchor', side=352, **keys):
    """A tiny .data file (empty image lists) so load_config runs for real."""
    (tmp_path / 'train.txt').write_text('')
    (tmp_path / 'val.txt').write_text('')
    (tmp_path / 'x.names').write_text(''.join(f'class{i}\n' for i in range(classes)))
    lines = ['[model-configure]', f'model = {model}', f'head = {head}', f'classes = {classes}', f'width = {side}',
             f'height = {side}',
             '[data-configure]', 'train = train.txt', 'val = val.txt', 'names = x.names']
    lines += [f'{k} = {v}' for k, v in keys.items()]
    path = tmp_path / 'x.data'
    path.write_text('\n'.join(lines) + '\n')
    return load_config(path)


def reference_outputs(model):
    reference = torch.load(shared_path(REFERENCE), map_location='cpu', weights_only=True)
    with torch.no_grad():
        ours = [t for scale in model.eval()(reference['input_img']) for t in scale]
    return max((a - b).abs().max().item() for a, b in zip(ours, reference['outputs_img']))


def test_backbone_weights_fill_every_backbone_tensor(tmp_path):
    path = shared_path(IMAGENET_BACKBONE)
    messages = []
    model = build_model(write_data(tmp_path, backbone_weights=path), log=messages.append)
    file_tensors = torch.load(path, map_location='cpu', weights_only=True)
    backbone = model.backbone.state_dict()
    assert len(backbone) == 330
    for name, tensor in backbone.items():
        assert torch.equal(tensor, file_tensors[name]), name
    assert messages == [f'backbone_weights {path}: filled 330/330 backbone tensors']
    # the rest of the model is untouched: its objectness prior is still there
    assert model.head.obj_outs[0].bias.abs().min() > 1


def test_pre_weights_coco_release_reproduces_reference(tmp_path):
    messages = []
    model = build_model(write_data(tmp_path, pre_weights=shared_path(RELEASE)), log=messages.append)
    assert messages == [f'pre_weights {shared_path(RELEASE)}: loaded 444/444 tensors']
    assert reference_outputs(model) <= 1e-5


def test_pre_weights_into_fewer_classes_skips_only_the_class_outputs(tmp_path):
    messages = []
    model = build_model(write_data(tmp_path, classes=3, pre_weights=shared_path(RELEASE)), log=messages.append)
    assert messages[0].endswith('loaded 442/444 tensors')
    assert 'head.cls_outs.0.weight' in messages[1] and 'head.cls_outs.0.bias' in messages[1]
    release = read_state_dict(shared_path(RELEASE))
    assert torch.equal(model.head.reg_outs[0].weight, release['output_reg_layers.weight'])
    assert torch.equal(model.backbone.stage4[3].branch_main[5].weight,
                       release['backbone.stage4.3.branch_main.5.weight'])


def test_checkpoint_prefers_ema_over_model(tmp_path):
    release = build_model(write_data(tmp_path, pre_weights=shared_path(RELEASE)), log=lambda *_: None)
    fresh = build_model(write_data(tmp_path), log=lambda *_: None)
    checkpoint = tmp_path / 'last.pt'
    torch.save(dict(model=fresh.state_dict(), ema=release.state_dict(), epoch=3), checkpoint)
    model = build_model(write_data(tmp_path), log=lambda *_: None)
    load_weights(model, checkpoint)
    assert reference_outputs(model) <= 1e-5
    # a full training checkpoint also holds the optimizer and the random states (numpy's included) for resuming
    torch.save(dict(model=fresh.state_dict(), ema=release.state_dict(), epoch=3,
                    optimizer=torch.optim.SGD(fresh.parameters(), lr=0.01).state_dict(),
                    rng=dict(numpy=np.random.get_state(), python=random.getstate(), torch=torch.get_rng_state())),
               checkpoint)
    model = build_model(write_data(tmp_path), log=lambda *_: None)
    load_weights(model, checkpoint)
    assert reference_outputs(model) <= 1e-5
    # without 'ema' the 'model' entry is used
    torch.save(dict(model=release.state_dict(), ema=None), checkpoint)
    model = build_model(write_data(tmp_path), log=lambda *_: None)
    load_weights(model, checkpoint)
    assert reference_outputs(model) <= 1e-5


def test_wrong_file_is_a_clear_error_naming_it_and_the_first_mismatches(tmp_path):
    model = build_model(write_data(tmp_path, classes=3), log=lambda *_: None)
    with pytest.raises(WeightsError) as error:
        load_weights(model, shared_path(RELEASE), strict=True)
    message = str(error.value)
    assert message.startswith(f'{shared_path(RELEASE)}: does not fit the model: 0 missing, 0 unexpected, '
                              f'2 with a different shape')
    assert 'head.cls_outs.0.weight: file (80, 72, 1, 1), model (3, 72, 1, 1)' in message

    # a backbone file is not a whole model: nothing lines up, even loosely
    with pytest.raises(WeightsError, match='no tensor matched'):
        load_weights(model, shared_path(IMAGENET_BACKBONE), strict=False)


@pytest.mark.parametrize('content,expected', [
    (None, 'weights file not found'),
    (b'not a torch file', 'cannot read as PyTorch weights'),
    ([1, 2, 3], 'expected a state_dict'),
])
def test_unreadable_files_are_named(tmp_path, content, expected):
    path = tmp_path / 'bad.pth'
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    model = build_model(write_data(tmp_path, classes=3), log=lambda *_: None)
    with pytest.raises(WeightsError, match=expected) as error:
        load_weights(model, path)
    assert str(error.value).startswith(str(path))


# ---- LeYOLO's released Ultralytics checkpoint, through model/leyolo_import.py ---------------------------------

LEYOLO_NANO = 'weights/leyolo/LeYOLONano.pt'
LEYOLO_REFERENCE = 'reference/leyolo_nano_raw_320.pt'


def test_leyolo_nano_release_as_pre_weights_reproduces_its_reference(tmp_path):
    messages = []
    cfg = write_data(tmp_path, model='leyolo-nano', head='leyolo', side=320, pre_weights=shared_path(LEYOLO_NANO))
    model = build_model(cfg, log=messages.append).eval()
    assert messages == [f'pre_weights {shared_path(LEYOLO_NANO)}: loaded 651/651 tensors']
    reference = torch.load(shared_path(LEYOLO_REFERENCE), map_location='cpu', weights_only=True)
    with torch.no_grad():   # the reference input is RGB; our models take BGR (the importer flips the first conv)
        outputs = model(reference['input'].flip(1))
    for (box, cls), name in zip(outputs, ('p3', 'p4', 'p5')):
        # the reordered first conv sums in another order
        assert (torch.cat((box, cls), 1) - reference[name]).abs().max().item() <= 1e-4


def test_leyolo_release_into_an_anchor_head_model_fills_the_body_only(tmp_path):
    messages = []
    cfg = write_data(tmp_path, model='leyolo-nano', head='anchor', side=320, pre_weights=shared_path(LEYOLO_NANO))
    model = build_model(cfg, log=messages.append)
    head_tensors = [k for k in model.state_dict() if k.startswith('head.')]
    body_tensors = len(model.state_dict()) - len(head_tensors)
    assert messages[0] == (f'pre_weights {shared_path(LEYOLO_NANO)}: loaded {body_tensors}/'
                           f'{len(model.state_dict())} tensors')
    assert f'{len(head_tensors)} tensors' in messages[1]
    with pytest.raises(WeightsError, match='the model has no LeYOLO head'):
        load_weights(model, shared_path(LEYOLO_NANO), strict=True)


def test_leyolo_release_into_yolo_fastestv2_is_a_clear_error(tmp_path):
    model = build_model(write_data(tmp_path), log=lambda *_: None)
    with pytest.raises(WeightsError, match='LeYOLO checkpoint') as error:
        load_weights(model, shared_path(LEYOLO_NANO))
    message = str(error.value)
    assert message.startswith(str(shared_path(LEYOLO_NANO))) and '\n' not in message
    assert '`model = leyolo-nano`' in message and '`head = leyolo`' in message   # the .data keys to set


def test_released_yolo_fastestv2_into_leyolo_names_the_data_keys(tmp_path):
    model = build_model(write_data(tmp_path, model='leyolo-nano', head='leyolo', side=320), log=lambda *_: None)
    with pytest.raises(WeightsError) as error:
        load_weights(model, shared_path(RELEASE))
    message = str(error.value)
    assert message.startswith(f'{shared_path(RELEASE)}: does not fit the model') and '\n' not in message
    assert 'a yolo-fastestv2 model with the anchor head and 80 classes: set `model`, `head` and `classes`' in message


def test_leyolo_release_as_backbone_weights_fills_every_backbone_tensor(tmp_path):
    messages = []
    cfg = write_data(tmp_path, model='leyolo-nano', head='anchor', side=320, backbone_weights=shared_path(LEYOLO_NANO))
    model = build_model(cfg, log=messages.append)
    backbone = len(model.backbone.backbone.state_dict())   # LeYOLO's backbone: fork layers 0-14 (to SPPF)
    assert messages == [f'backbone_weights {shared_path(LEYOLO_NANO)}: filled {backbone}/{backbone} backbone '
                        f'tensors, ignored {651 - backbone} other tensors of the file']


def test_a_bad_pre_weights_file_names_the_data_line_and_the_file(tmp_path):
    cfg = write_data(tmp_path, pre_weights=shared_path(IMAGENET_BACKBONE))
    with pytest.raises(WeightsError) as error:
        build_model(cfg, log=lambda *_: None)
    message = str(error.value)
    line = [i for i, text in enumerate((tmp_path / 'x.data').read_text().splitlines(), 1)
            if text.startswith('pre_weights')][0]
    assert message.startswith(f'{tmp_path / "x.data"}:{line}: key "pre_weights": {shared_path(IMAGENET_BACKBONE)}: ')
    assert 'no tensor matched' in message
