"""Every script as a user runs it (a subprocess): input errors, wherever they are raised, print one line
`error: <file>: <what>` and exit 1 with no traceback; nonsense options are refused by argparse (exit 2)."""
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest
from conftest import REPO, shared_path

PROGRESS_BAR = re.compile(r'\d+%\|')   # tqdm's lines on stderr (the training epoch that was under way)


def run(script, *args):
    result = subprocess.run([sys.executable, str(REPO / script), *map(str, args)], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    return result.returncode, result.stdout, result.stderr


def assert_one_error_line(code, err, *names):
    lines = [line for line in err.strip().splitlines() if not PROGRESS_BAR.search(line)]
    assert code == 1, err
    assert len(lines) == 1 and lines[0].startswith('error: '), err   # no traceback, no warnings advice
    for name in names:
        assert str(name) in lines[0], err


@pytest.fixture
def tiny_data(tmp_path):
    """A .data file whose val split is one real-looking image and whose train list holds no image paths."""
    image = tmp_path / 'images' / 'a.jpg'
    image.parent.mkdir()
    cv2.imwrite(str(image), np.full((64, 64, 3), 128, np.uint8))
    (tmp_path / 'train.txt').write_text('\n\n')
    (tmp_path / 'val.txt').write_text(f'{image}\n')
    (tmp_path / 'x.names').write_text('thing\n')
    data = tmp_path / 'x.data'
    data.write_text('classes = 1\ntrain = train.txt\nval = val.txt\nnames = x.names\nworkers = 0\nepochs = 1\n'
                    'batch_size = 2\n')
    return data


def test_train_with_an_empty_list_file(tiny_data):
    code, _, err = run('train.py', '--data', tiny_data, '--device', 'cpu', '--out', tiny_data.parent / 'out')
    assert_one_error_line(code, err, tiny_data.parent / 'train.txt')


def test_train_on_cuda_without_cuda(tiny_data):
    import torch
    if torch.cuda.is_available():
        pytest.skip('this machine has CUDA')
    code, _, err = run('train.py', '--data', tiny_data, '--device', 'cuda', '--out', tiny_data.parent / 'out')
    assert_one_error_line(code, err, '--device cuda')


def test_an_image_that_fails_to_decode_in_a_data_worker(tiny_data):
    """JPEG markers around garbage pass the dataset check; the worker that decodes it raises, and torch wraps the
    error in the worker's traceback: the user still gets one line naming the image."""
    bad = tiny_data.parent / 'images' / 'garbage.jpg'
    bad.write_bytes(b'\xff\xd8\xff\xda\x00\x02' + bytes(range(256)).replace(b'\xff', b'') * 8 + b'\xff\xd9')
    (tiny_data.parent / 'train.txt').write_text(f'{bad}\n{bad}\n')
    data = tiny_data.parent / 'worker.data'
    data.write_text(tiny_data.read_text().replace('workers = 0', 'workers = 1') + 'cache = none\n')
    code, _, err = run('train.py', '--data', data, '--device', 'cpu', '--out', tiny_data.parent / 'out')
    assert_one_error_line(code, err, bad)


def test_resume_from_a_checkpoint_that_does_not_name_its_data_file(tiny_data):
    import torch
    checkpoint = tiny_data.parent / 'foreign.pt'
    torch.save({'model': {}}, checkpoint)
    code, _, err = run('train.py', '--resume', checkpoint)
    assert_one_error_line(code, err, checkpoint, '--data')


def test_a_corrupt_onnx_file(tiny_data):
    onnx = tiny_data.parent / 'model.onnx'
    onnx.write_bytes(b'not a protobuf' * 10)
    for backend in ('onnx', 'opencv'):
        code, _, err = run('evaluation.py', '--data', tiny_data, '--weights', onnx, '--backend', backend)
        assert_one_error_line(code, err, onnx)


def test_an_output_folder_that_cannot_be_made(tiny_data):
    blocker = tiny_data.parent / 'a_file'
    blocker.write_text('')
    code, _, err = run('test.py', '--data', tiny_data, '--weights', shared_path(
        'weights/yolo-fastestv2/coco2017-0.241078ap-model.pth'), '--img', tiny_data.parent / 'images',
        '--out', blocker / 'sub')
    assert_one_error_line(code, err, '--out')


def test_resume_from_a_file_that_is_not_a_checkpoint(tiny_data):
    fake = tiny_data.parent / 'last.pt'
    fake.write_bytes(b'not a checkpoint')
    code, _, err = run('train.py', '--resume', fake)
    assert_one_error_line(code, err, fake)


@pytest.mark.parametrize('script, args', [
    ('train.py', ['--batch-size', '0']),
    ('train.py', ['--epochs', '-1']),
    ('evaluation.py', ['--weights', 'w.pth', '--batch-size', '0']),
    ('test.py', ['--weights', 'w.pth', '--img', 'x.jpg', '--max-det', 'many']),
    ('genanchors.py', ['--restarts', '0']),
    ('pytorch2onnx.py', ['--weights', 'w.pth', '--conf-thresh', '1.5']),   # the C++ app refuses it in the sidecar
    ('test.py', ['--weights', 'w.pth', '--img', 'x.jpg', '--iou', '-0.1']),
])
def test_nonsense_numbers_are_refused_before_anything_runs(tiny_data, script, args):
    code, _, err = run(script, '--data', tiny_data, *args)
    assert code == 2 and 'error: argument' in err and args[-2] in err, err


def test_evaluation_with_an_empty_val_list(tiny_data):
    empty = tiny_data.parent / 'empty.txt'
    empty.write_text('')
    data = tiny_data.parent / 'empty.data'
    data.write_text(tiny_data.read_text().replace('val = val.txt', 'val = empty.txt'))
    code, _, err = run('evaluation.py', '--data', data, '--weights', shared_path(
        'weights/yolo-fastestv2/coco2017-0.241078ap-model.pth'))
    assert_one_error_line(code, err)


def test_genanchors_with_a_missing_list(tmp_path):
    code, _, err = run('genanchors.py', '--traintxt', tmp_path / 'missing.txt')
    assert_one_error_line(code, err, tmp_path / 'missing.txt')


def test_an_ncnn_param_without_backend_is_run_by_ncnn(tiny_data):
    """The file type names the backend: no torch.load attempt (and none of its weights_only advice)."""
    param = tiny_data.parent / 'model.param'
    param.write_text('7767517\n1 1\nInput in0 0 1 in0\n')
    code, out, err = run('test.py', '--data', tiny_data, '--weights', param, '--img', tiny_data.parent / 'images')
    assert 'backend ncnn (from the file type' in out
    assert_one_error_line(code, err, 'model.bin')
    assert 'weights_only' not in err


def test_an_ncnn_bin_given_instead_of_its_param(tiny_data):
    weights = tiny_data.parent / 'model.bin'
    weights.write_bytes(b'\0' * 16)
    code, _, err = run('test.py', '--data', tiny_data, '--weights', weights, '--backend', 'ncnn',
                       '--img', tiny_data.parent / 'images')
    assert_one_error_line(code, err, weights, 'give the .param beside it (model.param)')


def test_leyolo_weights_with_a_yolo_fastestv2_data_file_name_the_keys_to_set(tiny_data):
    weights = shared_path('weights/leyolo/LeYOLONano.pt')
    code, _, err = run('pytorch2onnx.py', '--data', tiny_data, '--weights', weights,
                       '--output', tiny_data.parent / 'm.onnx')
    assert_one_error_line(code, err, weights, '`model = leyolo-nano`', '`head = leyolo`')
