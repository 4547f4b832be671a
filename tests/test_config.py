"""The .data parser: both dialects as real users write them, and one clear error per mistake."""
import re
from pathlib import Path

import pytest

from utils.config import ConfigError, load_config

YFV2 = """[name]
model_name=coco

[train-configure]
epochs=300
steps=150,250
batch_size=64
subdivisions=1
learning_rate=0.001

[model-configure]
pre_weights=None
classes=3
width=352
height=352
anchor_num=3
anchors=12.64,19.39, 37.88,51.48, 55.71,138.31, 126.91,78.23, 131.57,214.55, 279.92,258.87

[data-configure]
train=train.txt
val=val.txt
names=obj.names
"""


def write_dataset(folder: Path, data_text: str, names=('cat', 'dog', 'bird'), name='x.data',
                  encoding='utf-8', newline='\n') -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / 'train.txt').write_text('a.jpg\n')
    (folder / 'val.txt').write_text('b.jpg\n')
    (folder / 'obj.names').write_text('\n'.join(names) + '\n')
    path = folder / name
    path.write_bytes(data_text.replace('\n', newline).encode(encoding))
    return path


def error_of(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return str(info.value)


def test_yolo_fastestv2_file_loads_unchanged(tmp_path):
    cfg = load_config(write_dataset(tmp_path, YFV2))
    assert cfg.model_name == 'coco' and cfg.model == 'yolo-fastestv2'
    assert cfg.epochs == 300 and cfg.steps == (150, 250) and cfg.batch_size == 64
    assert cfg.learning_rate == pytest.approx(0.001) and cfg.pre_weights is None
    assert (cfg.classes, cfg.width, cfg.height, cfg.anchor_num) == (3, 352, 352, 3)
    assert cfg.anchors_px == [[(12.64, 19.39), (37.88, 51.48), (55.71, 138.31)],
                              [(126.91, 78.23), (131.57, 214.55), (279.92, 258.87)]]
    # relative paths resolve against the .data file's folder, not the working directory
    assert cfg.train == tmp_path / 'train.txt' and cfg.names == tmp_path / 'obj.names'
    assert cfg.class_names == ('cat', 'dog', 'bird')


def test_how_people_really_write_them(tmp_path):
    """CRLF, a BOM, spaces around '=', inline comments, '' for no weights, no final newline."""
    text = (YFV2.replace('classes=3', 'classes = 3 #20 类')
                .replace('pre_weights=None', "pre_weights=''")
                .replace('batch_size=64', 'batch_size =64   ')
                .replace('anchors=12.64,19.39, 37.88', 'anchors= 12.64,19.39,   37.88')).rstrip('\n')
    cfg = load_config(write_dataset(tmp_path, text, encoding='utf-8-sig', newline='\r\n'))
    assert cfg.classes == 3 and cfg.batch_size == 64 and cfg.pre_weights is None and len(cfg.anchors) == 12


def test_darknet_plain_file_with_its_extra_keys(tmp_path):
    text = 'classes= 3\ntrain = train.txt\nvalid = val.txt\nnames = obj.names\nbackup = backup/\neval=coco\ngpus=0\n'
    cfg = load_config(write_dataset(tmp_path, text))
    assert cfg.val == tmp_path / 'val.txt' and cfg.backup == tmp_path / 'backup'
    # defaults fill the rest; the default anchors have the right count for the default model
    assert cfg.model == 'yolo-fastestv2' and len(cfg.anchors) == 2 * 3 * 2 and cfg.width == 352


def test_overrides_win(tmp_path):
    cfg = load_config(write_dataset(tmp_path, YFV2), epochs=5, batch_size=None)
    assert cfg.epochs == 5 and cfg.batch_size == 64


def test_windows_and_home_paths_are_normalised(tmp_path):
    (tmp_path / 'sub dir').mkdir()
    text = YFV2.replace('train=train.txt', 'train=sub dir\\..\\train.txt')
    assert load_config(write_dataset(tmp_path, text)).train.resolve() == (tmp_path / 'train.txt').resolve()


@pytest.mark.parametrize('edit, pattern', [
    (lambda t: t.replace('val=val.txt\n', ''), r'required key "val" is missing'),
    (lambda t: t.replace('epochs=300', 'epochs=many'), r'x\.data:5: key "epochs": expected int, got "many"'),
    (lambda t: t.replace('val=val.txt', 'vaild=val.txt'), r'x\.data:\d+: unknown key "vaild" \(did you mean "val"\?\)'),
    (lambda t: t.replace('train=train.txt', 'Train=train.txt'), r'unknown key "Train" \(did you mean "train"\?\)'),
    (lambda t: t.replace('classes=3', 'class=3'), r'unknown key "class" \(did you mean "classes"\?\)'),
    (lambda t: t.replace(', 279.92,258.87', ''), r'x\.data:17: key "anchors": yolo-fastestv2 has 2 scales x '
                                                 r'anchor_num 3 x 2 = 12 numbers, got 10'),
    (lambda t: t.replace('train=train.txt', 'train=missing.txt'), r'key "train": list file or image folder not found'),
    (lambda t: t.replace('names=obj.names', 'names=none.names'), r'key "names": .*names file not found'),
    (lambda t: t.replace('classes=3', 'classes=4'), r'key "classes": classes = 4 but .*obj\.names lists 3 names'),
    (lambda t: t.replace('names=obj.names', 'names ='), r'key "names" has no value'),
    (lambda t: t + 'epochs=200\n', r'key "epochs" given twice with different values \(first on line 5'),
    (lambda t: t.replace('width=352', 'width=350'), r'key "width": must be a multiple of 32'),
    (lambda t: t.replace('[name]', '[name]\nmodel=yolo-fastest'), r'unknown model "yolo-fastest" \(did you mean'),
    (lambda t: 'this is not a data file\n', r'x\.data:1: expected "key = value"'),
    (lambda t: t + 'tal_topk=10\n', r'x\.data:23: key "tal_topk": only the task-aligned assigner reads it '
                                    r'\(head = leyolo, or assigner = tal\), and head = anchor, assigner = yolov5'),
    (lambda t: t + 'leyolo_dfl_gain=1\n', r'x\.data:23: key "leyolo_dfl_gain": only the leyolo head\'s loss reads '
                                          r'it, and head = anchor'),
    (lambda t: t + 'distill_object_gain=-1\n', r'x\.data:23: key "distill_object_gain": must be 0 or more, got -1'),
    (lambda t: t + 'leyolo_box_gian=7\n', r'unknown key "leyolo_box_gian" \(did you mean "leyolo_box_gain"\?\)'),
    # a known key (or alias) with something appended means that key, however far the spelling
    (lambda t: t.replace('val=val.txt', 'val_something=val.txt'), r'unknown key "val_something" \(did you mean "val"'),
    (lambda t: t.replace('train=train.txt', 'train-list=train.txt'), r'"train-list" \(did you mean "train"\?\)'),
    (lambda t: t.replace('names=obj.names', 'names_file=obj.names'), r'"names_file" \(did you mean "names"\?\)'),
    (lambda t: t.replace('val=val.txt', 'valid_list=val.txt'), r'"valid_list" \(did you mean "val"\?\)'),
    (lambda t: t.replace('epochs=300', 'batch-size=64'), r'"batch-size" \(did you mean "batch_size"\?\)'),
    (lambda t: t.replace('epochs=300', 'model_name_suffix=x'), r'"model_name_suffix" \(did you mean "model_name"'),
])
def test_each_mistake_gets_one_clear_error(tmp_path, edit, pattern):
    message = error_of(write_dataset(tmp_path, edit(YFV2)))
    assert str(tmp_path / 'x.data') in message
    assert re.search(pattern, message), message


def test_splits_false_needs_no_dataset(tmp_path):
    """To run a model only (test.py): the train and val lists need not exist; without splits=False they must."""
    path = write_dataset(tmp_path, YFV2.replace('train=train.txt', 'train=gone.txt'))
    assert load_config(path, splits=False).train == tmp_path / 'gone.txt'
    assert re.search(r'x\.data:20: key "train": list file or image folder not found', error_of(path))


def test_missing_file_and_binary_file(tmp_path):
    assert 'not found' in error_of(tmp_path / 'nope.data')
    (tmp_path / 'bin.data').write_bytes(b'\x89PNG\r\n\x1a\n\xff\xfe\x00')
    assert 'not a text file' in error_of(tmp_path / 'bin.data')


LEYOLO = """model = leyolo-nano
head = leyolo
classes = 3
width = 320
height = 320
train = train.txt
val = val.txt
names = obj.names
"""


def test_leyolo_loss_keys_are_typed_and_defaulted(tmp_path):
    cfg = load_config(write_dataset(tmp_path, LEYOLO))
    defaults = (cfg.leyolo_box_gain, cfg.leyolo_cls_gain, cfg.leyolo_dfl_gain, cfg.leyolo_max_grad_norm,
                cfg.tal_topk, cfg.tal_alpha, cfg.tal_beta)
    # YOLOv8's gains and assigner, which trained the released LeYOLO weights; our clipping norm (utils/loss/leyolo.py)
    assert defaults == (7.5, 0.5, 1.5, 10.0, 10, 0.5, 6.0)
    cfg = load_config(write_dataset(tmp_path, LEYOLO + 'leyolo_cls_gain = 1\ntal_topk = 13\ntal_beta = 4.5\n'
                                                      'leyolo_max_grad_norm = 0\n'))
    assert (cfg.leyolo_cls_gain, cfg.tal_topk, cfg.tal_beta, cfg.leyolo_max_grad_norm) == (1.0, 13, 4.5, 0.0)
    assert isinstance(cfg.tal_topk, int)


@pytest.mark.parametrize('line, pattern', [
    ('tal_topk = 0', r'x\.data:9: key "tal_topk": must be at least 1, got 0'),
    ('tal_topk = 2.5', r'x\.data:9: key "tal_topk": expected int, got "2.5"'),
    ('tal_alpha = -1', r'key "tal_alpha": must be 0 or more, got -1.0'),
    ('leyolo_dfl_gain = x', r'key "leyolo_dfl_gain": expected float, got "x"'),
    ('leyolo_box_gain = 0\nleyolo_cls_gain = 0\nleyolo_dfl_gain = 0', r'are all 0: nothing to learn'),
])
def test_leyolo_loss_key_mistakes(tmp_path, line, pattern):
    message = error_of(write_dataset(tmp_path, LEYOLO + line + '\n'))
    assert re.search(pattern, message), message
