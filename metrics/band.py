"""The Trimap IoU band of one label map as a boolean mask, in numpy (torch-free: the report's viewer draws it).

The band is defined once, in `metrics.segmentation`'s module docstring (Trimap IoU, both profiles);
`SegmentationMetrics` counts its trimap confusion over exactly these pixels (tests/test_viewer_images.py checks it
on random maps).

Example:
    >>> target = np.zeros((6, 8), np.uint8); target[:, 4:] = 1
    >>> trimap_band(target, num_classes=2, boundary_px=1).sum(1)  # columns 2..5 of every row
    array([4, 4, 4, 4, 4, 4])
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from utils.conventions import IGNORE_INDEX


def trimap_band(target: np.ndarray, num_classes: int, boundary_px: int, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """(H, W) integer train ids -> (H, W) bool: the Trimap IoU band of `metrics.segmentation` (module docstring)."""
    target = np.asarray(target)
    valid = (target != ignore_index) & (target >= 0) & (target < num_classes)
    contour = interclass_contour(target, valid)
    size = 2 * boundary_px + 1
    return ndimage.maximum_filter(contour, size=size, mode="constant", cval=False) & valid


def interclass_contour(label: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(H, W) labels and (H, W) bool validity -> (H, W) bool: the pixels with a 4-neighbour inside the image that
    holds a different label, both valid (the contour of `metrics.segmentation`'s Trimap IoU)."""
    contour = np.zeros(label.shape, bool)
    for axis in (0, 1):
        before = [slice(None)] * 2
        after = [slice(None)] * 2
        before[axis], after[axis] = slice(None, -1), slice(1, None)
        before, after = tuple(before), tuple(after)
        edge = (label[before] != label[after]) & valid[before] & valid[after]
        contour[before] |= edge
        contour[after] |= edge
    return contour
