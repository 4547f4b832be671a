"""Darknet-format datasets: find each image's label file, check every label line once, cache the result.

A split (the .data keys `train`, `val`) is a list file of image paths (absolute, or relative to the list file; blank
lines, CRLF and Windows separators are fine) or a folder of images (searched recursively).

A label file `x.txt` holds one box per line, `class cx cy w h`, normalised to 0..1. It is looked up in Darknet's
mirror layout first (the last `images` or `JPEGImages` folder in the path replaced by `labels`), then beside the
image (`x.jpg` -> `x.txt`). Only the extension changes, so folder names with dots work. No label file, or an empty
one, means a background image (no objects).

An image whose label file breaks a rule, or that is missing, not an image or cut short, is left out of the split
and reported with `file[:line]` and the rule; `strict_labels = 1` in the .data turns any such problem into a
`DatasetError`. The summary also warns about what usually means a labelling mistake (utils/data/summary.py).

Checking images without decoding them: decoding every image would make the first load of a COCO-sized split (118k
images) take many minutes. Instead the check reads a file's first bytes (the signature of a JPEG, PNG, BMP, TIFF,
WebP, PNM or JPEG 2000 file; a file with another signature is decoded once with OpenCV) and, for JPEG and PNG, its
last few kilobytes, to catch a file cut short (an interrupted copy or download): OpenCV decodes such a JPEG with
grey rows where the image stops, and fails on such a PNG. An image that passes the check and still fails to decode
raises a `DatasetError` naming it when it is read.

The results are cached per user, never in the dataset's folders (utils/data/cache.py), so only changed files are
checked again.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from utils.data.cache import cache_path_for, read_cache, write_cache
from utils.data.summary import ALL_OUTSIDE_RULE, boxes_outside, label_warnings
from utils.errors import DatasetError

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.dib', '.tif', '.tiff', '.webp', '.pbm', '.pgm', '.ppm',
                  '.pnm', '.jp2')
MIRROR_FOLDERS = ('images', 'JPEGImages')   # Darknet's layout: .../images/a/x.jpg -> .../labels/a/x.txt
COORD_TOLERANCE = 1e-3                       # converters' rounding overshoot we clip instead of rejecting
REASONS_SHOWN = 5                            # how many problems the printed summary lists


@dataclass
class Split:
    """The usable images of one split and their checked labels."""
    name: str                      # 'train' or 'val'
    source: Path                   # the list file or image folder
    image_paths: list              # Path of each usable image
    labels: list                   # per image: float32 (n, 5) [class, cx, cy, w, h], normalised; (0, 5) = background
    left_out: list = field(default_factory=list)   # 'file[:line]: reason' for each image left out
    warnings: list = field(default_factory=list)   # likely labelling mistakes, one line each (utils/data/summary.py)

    def __len__(self) -> int:
        return len(self.image_paths)

    @property
    def num_boxes(self) -> int:
        return sum(len(labels) for labels in self.labels)

    @property
    def num_backgrounds(self) -> int:
        return sum(len(labels) == 0 for labels in self.labels)

    def summary(self) -> str:
        text = (f'{self.name}: {self.source}: {len(self)} images, {self.num_boxes} boxes, '
                f'{self.num_backgrounds} backgrounds, {len(self.left_out)} left out')
        for reason in self.left_out[:REASONS_SHOWN]:
            text += f'\n  left out: {reason}'
        if len(self.left_out) > REASONS_SHOWN:
            text += f'\n  ... and {len(self.left_out) - REASONS_SHOWN} more'
        for warning in self.warnings:
            text += f'\n  warning: {warning}'
        return text


# ---------------------------------------------------------------------------------------------------------- finding

def list_images(source: Path) -> list:
    """The image paths of a split: the lines of a list file, or the images in a folder (sorted, recursive)."""
    source = Path(source)
    if source.is_dir():
        paths = sorted(p for p in source.rglob('*') if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not paths:
            raise DatasetError(f'{source}: folder holds no images ({", ".join(IMAGE_SUFFIXES)})')
        return paths
    if not source.is_file():
        raise DatasetError(f'{source}: list file or image folder not found')
    try:
        text = source.read_text(encoding='utf-8-sig')
    except UnicodeDecodeError:
        raise DatasetError(f'{source}: not a text file (a list file holds one image path a line)') from None
    folder = str(source.resolve().parent)
    paths = [Path(_resolve_listed(line.strip(), folder)) for line in text.splitlines() if line.strip()]
    if not paths:
        raise DatasetError(f'{source}: list file holds no image paths')
    return paths


# The next two run once per image each time a split opens, so they work on strings: pathlib objects would make
# re-opening a large split from its cache several times slower.

def _resolve_listed(text: str, list_folder: str) -> str:
    # Relative paths are relative to the list file; Darknet's own lists are written relative to the folder darknet
    # runs in, so a path found from the working folder (and not beside the list) is taken from there.
    path = os.path.expanduser(text.replace('\\', '/'))
    if os.path.isabs(path):
        return path
    beside = os.path.normpath(os.path.join(list_folder, path))
    if not os.path.exists(beside) and os.path.exists(path):
        return os.path.abspath(path)
    return beside


def label_candidates(image_path) -> list:
    """Where an image's label file may be (as strings), in the order we look: Darknet's mirror layout, then beside
    the image. Only the extension changes, so folders with dots in their names are safe."""
    stem = os.path.splitext(str(image_path))[0]
    candidates = []
    parts = stem.split(os.sep)
    for i in range(len(parts) - 2, -1, -1):   # the last matching folder, never the file name itself
        if parts[i] in MIRROR_FOLDERS:
            candidates.append(os.sep.join(parts[:i] + ['labels'] + parts[i + 1:]) + '.txt')
            break
    candidates.append(stem + '.txt')
    return candidates


# ----------------------------------------------------------------------------------------------------------- images

# First bytes of the formats OpenCV reads; anything else is decoded once to find out.
JPEG_START, PNG_START = b'\xff\xd8\xff', b'\x89PNG\r\n\x1a\n'
_SIGNATURES = (JPEG_START, PNG_START, b'BM', b'II*\x00', b'MM\x00*', b'\x00\x00\x00\x0cjP  \r\n',
               b'\xff\x4f\xff\x51') + tuple(b'P%d' % n for n in range(1, 8))
TAIL_BYTES = 4096                            # how much of a file's end the cut-short check reads
PADDING = b'\x00\xff'                        # bytes some writers add after an image's end
PNG_END = b'\x00\x00\x00\x00IEND\xaeB`\x82'   # the IEND chunk: length 0, type, CRC
JPEG_SCAN_START = b'\xff\xda'                # the SOS marker; its header, then the compressed data, follow
# In a JPEG's compressed data a byte FF is only ever followed by 00 (byte stuffing) or a restart marker D0..D7,
# and FF FF is fill before a marker. Any other pair starting with FF is a marker, the end marker FF D9 among them.
_MARKER = re.compile(rb'\xff[^\x00\xd0-\xd7\xff]')


def image_problem(path: Path) -> str | None:
    """None if the file looks like a whole image OpenCV reads, else what is wrong (the module docstring says why
    this does not decode it)."""
    try:
        with open(path, 'rb') as f:
            head = f.read(16)
            if head.startswith(JPEG_START) and _jpeg_cut_short(*_end_before_padding(f)) and not _jpeg_ends(f):
                return 'JPEG file is cut short: its image data stops without the end marker (FF D9)'
            if head.startswith(PNG_START) and PNG_END not in _end_before_padding(f)[0]:
                return 'PNG file is cut short: it does not end with an IEND chunk'
    except FileNotFoundError:
        return 'image file not found'
    except OSError as error:
        return f'image cannot be read ({error.strerror})'
    if not head:
        return 'image file is empty'
    if head.startswith(_SIGNATURES) or (head[:4] == b'RIFF' and head[8:12] == b'WEBP'):
        return None
    if cv2.imread(str(path), cv2.IMREAD_REDUCED_COLOR_8) is None:
        return f'not an image OpenCV can decode (file starts with {head[:8]!r})'
    return None


def _end_before_padding(f) -> tuple[bytes, bool]:
    """(the last TAIL_BYTES of the open file before any trailing 00 / FF padding, whether they start the file).
    Reads backwards through the padding, however long, and no further."""
    end = f.seek(0, os.SEEK_END)
    while end > 0:
        start = max(end - TAIL_BYTES, 0)
        f.seek(start)
        chunk = f.read(end - start)
        kept = len(chunk.rstrip(PADDING))
        if kept == len(chunk):   # no padding: these are the bytes
            return chunk, start == 0
        if kept:
            end = start + kept
            start = max(end - TAIL_BYTES, 0)
            f.seek(start)
            return f.read(end - start), start == 0
        end = start
    return b'', True


def _jpeg_cut_short(tail: bytes, whole_file: bool) -> bool:
    """Whether a JPEG whose last bytes (padding left off) are `tail` stops inside its compressed data.

    A whole JPEG ends with the end marker FF D9, then maybe padding or data of another kind (a phone's motion-photo
    video, a maker's trailer): either way a marker-like pair follows the last compressed data. A file cut inside
    that data has none after it. Only what follows the last scan header in `tail` counts, so that the markers in
    the headers of a small file do not pass for its end.
    """
    scan = tail.rfind(JPEG_SCAN_START)
    if scan >= 0:
        header_length = int.from_bytes(tail[scan + 2:scan + 4], 'big')
        tail = tail[scan + 2 + header_length:]
    elif whole_file:
        return True   # the file stops before its compressed data begins
    return _MARKER.search(tail) is None



def _jpeg_ends(f) -> bool:
    """Whether the open JPEG holds an end marker after its first scan header: the whole-file check for the rare
    file whose last bytes look cut short, such as one with a long trailer of another kind after its image.
    FF D9 cannot occur inside compressed data (an FF there is followed by 00 or a restart marker)."""
    f.seek(0)
    data = f.read()
    scan = data.find(JPEG_SCAN_START)
    return scan >= 0 and data.find(b'\xff\xd9', scan) >= 0


def read_image(path) -> np.ndarray:
    """Any image OpenCV reads as (H, W, 3) uint8 BGR: grey, alpha (dropped) and 16-bit images are converted."""
    # IMREAD_COLOR does all three conversions (16-bit by taking the high byte) and applies EXIF orientation,
    # as Yolo-FastestV2's cv2.imread does.
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        why = 'file not found' if not Path(path).exists() else 'OpenCV cannot decode it'
        raise DatasetError(f'{path}: image cannot be read ({why})')
    return image



# --------------------------------------------------------------------------------------------------------- checking

def parse_labels(text: str, classes: int | None) -> tuple[np.ndarray, str | None]:
    """Check the text of one label file. Returns (float32 (n, 5) labels, None) or (empty, 'line N: what is wrong').

    `classes` None skips the class-range rule (genanchors reads labels without a .data file).
    """
    rows, line_numbers = [], []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 5:
            return _no_labels(), (f'{number}: expected 5 fields "class cx cy w h", got {len(fields)}: '
                                  f'"{line.strip()[:60]}"')
        try:
            rows.append([float(value) for value in fields])
        except ValueError:
            bad = next(value for value in fields if not _is_number(value))
            return _no_labels(), f'{number}: "{bad}" is not a number'
        line_numbers.append(number)
    if not rows:
        return _no_labels(), None
    labels = np.array(rows, dtype=np.float64)
    cls, centres, sizes = labels[:, 0], labels[:, 1:3], labels[:, 3:5]
    # a file whose every box misses the image holds other units (pixels): say so, rather than which number
    # broke a rule first
    all_outside = np.isfinite(labels).all() and boxes_outside(labels[:, 1:], COORD_TOLERANCE).all()
    rules = [
        (~np.isfinite(labels).all(1), 'values must be finite (got nan or inf)'),
        (cls != np.round(cls), 'class must be an integer'),
        ((cls < 0) | (cls >= classes) if classes is not None else np.zeros(len(cls), bool),
         f'class must be in [0, {classes}) (classes = {classes} in the .data)'),
        (np.full(len(cls), all_outside), f'{ALL_OUTSIDE_RULE} (coordinates beyond 0..1: pixels, not normalised?)'),
        (((sizes <= 0) | (sizes > 1 + COORD_TOLERANCE)).any(1), 'width and height must be in (0, 1]'),
        (((centres < -COORD_TOLERANCE) | (centres > 1 + COORD_TOLERANCE)).any(1), 'centre must be in [0, 1]'),
    ]
    for broken, rule in rules:   # report the first line that breaks a rule, rules in the order above
        if broken.any():
            row = int(np.argmax(broken))
            values = ' '.join(f'{v:g}' for v in labels[row])
            return _no_labels(), f'{line_numbers[row]}: {rule}: "{values}"'
    labels[:, 1:3] = centres.clip(0, 1)
    labels[:, 3:5] = sizes.clip(0, 1)
    return labels.astype(np.float32), None


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _no_labels() -> np.ndarray:
    return np.zeros((0, 5), dtype=np.float32)


def _check_one(image_path: Path, label_path: str | None, classes: int | None) -> tuple[np.ndarray, str | None]:
    """Check one image and its label file. Returns (labels, None) or (empty, 'file[:line]: reason')."""
    problem = image_problem(image_path)
    if problem:
        return _no_labels(), f'{image_path}: {problem}'
    if label_path is None:
        return _no_labels(), None
    try:
        with open(label_path, 'rb') as f:
            text = f.read().decode('utf-8-sig')
    except UnicodeDecodeError:
        return _no_labels(), f'{label_path}: label file is not UTF-8 text'
    except OSError as error:
        return _no_labels(), f'{label_path}: label file cannot be read ({error.strerror})'
    labels, problem = parse_labels(text, classes)
    return labels, (f'{label_path}:{problem}' if problem else None)


def _signature(image_path: str) -> tuple[str | None, tuple]:
    """(label path or None, (image size, image mtime, which label, label size, label mtime)) for the cache key."""
    try:
        st = os.stat(image_path)
        image_key = (st.st_size, st.st_mtime_ns)
    except OSError:
        image_key = (-1, -1)
    for which, candidate in enumerate(label_candidates(image_path)):
        try:
            st = os.stat(candidate)
        except OSError:
            continue
        return candidate, (*image_key, which, st.st_size, st.st_mtime_ns)
    return None, (*image_key, -1, -1, -1)


# ------------------------------------------------------------------------------------------------------------ split

def check_split(source: Path, classes: int | None, strict: bool = False, name: str = 'split',
                use_cache: bool = True, verbose: bool = True, class_names=(), input_size: tuple | None = None
                ) -> Split:
    """List, check (or take from the cache) and report the images of one split. `class_names` and `input_size`
    (width, height) make the warnings (utils/data/summary.py) name empty classes and count tiny boxes."""
    source = Path(source)
    image_paths = list_images(source)
    cache_file = cache_path_for(source)
    cached = read_cache(cache_file, classes) if use_cache else {}
    entries, reused = [], 0   # entries: (image path, signature, labels, problem or None)
    label_paths = []          # per entry: its label file, None for none
    for image_path in image_paths:
        path_text = str(image_path)
        label_path, signature = _signature(path_text)
        label_paths.append(label_path)
        hit = cached.get(path_text)
        if hit is not None and hit[0] == signature:
            labels, problem = hit[1], hit[2]
            reused += 1
        else:
            labels, problem = _check_one(image_path, label_path, classes)
        entries.append((image_path, signature, labels, problem))

    cache_note = ''
    if use_cache and (reused < len(entries) or len(cached) != len(entries)):
        cache_note = write_cache(cache_file, classes, entries)
    elif use_cache:
        cache_note = f'all {reused} from cache {cache_file}'

    kept = [i for i, e in enumerate(entries) if e[3] is None]
    split = Split(name, source, [entries[i][0] for i in kept], [entries[i][2] for i in kept],
                  [e[3] for e in entries if e[3] is not None])
    split.warnings = label_warnings(split.image_paths, [label_paths[i] for i in kept], split.labels,
                                    split.left_out, classes, class_names, input_size)
    if verbose:
        print(split.summary() + (f'\n  {cache_note}' if cache_note else ''), flush=True)
    # one line each: the summary printed above lists the other problems
    if split.left_out and strict:
        raise DatasetError(f'{source}: {len(split.left_out)} of {len(entries)} images have problems '
                           f'(strict_labels is on); the first: {split.left_out[0]}')
    if not split.image_paths:
        raise DatasetError(f'{source}: no usable image ({len(entries)} listed, all left out); the first problem: '
                           f'{split.left_out[0]}')
    return split


def load_split(cfg, which: str, verbose: bool = True) -> Split:
    """The checked `train` or `val` split of a Config (see utils/config.py)."""
    if which not in ('train', 'val'):
        raise ValueError(f'split must be "train" or "val", got "{which}"')
    source = getattr(cfg, which)
    try:
        return check_split(source, cfg.classes, cfg.strict_labels, which, verbose=verbose,
                           class_names=cfg.class_names, input_size=(cfg.width, cfg.height))
    except DatasetError as error:
        raise DatasetError(f'{error} (split "{which}" of {cfg.where(which)})') from None
