"""k-means anchors: IoU, optimality against exhaustive search, coco128 figures, anchors{k}.txt, genanchors CLI
(--plots included)."""
import itertools
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import REPO, shared_path

import genanchors
from utils.boxes import wh_iou
from utils.cli import run
from utils.data.anchors import anchor_fitness, kmeans_anchors, mean_best_iou, update_data_file


def centred_iou(a, b) -> float:
    """IoU of two boxes sharing a centre, from their corner coordinates (independent of utils.data.anchors)."""
    (w1, h1), (w2, h2) = a, b
    ax1, ay1, ax2, ay2 = -w1 / 2, -h1 / 2, w1 / 2, h1 / 2
    bx1, by1, bx2, by2 = -w2 / 2, -h2 / 2, w2 / 2, h2 / 2
    inter = max(0.0, min(ax2, bx2) - max(ax1, bx1)) * max(0.0, min(ay2, by2) - max(ay1, by1))
    return inter / (w1 * h1 + w2 * h2 - inter)


def reference_style_kmeans(boxes_wh: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Yolo-FastestV2's algorithm as published: random boxes as start, mean centres, stop when nothing moves."""
    rng = np.random.default_rng(seed)
    centres = boxes_wh[rng.choice(len(boxes_wh), k, replace=False)]
    previous = None
    while True:
        assignment = np.array([np.argmax([centred_iou(b, c) for c in centres]) for b in boxes_wh])
        if previous is not None and (assignment == previous).all():
            return centres
        centres = np.array([boxes_wh[assignment == j].mean(0) if (assignment == j).any() else centres[j]
                            for j in range(k)])
        previous = assignment


def test_wh_iou_matches_corner_geometry():
    rng = np.random.default_rng(0)
    boxes, anchors = rng.uniform(1, 50, (30, 2)), rng.uniform(1, 50, (7, 2))
    expected = np.array([[centred_iou(b, a) for a in anchors] for b in boxes])
    np.testing.assert_allclose(wh_iou(boxes, anchors), expected, rtol=1e-12)


@pytest.mark.parametrize('k, grid', [(2, 40), (3, 14)])
def test_kmeans_reaches_the_exhaustive_optimum_on_small_data(k, grid):
    # 20 boxes in 3 loose groups; the best k anchors from a log grid over their range, found by trying every
    # k-subset of the grid, bound what k-means should reach.
    rng = np.random.default_rng(5)
    boxes = np.exp(np.concatenate([rng.normal(np.log(m), 0.25, (n, 2)) for m, n in [(8, 7), (30, 7), (90, 6)]]))
    side = np.exp(np.linspace(np.log(boxes.min()), np.log(boxes.max()), grid))
    candidates = np.stack(np.meshgrid(side, side), -1).reshape(-1, 2)
    iou = np.array([[centred_iou(b, c) for c in candidates] for b in boxes])          # (20, grid^2)
    subsets = np.array(list(itertools.combinations(range(len(candidates)), k)))
    exhaustive_best = max(iou[:, chunk].max(2).mean(0).max() for chunk in np.array_split(subsets, 20))
    anchors, mean_iou = kmeans_anchors(boxes, k)
    assert mean_iou == pytest.approx(np.mean([max(centred_iou(b, a) for a in anchors) for b in boxes]), abs=1e-9)
    assert mean_iou >= exhaustive_best - 0.002, (mean_iou, exhaustive_best)
    areas = anchors[:, 0] * anchors[:, 1]
    assert (np.diff(areas) > 0).all()


def test_coco128_anchors_beat_the_reference_algorithm_and_the_file_says_so(tmp_path):
    images = shared_path('datasets/coco128/images/train2017')
    assert genanchors.main(['--traintxt', str(images), '--output_dir', str(tmp_path)]) == 0
    line1, line2 = (tmp_path / 'anchors6.txt').read_text().splitlines()
    anchors_px = np.array([float(v) for v in line1.replace(' ', '').split(',')]).reshape(-1, 2)
    # The boxes, read here with numpy's own text reader straight from the label files.
    boxes_px = np.concatenate([np.loadtxt(p, ndmin=2)[:, 3:5] for p in sorted(
        (images.parents[1] / 'labels' / 'train2017').glob('*.txt')) if (images / f'{p.stem}.jpg').exists()]) * 352
    assert len(boxes_px) == 929
    file_iou = np.mean([max(centred_iou(b, a) for a in anchors_px) for b in boxes_px])
    assert float(line2) == pytest.approx(file_iou, abs=1e-6)
    assert file_iou > 0.56
    assert (np.diff(anchors_px.prod(1)) > 0).all()
    # Yolo-FastestV2's own procedure on the same boxes, from three random starts, stays well below.
    reference = [mean_best_iou(boxes_px, reference_style_kmeans(boxes_px, 6, seed)) for seed in range(3)]
    assert max(reference) < file_iou - 0.01, reference


def test_fitness_figures_on_a_hand_made_case():
    boxes = np.array([[10, 10], [20, 20], [10, 45], [100, 5]], float)
    anchors = np.array([[10, 10], [20, 40]], float)
    # best IoUs: 1, max(100/400, 400/800) = 0.5, max(100/450, 400/850), max(50/550, 100/1200)
    figures = anchor_fitness(boxes, anchors)
    assert figures['mean_iou'] == pytest.approx((1 + 0.5 + 400 / 850 + 50 / 550) / 4)
    assert figures['recall_iou50'] == pytest.approx(1 / 4)     # only the exact match is above 0.5
    assert figures['recall_ratio4'] == pytest.approx(3 / 4)    # 100x5 is 5x wider than any anchor


# -------------------------------------------------------------------------------------------------- genanchors CLI

def make_labels_only_dataset(folder: Path, n_images: int = 12) -> Path:
    """A Darknet layout whose images do not exist: genanchors must read only the labels."""
    rng = np.random.default_rng(1)
    lines = []
    for i in range(n_images):
        label = folder / 'labels' / f'{i}.txt'
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text(''.join(f'{rng.integers(2)} 0.5 0.5 {w:.4f} {h:.4f}\n' for w, h in rng.uniform(0.05, 0.9,
                                                                                                        (3, 2))))
        lines.append(f'images/{i}.jpg')
    (folder / 'labels' / 'bad.txt').write_text('0 0.5 0.5 0.2\n')
    (folder / 'train.txt').write_text('\n'.join(lines + ['images/bad.jpg']) + '\n')
    return folder / 'train.txt'


def test_sweep_writes_ten_files_from_labels_alone(tmp_path, capsys):
    listing = make_labels_only_dataset(tmp_path)
    assert genanchors.main(['--traintxt', str(listing), '--num_clusters', '0', '--output_dir', str(tmp_path / 'o'),
                            '--input_width', '320', '--input_height', '192']) == 0
    out = capsys.readouterr().out
    assert '13 images, 36 boxes, 0 without a label file, 1 label files left out' in out
    assert 'bad.txt:1: expected 5 fields' in out
    ious = [float((tmp_path / 'o' / f'anchors{k}.txt').read_text().splitlines()[1]) for k in range(1, 11)]
    assert all(b >= a - 1e-3 for a, b in zip(ious, ious[1:]))   # more anchors never fit worse
    anchors = np.array((tmp_path / 'o' / 'anchors1.txt').read_text().split('\n')[0].split(','), float)
    assert 0.05 * 320 <= anchors[0] <= 0.9 * 320 and 0.05 * 192 <= anchors[1] <= 0.9 * 192


DATA = ('\ufeff[name]\r\nmodel_name=x # my model\r\n\r\n[model-configure]\r\nclasses=2\r\nwidth=320\r\n'
        'height=192\r\nanchor_num=3\r\nanchors = 1,2, 3,4, 5,6, 7,8, 9,10, 11,12  # old ones\r\n\r\n'
        '[data-configure]\r\ntrain=train.txt\r\nval=train.txt\r\nnames=x.names\r\n')


def test_update_rewrites_only_the_anchors_value(tmp_path):
    make_labels_only_dataset(tmp_path)
    (tmp_path / 'x.names').write_text('a\nb\n')
    data = tmp_path / 'x.data'
    data.write_bytes(DATA.encode('utf-8'))
    assert genanchors.main(['--data', str(data), '--update', '--output_dir', str(tmp_path)]) == 0
    new_lines = data.read_bytes().split(b'\r\n')
    old_lines = DATA.encode('utf-8').split(b'\r\n')
    changed = [i for i, (a, b) in enumerate(zip(old_lines, new_lines)) if a != b]
    assert len(new_lines) == len(old_lines) and changed == [8]
    written = (tmp_path / 'anchors6.txt').read_text().splitlines()[0]
    assert new_lines[8].decode() == f'anchors = {written}  # old ones'


def test_update_adds_a_missing_anchors_line_and_refuses_a_wrong_count(tmp_path, capsys):
    make_labels_only_dataset(tmp_path)
    (tmp_path / 'x.names').write_text('a\nb\n')
    data = tmp_path / 'x.data'
    data.write_text('classes=2\nanchor_num=2\ntrain=train.txt\nvalid=train.txt\nnames=x.names')
    assert genanchors.main(['--data', str(data), '--update', '--output_dir', str(tmp_path)]) == 0
    lines = data.read_text().split('\n')
    assert lines[1] == 'anchor_num=2' and lines[2].startswith('anchors=') and len(lines[2].split(',')) == 8
    assert run(genanchors.main, ['--data', str(data), '--update', '--num_clusters', '6']) == 1   # as the script exits
    assert '--update needs 4 anchors (2 scales x anchor_num 2), not --num_clusters 6' in capsys.readouterr().err


def test_update_data_file_appends_when_there_is_no_anchor_num(tmp_path):
    path = tmp_path / 'x.data'
    path.write_text('classes=2\ntrain=a.txt')   # no final newline
    update_data_file(path, np.array([[1.234, 2], [3, 4]]))
    assert path.read_text() == 'classes=2\ntrain=a.txt\nanchors=1.23,2.00, 3.00,4.00\n'


def test_plots_draws_labels_and_the_first_batch_with_both_anchor_sets(tmp_path):
    images = shared_path('datasets/coco128/images/train2017')
    data = tmp_path / 'coco128.data'
    data.write_text(f'[train-configure]\nbatch_size=8\n[model-configure]\nclasses=80\nwidth=320\nheight=256\n'
                    f'anchor_num=3\nanchors=10,13, 16,30, 33,23, 30,61, 62,45, 59,119\n[data-configure]\n'
                    f'train={images}\nval={images}\nnames={REPO / "data" / "coco.names"}\n')
    before = data.read_bytes()
    done = subprocess.run([sys.executable, str(REPO / 'genanchors.py'), '--data', str(data), '--plots',
                           str(tmp_path / 'plots'), '--output_dir', str(tmp_path), '--restarts', '2'],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f'training data drawn: {tmp_path / "plots" / "labels.png"}, {tmp_path / "plots" / "batch0.jpg"}' \
        in done.stdout
    assert '  warning: classes with no boxes: 9 of 80: ' in done.stdout   # the split's check, as train.py prints it
    assert cv2.imread(str(tmp_path / 'plots' / 'labels.png')).shape == (900, 1200, 3)
    # batch_size 8: a 3 x 3 grid with 8 tiles of 320 x 256, 4 px apart
    assert cv2.imread(str(tmp_path / 'plots' / 'batch0.jpg')).shape == (3 * 256 + 8, 3 * 320 + 8, 3)
    assert (tmp_path / 'anchors6.txt').is_file() and data.read_bytes() == before   # no --update: .data unchanged
    refused = subprocess.run([sys.executable, str(REPO / 'genanchors.py'), '--traintxt', str(images), '--plots',
                              str(tmp_path / 'p2')], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and '--plots needs --data' in refused.stderr
