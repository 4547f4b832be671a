"""Augmentations keep every box on its object: synthetic images of flat coloured rectangles, one colour per box,
go through each transform; afterwards each kept box must be covered by its colour and match the colour's extent."""
import numpy as np
import pytest

from utils.data.augment import (
    clip_and_filter,
    flip_lr,
    hsv_jitter,
    labels_to_px,
    mosaic4,
    px_to_labels,
    random_scale_translate,
    resize_to_fit,
    to_input_size,
)

COLOURS = [(0, 0, 255), (0, 255, 0), (255, 0, 0), (0, 255, 255), (255, 0, 255), (255, 255, 0), (255, 255, 255),
           (0, 128, 255)]
BACKGROUND = (40, 40, 40)
W, H = 128, 96   # network input for these tests (not square on purpose)


def synthetic(width, height, boxes_xyxy_px, colour_ids):
    """An image with a filled rectangle per box; labels (n, 5) whose class is the colour index."""
    image = np.full((height, width, 3), BACKGROUND, dtype=np.uint8)
    for (x0, y0, x1, y1), c in zip(boxes_xyxy_px, colour_ids):
        image[y0:y1, x0:x1] = COLOURS[c]
    return image, px_to_labels(np.array(colour_ids, np.float32), np.array(boxes_xyxy_px, np.float32), width, height)


def colour_mask(image, colour_id):
    return (np.abs(image.astype(int) - COLOURS[colour_id]).max(axis=2) < 60)


def assert_aligned(image, classes, boxes_xyxy_px, tolerance_px=2.0):
    assert len(classes) == len(boxes_xyxy_px)
    for c, (x0, y0, x1, y1) in zip(classes.astype(int), boxes_xyxy_px):
        mask = colour_mask(image, c)
        inside = mask[int(np.ceil(y0)):int(np.floor(y1)), int(np.ceil(x0)):int(np.floor(x1))]
        assert inside.size and inside.mean() > 0.9, f'colour {c}: only {inside.mean():.2f} of the box is its colour'
        ys, xs = np.nonzero(mask)
        extent = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        assert np.abs(extent - [x0, y0, x1, y1]).max() <= tolerance_px, \
            f'colour {c}: box {[round(float(v), 1) for v in (x0, y0, x1, y1)]} vs colour extent {extent.tolist()}'


def scene(k=0):
    """A 200x150 image with two boxes of colours 2k and 2k+1."""
    return synthetic(200, 150, [(10 + 7 * k, 20, 70 + 5 * k, 90), (110, 60 - 5 * k, 190, 140)], [2 * k, 2 * k + 1])


@pytest.mark.parametrize('letterbox', [False, True])
def test_resize_to_input_keeps_boxes_on_objects(letterbox):
    image, labels = scene()
    out, classes, boxes = to_input_size(image, labels, W, H, letterbox)
    assert out.shape == (H, W, 3)
    assert_aligned(out, classes, boxes)


def test_flip_keeps_boxes_on_objects():
    image, labels = scene()
    classes, boxes = labels_to_px(labels, 200, 150)
    flipped, flipped_boxes = flip_lr(image, boxes)
    assert_aligned(flipped, classes, flipped_boxes, tolerance_px=1e-3)
    assert flipped_boxes[0, 0] == 200 - boxes[0, 2]


@pytest.mark.parametrize('letterbox', [False, True])
def test_scale_translate_keeps_boxes_on_objects(letterbox):
    image, labels = scene()
    resized, classes, boxes = to_input_size(image, labels, W, H, letterbox)
    kept_any_clipped = False
    for seed in range(30):
        rng = np.random.default_rng(seed)
        out, c, b = random_scale_translate(resized, classes, boxes, W, H, scale=0.5, translate=0.3, rng=rng)
        assert out.shape == (H, W, 3)
        assert_aligned(out, c, b)
        kept_any_clipped |= bool(((b[:, [0, 1]] == 0) | (b[:, 2:3] == W) | (b[:, 3:4] == H)).any())
    assert kept_any_clipped, 'the settings should have pushed some box across the border'


def test_mosaic_then_scale_translate_keeps_boxes_on_objects():
    tiles = []
    for k in range(4):
        image, labels = scene(k)
        tiles.append((resize_to_fit(image, W, H, letterbox=True), labels))
    seen = set()
    for seed in range(20):
        rng = np.random.default_rng(seed)
        canvas, classes, boxes = mosaic4(tiles, W, H, rng)
        assert canvas.shape == (2 * H, 2 * W, 3)
        assert_aligned(canvas, classes, boxes)
        out, c, b = random_scale_translate(canvas, classes, boxes, W, H, scale=0.5, translate=0.1, rng=rng)
        assert_aligned(out, c, b)
        seen |= set(c.astype(int).tolist())
    assert seen == set(range(8)), 'every tile should show up in some mosaic'


def test_hsv_jitter_changes_colours_but_moves_no_pixel():
    image, labels = scene()
    rng = np.random.default_rng(0)
    assert hsv_jitter(image, 0, 0, 0, rng) is image
    jittered = hsv_jitter(image, 0.1, 0.7, 0.4, rng)
    assert jittered.shape == image.shape and not np.array_equal(jittered, image)

    def edges(img):   # where a pixel differs from its right or lower neighbour
        x = img.astype(int)
        return np.concatenate([(np.abs(np.diff(x, axis=1)).sum(2) > 0).ravel(),
                               (np.abs(np.diff(x, axis=0)).sum(2) > 0).ravel()])
    assert np.array_equal(edges(jittered), edges(image))


def test_clip_drops_slivers_and_keeps_the_rest():
    classes = np.array([0, 1, 2, 3], np.float32)
    boxes = np.array([[-40, 10, 10, 30],     # 10 of 50 px wide inside: 20% of the area, kept
                      [-48, 10, 2, 30],      # 2 of 50 px inside: 4% of the area, dropped
                      [50, 99, 60, 140],     # 1 px tall inside: dropped
                      [20, 20, 40, 40]], np.float32)
    kept_classes, kept = clip_and_filter(classes, boxes, 0, 0, 100, 100)
    assert kept_classes.tolist() == [0, 3]
    assert kept.tolist() == [[0, 10, 10, 30], [20, 20, 40, 40]]
