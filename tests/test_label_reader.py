"""The vectorised label reader: the same boxes and the same problems as the per-line checker, file by file, on real
coco128 labels, on hand-made bad files and on numbers of every form; and the numbers of numpy's own text reader."""
import numpy as np
import pytest
from conftest import shared_path

from utils.data.dataset import parse_labels
from utils.data.label_reader import parse_label_texts, read_label_files

# Each a whole label file; between good files, so a problem must land on its own file and nowhere else.
BAD_AND_ODD = [
    b'0 0.5 0.5 0.2\n',                                   # 4 fields
    b'0 0.5 0.5 0.2 0.2\n\n0 0.5 0.5 0.2 0.2 7\n',         # 6 fields on line 3
    b'0 0.5 0.5 0.2 0.2\n1 0.5 x 0.2 0.2\n',              # not a number
    b'0 1e-1 0.5 2E-1 0.2\n',                             # exponents: numbers, so the file is fine
    b'0 nan 0.5 0.2 0.2\n',
    b'1.5 0.5 0.5 0.2 0.2\n',                             # class not an integer
    b'80 0.5 0.5 0.2 0.2\n',                              # class out of range for 80 classes
    b'-1 0.5 0.5 0.2 0.2\n',
    b'0 100 200 30 40\n0 300 200 30 40\n',                # pixels: every box outside the image
    b'0 0.5 0.5 0 0.2\n',                                 # zero width
    b'0 0.5 0.5 0.2 1.2\n',
    b'0 1.5 0.5 0.2 0.2\n',                               # centre outside
    b'0 1.0005 -0.0005 1.0004 0.2\n',                     # converters' overshoot: clipped, kept
    b'\xef\xbb\xbf0 0.5 0.5 0.2 0.2\r\n1 0.25 0.75 0.125 0.5\r\n',   # BOM and CRLF
    b'0 0.5 0.5 0.2 0.2 caf\xe9\n',                       # Latin-1: not UTF-8
    b'',
    b' \n\t\n',
    b'\t0\t0.5  0.5 0.2 0.2  \r\n\n3 -0.0 .5 +0.25 1.\n',  # tabs, runs of spaces, a negative zero
    b'0 0.4794921875000 0.12345678901234 0.2 0.2\n',      # 15 and 16 characters
    b'0 0.12345678901234567890 0.5 0.2 0.2\n',            # 22 characters: float() reads it, so must we
    b'0 0.5 0.5 - 0.2\n', b'0 0.5 0.5 1.2.3 0.2\n', b'0 0.5 0.5 1-2 0.2\n', b'0 0.5 0.5 +-1 0.2\n',
    b'0 . 0.5 0.2 0.2\n',
    b'0 0.5 0.5 0.2 0.2\x0c\n',                           # form feed: a line break to str.splitlines()
    b'0 0.5 0.5 0.2 0.2 \x00\n',
    b'0 0.5 0.5 0.2 0.2\r0 0.5 0.5 0.2 0.3',             # a lone CR ends a line; no line end at the end
    b'0 0.5 0.5 0.2 0.2\n0 0.5 0.5 0_1 0.2\n',            # float() reads 0_1 as 1: size rule
]
GOOD = b'2 0.5 0.5 0.25 0.75\n'


def per_line(texts: list, classes):
    """What the per-line checker says of each file: the reference the fast path must equal."""
    boxes, counts, problems = [], [], []
    for index, raw in enumerate(texts):
        try:
            labels, problem = parse_labels(raw.decode('utf-8-sig'), classes)
        except UnicodeDecodeError:
            labels, problem = np.zeros((0, 5), np.float32), ' label file is not UTF-8 text'
        if problem:
            problems.append((index, problem))
        boxes.append(labels)
        counts.append(len(labels))
    return np.concatenate(boxes), np.array(counts), problems


def assert_same_as_per_line(texts: list, classes):
    labels, counts, problems = parse_label_texts(texts, classes)
    expected_labels, expected_counts, expected_problems = per_line(texts, classes)
    assert problems == expected_problems
    np.testing.assert_array_equal(counts, expected_counts)
    assert labels.dtype == np.float32 and labels.shape == expected_labels.shape
    # bit for bit, the sign of zero included
    assert (labels.view(np.uint32) == expected_labels.view(np.uint32)).all()
    return labels, counts, problems


@pytest.mark.parametrize('classes', [80, None])
def test_bad_and_odd_files_get_the_per_line_checkers_verdict(classes):
    texts = [GOOD]
    for text in BAD_AND_ODD:
        texts += [text, GOOD]
    _, counts, problems = assert_same_as_per_line(texts, classes)
    # a few verdicts spelled out, in case both readers drifted together
    said = dict(problems)
    assert said[1] == '1: expected 5 fields "class cx cy w h", got 4: "0 0.5 0.5 0.2"'
    assert said[5] == '2: "x" is not a number'
    assert said[29] == ' label file is not UTF-8 text'
    assert 7 not in said and counts[7] == 1                                # exponents
    assert (13 in said) == (classes == 80)                                # class 80
    assert said[17].startswith('1: every box lies outside the image')
    assert counts[25] == 1 and counts[27] == 2 and counts[35] == 2        # overshoot, BOM + CRLF, tabs
    assert counts[::2].tolist() == [1] * (len(BAD_AND_ODD) + 1)          # every good file kept


def test_numbers_of_every_form_parse_as_float_does():
    rng = np.random.default_rng(0)
    lines = []
    for _ in range(3000):
        values = rng.uniform(0.01, 1, 4) ** rng.uniform(1, 3)
        digits = rng.integers(1, 17, 4)   # 1: '1.'
        fields = [f'{v:.{d}f}' if d > 1 else '1.' for v, d in zip(values, digits)]
        fields = [f.lstrip('0') if rng.random() < 0.2 else f for f in fields]    # '.25'
        fields = [f'+{f}' if rng.random() < 0.05 else f for f in fields]
        lines.append(f'{rng.integers(0, 10)} ' + ' '.join(fields))
    texts = [('\n'.join(lines[i:i + 7]) + '\n').encode() for i in range(0, len(lines), 7)]
    labels, _, _ = assert_same_as_per_line(texts, None)
    assert len(labels) > 2000


def test_coco128_labels_as_numpy_reads_them(tmp_path):
    folder = shared_path('datasets/coco128/labels')
    paths = sorted(str(p) for p in folder.glob('*/*.txt'))
    texts = [open(p, 'rb').read() for p in paths]
    labels, counts, problems = assert_same_as_per_line(texts, 80)
    assert problems == [] and len(labels) == counts.sum()
    # numpy's own text reader, file by file: the same numbers as float32
    reference = np.concatenate([np.loadtxt(p, ndmin=2) for p in paths]).clip([0, 0, 0, 0, 0], [80, 1, 1, 1, 1])
    np.testing.assert_array_equal(labels, reference.astype(np.float32))
    # read from disk, with an unreadable path among them
    missing = str(tmp_path / 'gone.txt')
    read, read_counts, read_problems = read_label_files(paths[:3] + [missing] + paths[3:], 80)
    np.testing.assert_array_equal(read, labels)
    assert read_counts.tolist() == counts[:3].tolist() + [0] + counts[3:].tolist()
    assert read_problems == [f'{missing}: label file cannot be read (No such file or directory)']
