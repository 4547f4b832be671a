"""Export: PyTorch -> ONNX -> NCNN, checked backend by backend against PyTorch on a real image, and against the
NCNN model Yolo-FastestV2's authors shipped (an independent conversion of the same released weights)."""
import json
import shutil
import subprocess
import sys

import cv2
import ncnn
import numpy as np
import pytest
import torch
from conftest import REPO, shared_path

from model.build import build_model
from model.weights import load_weights
from utils.config import load_config
from utils.errors import ConfigError, NcnnModelError
from utils.export import export_all
from utils.export.check import TOLERANCES, check_export
from utils.export.ncnn_convert import add_ncnn_layer_hints
from utils.ncnn_param import add_stem_hint, clear_hint, io_blobs, param_text, parse_param, read_param
from utils.postprocess import postprocess
from utils.preprocess import resize_image, to_input_tensor
from utils.runtimes import backend_for, load_runtime
from utils.runtimes.ncnn_runtime import NcnnRuntime, param_text_without_hints
from utils.runtimes.onnx_runtime import OnnxRuntime, OpenCVRuntime
from utils.runtimes.torch_runtime import TorchRuntime

RELEASED = 'weights/yolo-fastestv2/coco2017-0.241078ap-model.pth'
SHIPPED_PARAM = 'weights/yolo-fastestv2/yolo-fastestv2-opt.param'
SHIPPED_IO = ('input.1', ['794', '796'])   # read from the shipped .param: its Input layer and last two Permutes


def write_data_file(folder, model='yolo-fastestv2', classes=80, width=352, height=352, extra=''):
    """A .data file for export: the dataset paths only need to exist, export reads size, classes and anchors."""
    images = shared_path('datasets/coco128/images')
    (folder / 'classes.names').write_text(''.join(f'class{i}\n' for i in range(classes)))
    path = folder / f'{model}_{width}x{height}.data'
    path.write_text(f'[model-configure]\nmodel={model}\nclasses={classes}\nwidth={width}\nheight={height}\n{extra}'
                    f'[data-configure]\ntrain={images}/train2017\nval={images}/val2017\nnames=classes.names\n')
    return path


def bus_batch(width, height, letterbox=False):
    image = cv2.imread(str(shared_path('images/bus.jpg')))
    return to_input_tensor([resize_image(image, width, height, letterbox)[0]])


