"""What the dataset converters (convert_voc.py, convert_coco.py) share: boxes in pixels to Darknet labels, the
report of what was converted and left out, and the writer of the Darknet dataset.

The dataset written into DIR (Darknet's mirror layout, which utils/data/dataset.py reads):

    DIR/images/<split>/<path>      the image: a symbolic link to the original, or a copy (--copy, or where the
                                   file system has no links)
    DIR/labels/<split>/<path>.txt  one `class cx cy w h` line per box, normalised, 6 decimals; empty = background
    DIR/<split>.txt                the split's image paths, relative to DIR, sorted
    DIR/<name>.names, DIR/<name>.data, DIR/convert_report.txt

Nothing that exists is replaced unless `overwrite`: a run that would change an existing label, list, .names or
image file stops before writing anything. An existing .data is kept as it is (genanchors.py --update may have
added anchors to it) when its classes, train, val and names are those this run writes. Everything written depends
only on the input and the options, so a second run gives the same bytes.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from utils.boxes import px_to_norm, xyxy_to_cxcywh
from utils.data.dataset import label_candidates
from utils.errors import DatasetError

DECIMALS = 6            # label coordinates are written with this many decimals
REPORT_NAME = 'convert_report.txt'
CLIP_NOTED_PX = 0.5    # clipping a box by more than this is noted in the report; less is rounding
ITEMS_PRINTED = 5       # per reason, in the printed report; the report file lists every item
DATA_KEYS_COMPARED = ('classes', 'train', 'val', 'names')


@dataclass
class ImageLabels:
    """One image of the converted dataset."""
    source: Path                 # the original image file
    relative: str                # its path under DIR/images/<split>/ ('/'-separated)
    labels: np.ndarray           # float64 (n, 5) [class, cx, cy, w, h] normalised; (0, 5) = background


@dataclass
class Report:
    """Facts about the conversion, what was left out (with the reason and the file) and what was changed."""
    title: str
    facts: list = field(default_factory=list)       # lines: sources, classes, the class mapping
    left_out: dict = field(default_factory=dict)    # reason -> ['file: what', ...]
    changed: dict = field(default_factory=dict)     # what was done to kept items -> ['file: what', ...]

    def leave_out(self, reason: str, item: str) -> None:
        self.left_out.setdefault(reason, []).append(item)

    def change(self, what: str, item: str) -> None:
        self.changed.setdefault(what, []).append(item)

    def text(self, items_per_reason: int | None = None) -> str:
        """The report; `items_per_reason` None lists every item, else that many per reason."""
        lines = [self.title, *self.facts]
        for heading, groups in (('left out', self.left_out), ('kept, changed', self.changed)):
            if not groups:
                lines.append(f'{heading}: nothing')
                continue
            lines.append(f'{heading}:')
            for reason, items in groups.items():
                lines.append(f'  {reason}: {len(items)}')
                shown = items if items_per_reason is None else items[:items_per_reason]
                lines += [f'    {item}' for item in shown]
                if len(shown) < len(items):
                    lines.append(f'    ... and {len(items) - len(shown)} more (all in {REPORT_NAME})')
        return '\n'.join(lines) + '\n'


# ----------------------------------------------------------------------------------------------------------- labels

def darknet_labels(classes: list, boxes_xyxy_px: list, width: float, height: float, report: Report,
                   where: list) -> np.ndarray:
    """Boxes in pixel corners -> (n, 5) [class, cx, cy, w, h] normalised. A box reaching outside the image is
    clipped to it (noted in the report when by more than CLIP_NOTED_PX); one with no area left is left out.
    `where[i]` names box i in the report."""
    if not classes:
        return np.zeros((0, 5))
    boxes = np.array(boxes_xyxy_px, dtype=np.float64).reshape(-1, 4)
    clipped = boxes.copy()
    clipped[:, 0::2] = clipped[:, 0::2].clip(0, width)
    clipped[:, 1::2] = clipped[:, 1::2].clip(0, height)
    keep = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    for i in range(len(boxes)):
        corners = ', '.join(f'{v:g}' for v in boxes[i])
        if not keep[i]:
            report.leave_out('box with no area inside the image',
                             f'{where[i]}: corners ({corners}) in {width:g} x {height:g}')
        elif np.abs(clipped[i] - boxes[i]).max() > CLIP_NOTED_PX:
            report.change('box clipped to the image', f'{where[i]}: corners ({corners}) in {width:g} x {height:g}')
    boxes_cxcywh_norm = px_to_norm(xyxy_to_cxcywh(clipped[keep]), width, height)
    return np.concatenate((np.array(classes, dtype=np.float64)[keep, None], boxes_cxcywh_norm), axis=1)


def label_text(labels: np.ndarray) -> str:
    return ''.join(f'{int(row[0])} ' + ' '.join(f'{v:.{DECIMALS}f}' for v in row[1:]) + '\n' for row in labels)


def split_off_val(relative_paths: list, val_fraction: float) -> set:
    """The paths that go to the val split when the source names no splits: those whose hash falls below
    `val_fraction`, so that an image keeps its split when others are added or removed. At least one when the
    fraction is above 0 and there are two images or more."""
    def hash_fraction(path: str) -> float:
        return int.from_bytes(hashlib.sha1(path.encode('utf-8')).digest()[:8], 'big') / 2 ** 64

    fractions = {path: hash_fraction(path) for path in relative_paths}
    val = {path for path, fraction in fractions.items() if fraction < val_fraction}
    if not val and val_fraction > 0 and len(fractions) > 1:
        val = {min(fractions, key=fractions.get)}
    return val


# ----------------------------------------------------------------------------------------------------------- writer

@dataclass
class _Plan:
    files: dict = field(default_factory=dict)      # Path -> bytes: labels, lists, .names
    images: dict = field(default_factory=dict)     # Path in DIR/images -> original image Path
    conflicts: list = field(default_factory=list)  # paths that exist with other content


def write_darknet(out_dir: Path, splits: dict, class_names: list, report: Report, name: str, source_text: str,
                  copy: bool = False, overwrite: bool = False) -> tuple[str, str]:
    """Write the dataset (the module docstring says what and where). `splits` maps 'train' and 'val' to lists of
    ImageLabels. Returns (the whole report, a line saying how many files were written and how many were kept).
    Raises DatasetError, writing nothing, when it would replace an existing file and `overwrite` is off."""
    out_dir = Path(out_dir).resolve()
    plan = _Plan()
    for split, images in splits.items():
        _plan_split(out_dir, split, images, plan, report)
    names_path, data_path = out_dir / f'{name}.names', out_dir / f'{name}.data'
    plan.files[names_path] = ''.join(f'{n}\n' for n in class_names).encode('utf-8')
    data_text = _data_text(name, source_text, data_path, len(class_names), names_path.name)
    for path, content in plan.files.items():
        if path.is_file() and path.read_bytes() != content:
            plan.conflicts.append(path)
    keep_data = data_path.is_file() and _data_keys(data_path.read_text('utf-8', 'replace')) == _data_keys(data_text)
    if data_path.exists() and not keep_data:
        plan.conflicts.append(data_path)
    for link, original in plan.images.items():
        if os.path.lexists(link) and not (_links_to(link, original) or _copy_of(link, original)):
            plan.conflicts.append(link)
    if plan.conflicts and not overwrite:
        more = f' (and {len(plan.conflicts) - 1} more files)' if len(plan.conflicts) > 1 else ''
        raise DatasetError(f'{plan.conflicts[0]}: exists with other content{more}; --overwrite replaces them '
                           f'(nothing was written)')

    written = kept = 0
    for path, content in plan.files.items():
        if path.is_file() and path.read_bytes() == content:
            kept += 1
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        written += 1
    if keep_data:
        kept += 1
    else:
        data_path.write_text(data_text, encoding='utf-8')
        written += 1
    linked_or_copied, links_failed = _place_images(plan.images, copy)
    written += linked_or_copied
    kept += len(plan.images) - linked_or_copied

    how = 'copied' if copy else 'symbolic links to the originals'
    if links_failed:
        how = f'copied (symbolic links cannot be made here: {links_failed})'
    report.facts.append(f'images in {out_dir / "images"}: {how}')
    report.facts.append(f'.data: {data_path}')
    report.facts.append(f'next: python3 genanchors.py --data {data_path} --update')
    text = report.text()
    (out_dir / REPORT_NAME).write_text(text, encoding='utf-8')
    # what this run changed on disk goes to the caller, not into the report, so that a rerun writes the same report
    data_note = f' ({data_path.name} kept as it was: it names these classes and files)' if keep_data else ''
    return text, f'{written} files written, {kept} already as they should be{data_note}, in {out_dir}'


def _plan_split(out_dir: Path, split: str, images: list, plan: _Plan, report: Report) -> None:
    list_lines, label_owner = [], {}
    boxes = backgrounds = 0
    for image in sorted(images, key=lambda item: item.relative):
        image_path = out_dir / 'images' / split / image.relative
        # the label goes where the dataset reader looks first, even if the image's own path has an `images` folder
        label_path = Path(label_candidates(image_path)[0])
        if label_path in label_owner:
            report.leave_out('image with the name of another (only the suffix differs), so the same label file',
                             f'{image.source}: {label_path} is the label of {label_owner[label_path]}')
            continue
        label_owner[label_path] = image.source
        plan.files[label_path] = label_text(image.labels).encode('utf-8')
        plan.images[image_path] = Path(image.source).resolve()
        list_lines.append(f'images/{split}/{image.relative}\n')
        boxes += len(image.labels)
        backgrounds += len(image.labels) == 0
    plan.files[out_dir / f'{split}.txt'] = ''.join(list_lines).encode('utf-8')
    if not list_lines:
        report.facts.append(f'split {split}: no images (train.py needs some; what was left out is listed below)')
    else:
        report.facts.append(f'split {split}: {len(list_lines)} images ({backgrounds} of them backgrounds, without '
                            f'boxes), {boxes} boxes; list {split}.txt')


def _data_text(name: str, source_text: str, data_path: Path, num_classes: int, names_file: str) -> str:
    return (f'# Converted by data/convert.py from {source_text}; what was left out: {REPORT_NAME}\n'
            f'# Next, anchors fitted to these boxes: python3 genanchors.py --data {data_path} --update\n'
            f'# Start from the released COCO weights (the best start measured, docs/benchmarks.md "Training recipes"; '
            f'the class outputs start fresh), with the assigner that scored best from them:\n'
            f'# pre_weights=PATH/coco2017-0.241078ap-model.pth\n# assigner=tal\n'
            f'[name]\nmodel_name={name}\n\n'
            f'[model-configure]\nmodel=yolo-fastestv2\nclasses={num_classes}\nwidth=352\nheight=352\nanchor_num=3\n\n'
            f'[data-configure]\ntrain=train.txt\nval=val.txt\nnames={names_file}\n')


def _data_keys(text: str) -> dict:
    """The values of DATA_KEYS_COMPARED in a .data file's text."""
    values = {}
    for line in text.splitlines():
        key, sep, value = line.partition('=')
        if sep and key.strip() in DATA_KEYS_COMPARED:
            values[key.strip()] = value.split(' #')[0].strip()
    return values


def _links_to(path: Path, original: Path) -> bool:
    return path.is_symlink() and Path(os.readlink(path)) == original


def _copy_of(path: Path, original: Path) -> bool:
    """A file, not a link, of the original's size: a copy an earlier run made."""
    return not path.is_symlink() and path.is_file() and path.stat().st_size == original.stat().st_size


def _place_images(images: dict, copy: bool) -> tuple[int, str]:
    """Link (or copy) every image not already in place: a copy is kept either way, a link is replaced by a copy
    when `copy`. Returns (how many were placed, why links failed or '')."""
    placed, links_failed = 0, ''
    for path, original in images.items():
        if _copy_of(path, original) or (_links_to(path, original) and not copy):
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if os.path.lexists(path):
            path.unlink()
        if not copy and not links_failed:
            try:
                path.symlink_to(original)
                placed += 1
                continue
            except OSError as error:
                links_failed = error.strerror or str(error)
        shutil.copy2(original, path)
        placed += 1
    return placed, links_failed
