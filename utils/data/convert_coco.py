"""COCO detection JSON -> the images and labels of a Darknet dataset (written by convert_output.py).

One JSON file per split (COCO's instances_train2017.json and instances_val2017.json, Roboflow's or CVAT's export),
each with the folder its `file_name`s are relative to (sub-folders in `file_name` are kept in the output). Given
only a train file, a `val_fraction` of its images, chosen by a hash of their paths, is the val split.

Classes: the categories sorted by id are classes 0..N-1 (COCO 2017's 80 categories, ids 1..90 with gaps, become
Darknet's usual 80-class order); the report lists the mapping. The train and val files must have the same
categories. A box is `bbox` = [x, y, width, height] in pixels from the image's top-left corner, clipped to the
image; one with no area left is left out.

Left out, counted and named in the report: `iscrowd` regions (a crowd box covers many objects: training it as one
object would teach a wrong box), annotations of an image id or category id the file does not define, malformed
entries, and images whose file is missing (with their annotations). Images without annotations are kept as
backgrounds. An image entry without width or height gets them from the image itself.
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path, PurePosixPath

from utils.data.convert_output import ImageLabels, Report, darknet_labels, split_off_val
from utils.data.dataset import read_image
from utils.errors import DatasetError


def read_coco(train_json: Path, train_images: Path | None = None, val_json: Path | None = None,
              val_images: Path | None = None, val_fraction: float = 0.1) -> tuple[dict, list, Report]:
    """Read the COCO files (image folders default to each file's own folder). Returns ({'train': [ImageLabels],
    'val': [...]}, the class names, the report so far)."""
    report = Report(f'data/convert.py coco: {Path(train_json).resolve()}'
                    + (f', {Path(val_json).resolve()}' if val_json else ''))
    sources = {'train': (Path(train_json), train_images)}
    if val_json is not None:
        sources['val'] = (Path(val_json), val_images)
    data, categories = {}, None
    for split, (json_path, _) in sources.items():
        data[split] = _load(json_path)
        these = _categories(data[split], json_path)
        if categories is not None and these != categories:
            raise DatasetError(f'{json_path}: its categories differ from those of {train_json} (the splits must '
                               f'share one class list)')
        categories = these
    class_index = {category_id: i for i, (category_id, _) in enumerate(categories)}
    class_names = [name for _, name in categories]
    report.facts.append(f'classes ({len(class_names)}): category id -> class, in the order of the ids: '
                        + ', '.join(f'{cid} {name} -> {i}' for i, (cid, name) in enumerate(categories)))

    splits = {}
    for split, (json_path, images_dir) in sources.items():
        images_dir = Path(images_dir) if images_dir is not None else json_path.parent
        report.facts.append(f'{split} = {json_path.resolve()}, images in {images_dir.resolve()}')
        splits[split] = _convert(data[split], json_path, images_dir, class_index, report)
    if 'val' not in splits:
        val = split_off_val([image.relative for image in splits['train']], val_fraction)
        report.facts.append(f'no val file: val = {len(val)} of {len(splits["train"])} images (--val-fraction '
                            f'{val_fraction:g}, chosen by a hash of the path), train = the others')
        splits = {'train': [i for i in splits['train'] if i.relative not in val],
                  'val': [i for i in splits['train'] if i.relative in val]}
    return splits, class_names, report


def _load(json_path: Path) -> dict:
    try:
        with open(json_path, 'rb') as f:
            data = json.load(f)
    except json.JSONDecodeError as error:
        raise DatasetError(f'{json_path}:{error.lineno}: not valid JSON ({error.msg})') from None
    except UnicodeDecodeError:
        raise DatasetError(f'{json_path}: not a text file (expected COCO JSON)') from None
    except OSError as error:
        raise DatasetError(f'{json_path}: cannot be read ({error.strerror})') from None
    for key in ('images', 'annotations', 'categories'):
        if not isinstance(data, dict) or not isinstance(data.get(key), list):
            raise DatasetError(f'{json_path}: no "{key}" list (not a COCO detection file)')
    return data


def _categories(data: dict, json_path: Path) -> list:
    """[(id, name)] sorted by id."""
    categories = {}
    for number, category in enumerate(data['categories']):
        if not isinstance(category, dict) or not isinstance(category.get('id'), int) \
                or not str(category.get('name', '')).strip():
            raise DatasetError(f'{json_path}: categories[{number}] needs an integer "id" and a "name": {category}')
        if category['id'] in categories:
            raise DatasetError(f'{json_path}: category id {category["id"]} is given twice')
        categories[category['id']] = str(category['name']).strip()
    if not categories:
        raise DatasetError(f'{json_path}: the "categories" list is empty')
    return sorted(categories.items())


def _convert(data: dict, json_path: Path, images_dir: Path, class_index: dict, report: Report) -> list:
    images = {}   # id -> image entry
    for number, image in enumerate(data['images']):
        if not isinstance(image, dict) or 'id' not in image or not isinstance(image.get('file_name'), str):
            report.leave_out('image entry without an "id" or "file_name"', f'{json_path}: images[{number}]')
        elif image['id'] in images:
            report.leave_out('image id given twice (the first kept)', f'{json_path}: images[{number}] id {image["id"]}')
        else:
            images[image['id']] = image
    annotations = defaultdict(list)   # image id -> [(where, annotation)]
    for number, annotation in enumerate(data['annotations']):
        if not isinstance(annotation, dict) or 'image_id' not in annotation:
            report.leave_out('annotation without an "image_id"', f'{json_path}: annotations[{number}]')
            continue
        where = f'{json_path}: annotation id {annotation.get("id", f"[{number}]")}'
        if annotation['image_id'] not in images:
            report.leave_out('annotation of an image id not in "images"', f'{where}: image_id {annotation["image_id"]}')
        else:
            annotations[annotation['image_id']].append((where, annotation))

    converted, missing = [], []
    for image_id, image in sorted(images.items(), key=lambda item: item[1]['file_name']):
        relative = PurePosixPath(image['file_name'].replace('\\', '/'))
        image_path = images_dir / relative
        count = len(annotations[image_id])
        if relative.is_absolute() or '..' in relative.parts:
            report.leave_out('image whose file_name leaves the image folder',
                             f'{json_path}: image id {image_id}: "{image["file_name"]}" ({count} annotations)')
        elif not image_path.is_file():
            missing.append(image_path)
            report.leave_out('image file not found (its annotations too)',
                             f'{json_path}: image id {image_id}: {image_path} ({count} annotations)')
        else:
            labels = _labels(image, image_path, annotations[image_id], class_index, report)
            if labels is not None:
                converted.append(ImageLabels(image_path, relative.as_posix(), labels))
    if images and len(missing) == len(images):
        raise DatasetError(f'{json_path}: none of its {len(images)} images is in {images_dir} (the first: '
                           f'{missing[0]}); give the folder the file_names are relative to')
    return converted


def _labels(image: dict, image_path: Path, annotations: list, class_index: dict, report: Report):
    width, height = image.get('width'), image.get('height')
    if not (isinstance(width, (int, float)) and isinstance(height, (int, float)) and width > 0 and height > 0):
        try:
            height, width = read_image(image_path).shape[:2]
        except DatasetError as error:
            report.leave_out('image without width and height that cannot be read', str(error))
            return None
        report.change('width and height missing from the image entry, read from the image',
                      f'{image_path}: {width} x {height}')
    classes, boxes_xyxy_px, where = [], [], []
    for item, annotation in annotations:
        box = annotation.get('bbox')
        if annotation.get('iscrowd', 0):
            report.leave_out('crowd region (iscrowd 1)', f'{item} in {image["file_name"]}')
        elif annotation.get('category_id') not in class_index:
            report.leave_out('annotation of a category id not in "categories"',
                             f'{item}: category_id {annotation.get("category_id")}')
        elif not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
            report.leave_out('annotation without a "bbox" of 4 numbers', f'{item}: bbox {box}')
        else:
            x, y, w, h = box
            classes.append(class_index[annotation['category_id']])
            boxes_xyxy_px.append((x, y, x + w, y + h))
            where.append(f'{item} in {image["file_name"]}')
    return darknet_labels(classes, boxes_xyxy_px, float(width), float(height), report, where)
