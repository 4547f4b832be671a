"""Detections drawn on an image with OpenCV: boxes and `name score` tags in one fixed colour per class."""
from __future__ import annotations

import cv2
import numpy as np


def class_colour(cls: int) -> tuple:
    """A fixed, well-spread BGR colour per class (golden-ratio steps around the hue circle)."""
    hue = int((cls * 0.618033988749895 % 1.0) * 180)
    return tuple(int(v) for v in cv2.cvtColor(np.uint8([[[hue, 220, 230]]]), cv2.COLOR_HSV2BGR)[0, 0])


def draw_detections(image_bgr: np.ndarray, detections: np.ndarray, class_names) -> np.ndarray:
    """A copy of the image with each (x1, y1, x2, y2, score, class) box and a 'name score' tag drawn on it.
    Tags are drawn on a filled box of the class colour with black or white text, whichever contrasts more,
    so they stay readable on any background."""
    canvas = image_bgr.copy()
    height, width = canvas.shape[:2]
    thickness = max(1, round(max(width, height) / 400))
    font_scale = max(0.4, max(width, height) / 1200)
    for x1, y1, x2, y2, score, cls in detections.tolist():
        colour = class_colour(int(cls))
        name = class_names[int(cls)] if int(cls) < len(class_names) else str(int(cls))
        top_left, bottom_right = (int(round(x1)), int(round(y1))), (int(round(x2)), int(round(y2)))
        cv2.rectangle(canvas, top_left, bottom_right, colour, thickness, cv2.LINE_AA)
        text = f'{name} {score:.2f}'
        (text_w, text_h), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thickness)
        # the tag sits above the box, or inside it when the box touches the top edge
        tag_y = top_left[1] - text_h - baseline if top_left[1] - text_h - baseline >= 0 else top_left[1]
        tag_x = min(max(top_left[0], 0), max(width - text_w, 0))
        cv2.rectangle(canvas, (tag_x, tag_y), (tag_x + text_w, tag_y + text_h + baseline), colour, -1)
        luminance = 0.114 * colour[0] + 0.587 * colour[1] + 0.299 * colour[2]
        text_colour = (0, 0, 0) if luminance > 128 else (255, 255, 255)
        cv2.putText(canvas, text, (tag_x, tag_y + text_h), cv2.FONT_HERSHEY_SIMPLEX, font_scale, text_colour,
                    thickness, cv2.LINE_AA)
    return canvas