@pytest.fixture(scope='module')
def released_export(tmp_path_factory):
    """The released Yolo-FastestV2 weights exported by pytorch2onnx.py itself (so the script is tested too)."""
    weights = shared_path(RELEASED)
    folder = tmp_path_factory.mktemp('export')
    data = write_data_file(folder)
    onnx_path = folder / 'yfv2.onnx'
    result = subprocess.run([sys.executable, str(REPO / 'pytorch2onnx.py'), '--data', str(data), '--weights',
                             str(weights), '--output', str(onnx_path)], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    cfg = load_config(data)
    model = build_model(cfg, log=lambda *_: None)
    load_weights(model, weights)
    torch.set_num_threads(1)
    return dict(folder=folder, onnx=onnx_path, param=folder / 'yfv2.param', cfg=cfg, model=model.eval(),
                log=result.stdout)


def test_script_writes_four_files_and_a_passing_report(released_export):
    # pnnx's own extras (x.pnnx.*, x_ncnn.py, ...) must not be left beside the model
    assert sorted(p.name for p in released_export['folder'].iterdir() if p.name.startswith('yfv2')) == \
        ['yfv2.bin', 'yfv2.json', 'yfv2.onnx', 'yfv2.param']
    log = released_export['log']
    for backend in ('onnxruntime', 'opencv', 'ncnn'):
        assert f'{backend:12s} detections: identical' in log
    assert 'export check: ok' in log


def test_every_backend_matches_pytorch_on_a_real_image(released_export):
    model, cfg = released_export['model'], released_export['cfg']
    batch = bus_batch(cfg.width, cfg.height)
    reference = TorchRuntime(model)(batch)
    assert [r.shape for r in reference] == [(1, 22, 22, 95), (1, 11, 11, 95)]   # NHWC, 5*3 + 80 channels
    outputs = {'onnxruntime': OnnxRuntime(released_export['onnx'], model.spec)(batch),
               'opencv': OpenCVRuntime(released_export['onnx'], model.spec)(batch),
               'ncnn': NcnnRuntime(released_export['param'])(batch)}
    reference_dets = postprocess(reference, model.spec, 0.3, 0.4)[0]
    assert len(reference_dets) >= 2   # the bus and people: the detection comparison below is not vacuous
    for backend, outs in outputs.items():
        for ref, out in zip(reference, outs):
            assert out.shape == ref.shape, backend
            assert np.abs(out - ref).max() <= TOLERANCES[backend], backend
        dets = postprocess(outs, model.spec, 0.3, 0.4)[0]
        assert np.array_equal(dets[:, 5], reference_dets[:, 5]), backend
        np.testing.assert_allclose(dets[:, :5], reference_dets[:, :5], atol=1e-2, err_msg=backend)


def test_sidecar_names_the_blobs_and_describes_the_input(released_export):
    sidecar = json.loads(released_export['param'].with_suffix('.json').read_text())
    cfg = released_export['cfg']
    assert (sidecar['input_width'], sidecar['input_height'], sidecar['channel_order']) == (352, 352, 'bgr')
    assert sidecar['scale'] == pytest.approx(1 / 255) and sidecar['letterbox'] is False
    assert sidecar['head'] == 'anchor' and sidecar['strides'] == [16, 32] and sidecar['num_classes'] == 80
    assert sidecar['anchors_px'] == [[list(wh) for wh in scale] for scale in cfg.anchors_px]
    assert sidecar['class_names'] == list(cfg.class_names)
    net = ncnn.Net()
    net.load_param(str(released_export['param']))
    assert net.input_names() == [sidecar['input_blob']] and net.output_names() == sidecar['output_blobs']


def test_ncnn_runtime_runs_a_batch_image_by_image(released_export):
    cfg = released_export['cfg']
    one = bus_batch(cfg.width, cfg.height)
    two = np.concatenate((one, one[:, :, ::-1].copy()))   # second image: flipped upside down
    runtime = NcnnRuntime(released_export['param'], num_threads=2)
    together = runtime(two)
    for i in range(2):
        alone = runtime(two[i:i + 1])
        for a, b in zip(together, alone):
            np.testing.assert_array_equal(a[i:i + 1], b)
    assert not np.allclose(together[0][0], together[0][1])


def test_ncnn_matches_the_shipped_reference_model(released_export):
    """The authors' own NCNN conversion (fp16 weights) of the same released weights, on the same input."""
    param = shared_path(SHIPPED_PARAM)
    cfg = released_export['cfg']
    batch = bus_batch(cfg.width, cfg.height)
    shipped = NcnnRuntime(param, blobs=SHIPPED_IO)(batch)
    ours = NcnnRuntime(released_export['param'])(batch)
    for a, b in zip(ours, shipped):
        assert a.shape == b.shape   # the shipped model has the same NHWC layout
        assert np.abs(a - b).max() <= 0.03
    spec = released_export['model'].spec
    ours_dets, shipped_dets = (postprocess(o, spec, 0.3, 0.4)[0] for o in (ours, shipped))
    assert np.array_equal(ours_dets[:, 5], shipped_dets[:, 5])
    np.testing.assert_allclose(ours_dets[:, :4], shipped_dets[:, :4], atol=2.0)


def hinted_layers(param_path):
    """Lines of a .param whose layer carries NCNN's per-layer feature mask (key 31), split into fields."""
    return [line.split() for line in param_path.read_text().splitlines() if ' 31=' in line]


def test_stem_hint_changes_the_kernel_not_the_outputs(released_export, tmp_path):
    """The layer hint (no im2col + GEMM for the stem, utils/ncnn_param.py) sits on the stem alone and the NCNN
    outputs with and without it equal each other and PyTorch's."""
    param = released_export['param']
    hinted = hinted_layers(param)
    assert [(fields[0], fields[4], fields[-1]) for fields in hinted] == [('Convolution', 'in0', '31=32')]
    plain = tmp_path / 'plain.param'
    plain.write_text(param.read_text().replace(' 31=32', ''))
    for suffix in ('.bin', '.json'):
        shutil.copyfile(param.with_suffix(suffix), plain.with_suffix(suffix))
    cfg = released_export['cfg']
    batch = bus_batch(cfg.width, cfg.height)
    reference = TorchRuntime(released_export['model'])(batch)
    with_hint, without_hint = NcnnRuntime(param)(batch), NcnnRuntime(plain)(batch)
    two_threads = NcnnRuntime(param, num_threads=2)(batch)   # loads the .param with the hint cleared
    for ref, a, b, c in zip(reference, with_hint, without_hint, two_threads):
        assert np.abs(a - b).max() <= 1e-6 and np.abs(a - c).max() <= 1e-6
        assert np.abs(a - ref).max() <= TOLERANCES['ncnn']
    assert param_text_without_hints(param) == plain.read_text()
    # the rewrite gives back the exported file, and a second pass changes nothing
    assert add_ncnn_layer_hints(plain) == [hinted[0][1]] and plain.read_text() == param.read_text()
    assert add_ncnn_layer_hints(plain) == [hinted[0][1]] and plain.read_text() == param.read_text()


def test_stem_hint_keeps_a_feature_mask_already_there(released_export, tmp_path):
    text = released_export['param'].read_text().replace(' 31=32', ' 31=1')   # 1: fp16 arithmetic off
    edited = tmp_path / 'edited.param'
    edited.write_text(text)
    add_ncnn_layer_hints(edited)
    assert [fields[-1] for fields in hinted_layers(edited)] == ['31=33']


def test_param_reader_agrees_with_ncnn_and_writes_back_the_same_bytes(released_export):
    """utils/ncnn_param.py on our pnnx export and on the authors' shipped model: the layers, blobs and model
    inputs/outputs it reads are the ones NCNN's own parser reads, and writing them back gives the file unchanged."""
    for path in (released_export['param'], shared_path(SHIPPED_PARAM)):
        layers, blob_count = read_param(path)
        assert param_text(layers, blob_count) == path.read_text()
        net = ncnn.Net()
        assert net.load_param(str(path)) == 0
        blob_names = [blob.name for blob in net.blobs()]
        assert blob_count == len(blob_names)
        assert [(layer.type, layer.name, layer.bottoms, layer.tops) for layer in layers] == \
            [(layer.type, layer.name, [blob_names[i] for i in layer.bottoms], [blob_names[i] for i in layer.tops])
             for layer in net.layers()]
        assert io_blobs(layers) == (net.input_names()[0], net.output_names())
    assert io_blobs(read_param(shared_path(SHIPPED_PARAM))[0]) == SHIPPED_IO


def test_param_reader_errors_name_the_file_and_line(tmp_path):
    bad = tmp_path / 'bad.param'
    cases = [('7767518\n1 1\nInput in0 0 1 in0\n', r'bad.param:1: not an NCNN text .param'),
             ('7767517\n2 2\nInput in0 0 1 in0\n', r'bad.param:2: header says 2 layers, file has 1'),
             ('7767517\n2 2\nInput in0 0 1 in0\nReLU relu 1 1 in0 out0 0\n', r'bad.param:4: cannot parse layer'),
             ('7767517\n2 2\nInput in0 0 1 in0\nReLU relu 1 2 in0 out0\n', r'bad.param:4: layer "relu" lists fewer')]
    for text, message in cases:
        bad.write_text(text)
        with pytest.raises(NcnnModelError, match=message):
            read_param(bad)
    bad.write_text('7767517\n1 1\nReLU relu 0 1 x\n')
    with pytest.raises(NcnnModelError, match='bad.param: expected exactly one Input layer, found 0'):
        io_blobs(read_param(bad)[0], bad)


def test_stem_hint_goes_to_image_reading_convolutions_only():
    """Which layers get the hint and what their masks become, worked out by hand: input channels are weight
    count / (outputs * kernel area); only a k x k (k > 1) convolution reading at most 4 channels is a stem."""
    text = ('7767517\n5 5\nInput in0 0 1 in0\n'
            'Convolution stem 1 1 in0 a 0=16 1=3 3=2 5=1 6=432 31=1\n'           # 3 channels, 3x3, mask bit 0
            'Convolution wide 1 1 a b 0=16 1=3 5=1 6=2304\n'                      # 16 channels: not a stem
            'Convolution pointwise 1 1 b c 0=16 1=1 5=1 6=48\n'                   # 1x1
            'Convolution rect 1 1 c out0 0=8 1=1 11=5 5=1 6=40\n')                # 1 channel, 1x5 kernel
    layers, _ = parse_param(text)
    assert add_stem_hint(layers) == ['stem', 'rect']
    assert add_stem_hint(layers) == ['stem', 'rect']   # a second pass changes nothing more
    masks = {layer.name: layer.params.get(31) for layer in layers}
    assert masks == {'in0': None, 'stem': '33', 'wide': None, 'pointwise': None, 'rect': '32'}
    assert list(layers[1].params) == [0, 1, 3, 5, 6, 31]   # the mask stays where it was written
    for layer in layers:
        clear_hint(layer)
    assert {layer.name: layer.params.get(31) for layer in layers} == {**masks, 'stem': '1', 'rect': None}


def test_backend_follows_the_weights_suffix():
    assert [backend_for(name) for name in ('m.param', 'out/m.onnx', 'best.pth', 'LeYOLONano.pt', 'weights')] == \
        ['ncnn', 'onnx', 'torch', 'torch', 'torch']


@pytest.mark.parametrize('backend, name', [('torch', 'm.param'), ('torch', 'm.onnx'), ('ncnn', 'm.onnx'),
                                           ('onnx', 'm.param'), ('opencv', 'best.pth')])
def test_load_runtime_refuses_the_file_of_another_backend(tmp_path, backend, name):
    """One line naming the file and the backend, before any library or the config is touched."""
    weights = tmp_path / name
    weights.write_bytes(b'not read')
    with pytest.raises(ConfigError, match=rf'{name}: the {backend} backend reads .* the {backend_for(name)} '
                                          rf'backend reads this one$'):
        load_runtime(backend, None, weights)
    with pytest.raises(FileNotFoundError, match='missing.pth: weights file not found'):
        load_runtime('torch', None, tmp_path / 'missing.pth')


def test_non_square_input_and_other_classes_export(tmp_path):
    """A custom model (3 classes, 320x192, untrained head) exports with the right shapes on every backend."""
    cfg = load_config(write_data_file(tmp_path, classes=3, width=320, height=192))
    torch.manual_seed(0)
    model = build_model(cfg, log=lambda *_: None).train()
    paths = export_all(model, cfg, tmp_path / 'custom.onnx')
    report = check_export(model, paths, bus_batch(320, 192))
    assert report.ok, report.text()
    assert model.training and not model.export   # exporting mid-training leaves the model as it was
    assert [d.shape for d in report.diffs if d.backend == 'ncnn'] == [(1, 12, 20, 18), (1, 6, 10, 18)]


def test_a_channels_last_model_exports_the_same_graph(tmp_path):
    """The trainer's model lives channels-last, where ShuffleNetV2 splits channels through strided views; an export
    of it (say, of the EMA mid-training) must still write the reshape-permute channel shuffle NCNN knows."""
    import onnx

    from utils.export.onnx_export import export_onnx
    cfg = load_config(write_data_file(tmp_path, classes=3, width=128, height=96))
    model = build_model(cfg, log=lambda *_: None)
    op_types = []
    for memory_format in (torch.contiguous_format, torch.channels_last):
        path = export_onnx(model.to(memory_format=memory_format), tmp_path / 'm.onnx', 128, 96, simplify=False)
        op_types.append([node.op_type for node in onnx.load(str(path)).graph.node])
    assert op_types[0] == op_types[1] and 'Reshape' in op_types[0]


def test_check_fails_when_the_export_is_not_the_model(released_export, tmp_path):
    """The check must be able to fail: compare the released export with a model whose weights moved slightly."""
    cfg = released_export['cfg']
    model = build_model(cfg, log=lambda *_: None)
    load_weights(model, shared_path(RELEASED))
    with torch.no_grad():
        model.head.cls_outs[0].bias[0] += 0.05
    paths = {'onnx': released_export['onnx'], 'param': released_export['param']}
    report = check_export(model, paths, bus_batch(cfg.width, cfg.height))
    assert not report.ok
    assert any(p.startswith('ncnn out0') for p in report.problems)
    assert 'export check: FAILED' in report.text()


LEYOLO_VARIANTS = [  # (model, head, released weights or None); 320x320 keeps the test fast for every size
    ('leyolo-nano', 'leyolo', 'weights/leyolo/LeYOLONano.pt'),
    ('leyolo-small', 'leyolo', None),
    ('leyolo-medium', 'leyolo', None),
    ('leyolo-large', 'leyolo', None),
    ('leyolo-nano', 'anchor', None),   # LeYOLO's neck feeding Yolo-FastestV2's anchor head
]


@pytest.mark.parametrize('model_name, head, weights', LEYOLO_VARIANTS,
                         ids=[f'{m}-{h}' for m, h, _ in LEYOLO_VARIANTS])
def test_leyolo_variants_export_to_every_backend(tmp_path, model_name, head, weights):
    extra = f'head={head}\n' + (f'pre_weights={shared_path(weights)}\n' if weights else '')
    cfg = load_config(write_data_file(tmp_path, model=model_name, width=320, height=320, extra=extra))
    torch.manual_seed(0)
    model = build_model(cfg, log=lambda *_: None)
    paths = export_all(model, cfg, tmp_path / 'model.onnx')
    report = check_export(model, paths, bus_batch(320, 320))
    assert report.ok, report.text()
    channels = 4 + 80 if head == 'leyolo' else 5 * 3 + 80
    # the layer hint went to the stem, the convolution reading the image, and nowhere else
    assert [(fields[0], fields[4]) for fields in hinted_layers(paths['param'])] == [('Convolution', 'in0')]
    assert [d.shape for d in report.diffs if d.backend == 'ncnn'] == \
        [(1, 40, 40, channels), (1, 20, 20, channels), (1, 10, 10, channels)]
    if weights:   # trained: the detection comparison in the report covered real objects
        assert report.num_reference_detections >= 3


def test_ncnn_runtime_errors_name_what_is_wrong(released_export, tmp_path):
    param = released_export['param']
    lonely = tmp_path / 'lonely.param'   # a model without its sidecar
    lonely.write_text(param.read_text())
    (tmp_path / 'lonely.bin').write_bytes(param.with_suffix('.bin').read_bytes())
    with pytest.raises(FileNotFoundError, match='lonely.json: sidecar JSON not found'):
        NcnnRuntime(lonely)
    sidecar = json.loads(param.with_suffix('.json').read_text())
    sidecar['output_blobs'] = ['out0', 'logits']
    (tmp_path / 'lonely.json').write_text(json.dumps(sidecar))
    with pytest.raises(ValueError, match=r"lonely.json: blobs \['logits'\] are not in"):
        NcnnRuntime(lonely)
    with pytest.raises(ValueError, match='NCHW batch with 3 channels'):
        NcnnRuntime(param)(np.zeros((352, 352, 3), np.float32))


def test_script_rejects_weights_of_another_model(released_export):
    result = subprocess.run([sys.executable, str(REPO / 'pytorch2onnx.py'), '--data',
                             str(released_export['cfg'].data_path), '--weights',
                             str(shared_path('weights/yolo-fastestv2/shufflenetv2-0.5x-imagenet-backbone.pth')),
                             '--output', str(released_export['folder'] / 'wrong.onnx')],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode != 0
    assert result.stderr.startswith('error: ') and 'shufflenetv2-0.5x-imagenet-backbone.pth' in result.stderr
    assert not (released_export['folder'] / 'wrong.onnx').exists()
