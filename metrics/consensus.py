"""Connected components of label maps: fragments per image (in all or per class), the study's consensus (veto)
filter, and the pixel-wise majority vote and agreement of N prediction maps. Torch-free.

One multi-label pass of `cc3d.connected_components` (connected-components-3d) labels the 8-connected components
of every class at once (a component never spans two classes), so neither function loops over classes or
components in Python.

Example:
    >>> import numpy as np
    >>> label_map = np.zeros((4, 6), np.uint8); label_map[1:3, 1:3] = 13; label_map[0, 5] = 13
    >>> count_fragments(label_map, num_classes=14)  # class 0 (one piece, holes allowed) + two pieces of 13
    3
"""
from __future__ import annotations

import cc3d
import numpy as np

from utils.conventions import IGNORE_INDEX

REASSIGN_MODES = ("veto", "ignore")  # what a dropped component's pixels become (cc_veto, evaluate.py --reassign)


def _components(label_map: np.ndarray, num_classes: int, skip=()) -> tuple[np.ndarray, int]:
    """(component id per pixel, 0 = none; number of components) of the 8-connected components of every class
    0..C-1 of an (H, W) integer map; values outside 0..C-1 and the classes in `skip` belong to no component."""
    if label_map.ndim != 2:
        raise ValueError(f"expected an (H, W) label map, got shape {label_map.shape}")
    if not np.issubdtype(label_map.dtype, np.integer):
        raise ValueError(f"expected an integer label map, got {label_map.dtype}")
    # cc3d treats 0 as background: classes become 1..C, everything else 0 (a lookup table for 8-bit maps, the
    # dtype predictions travel in).
    code_dtype = np.uint8 if num_classes < 255 else np.uint16
    if label_map.dtype == np.uint8:
        table = np.zeros(256, code_dtype)
        table[:num_classes] = np.arange(1, min(num_classes, 256) + 1)
        table[list(skip)] = 0
        codes = table[label_map]
    else:
        keep = (label_map >= 0) & (label_map < num_classes)
        if skip:
            keep &= ~np.isin(label_map, np.asarray(skip))
        codes = np.where(keep, label_map + 1, 0).astype(code_dtype)
    ids, count = cc3d.connected_components(codes, connectivity=8, return_N=True)
    return ids, int(count)


def count_fragments(label_map: np.ndarray, num_classes: int) -> int:
    """The number of 8-connected components of `label_map == c`, summed over the classes c in 0..C-1.

    Args:
        label_map: (H, W) integer map (a prediction); values outside 0..C-1 (e.g. an ignore index) count for no
            class.
        num_classes: C.
    """
    return _components(np.asarray(label_map), num_classes)[1]


def fragments_per_class(label_map: np.ndarray, num_classes: int) -> np.ndarray:
    """(C,) int64: entry c is the number of 8-connected components of `label_map == c` (their sum is
    `count_fragments`; values outside 0..C-1 count for no class).

    Example:
        >>> label_map = np.zeros((4, 6), np.uint8); label_map[1:3, 1:3] = 2; label_map[0, 5] = 2
        >>> fragments_per_class(label_map, num_classes=3).tolist()
        [1, 0, 2]
    """
    label_map = np.asarray(label_map)
    ids, count = _components(label_map, num_classes)
    component_class = np.zeros(count + 1, np.int64)  # every pixel of a component holds its class
    component_class[ids.ravel()] = label_map.ravel()
    return np.bincount(component_class[1:], minlength=num_classes).astype(np.int64)


def cc_veto(primary: np.ndarray, veto: np.ndarray, num_classes: int, protect: tuple[int, ...] = (),
            max_drop_size: int | None = None, reassign: str = "veto",
            ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """The consensus filter "primary vetoed by veto": drop the primary's components the veto does not support.

    For each class c not in `protect`, every 8-connected component of `primary == c` without a single pixel
    where `veto == c` is dropped, unless `max_drop_size` is set and the component has more pixels than that.
    A dropped component's pixels take the veto's labels (`reassign="veto"`) or `ignore_index` ("ignore").

    Args:
        primary, veto: (H, W) integer label maps of the same shape (predicted train ids).
        num_classes: C; primary values outside 0..C-1 are never dropped.
        protect: train ids whose components are always kept: the dataset's thin classes, which a veto would
            erase (the caller's choice; evaluate.py: `engine.consensus.protect_indices`).
        max_drop_size: only components of at most this many pixels can be dropped (None: any size).
        reassign: one of REASSIGN_MODES, "veto" or "ignore".
        ignore_index: the label "ignore" writes.

    Returns:
        A new (H, W) map of primary's dtype (the inputs are not changed).
    """
    primary, veto = np.asarray(primary), np.asarray(veto)
    if primary.shape != veto.shape:
        raise ValueError(f"primary {primary.shape} and veto {veto.shape} differ in shape")
    if reassign not in REASSIGN_MODES:
        raise ValueError(f"reassign={reassign!r}: use one of {', '.join(REASSIGN_MODES)}")
    ids, count = _components(primary, num_classes, skip=tuple(protect))
    ids = ids.ravel()
    supported = np.bincount(ids[veto.ravel() == primary.ravel()], minlength=count + 1) > 0  # some veto == c pixel
    drop = ~supported
    if max_drop_size is not None:
        drop &= np.bincount(ids, minlength=count + 1) <= max_drop_size
    drop[0] = False  # id 0: pixels of no component (protected classes, out-of-range values)
    dropped = drop[ids].reshape(primary.shape)
    out = primary.copy()
    out[dropped] = veto[dropped] if reassign == "veto" else ignore_index
    return out


def _votes(preds, num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(stack (N, H, W), majority label (H, W) with -1 where no voter is valid, its vote count (H, W))."""
    if len(preds) == 0:
        raise ValueError("expected at least one prediction map, got none")
    stack = np.stack([np.asarray(p) for p in preds])
    if stack.ndim != 3 or not np.issubdtype(stack.dtype, np.integer):
        raise ValueError(f"expected (H, W) integer maps of one shape, got {stack.dtype} maps of shape "
                         f"{stack.shape[1:]}")
    valid = (stack >= 0) & (stack < num_classes)
    # Voter i's support: how many voters emit its label (0 for an invalid label). A loop over the N voters
    # (a handful of seeds), not over the classes.
    support = np.stack([((stack == s) & valid).sum(0) * v for s, v in zip(stack, valid)])  # (N, H, W)
    count = support.max(0)
    candidates = np.where(valid & (support == count), stack, num_classes)  # the labels with the most votes
    label = candidates.min(0)  # ties: the lowest class id
    return stack, np.where(count > 0, label, -1), count


def majority_vote(preds, num_classes: int, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """The pixel-wise majority vote of N label maps (an ensemble of seeds or models), as the study defines it.

    At each pixel the winner is the class in 0..C-1 emitted by the most maps; ties go to the lowest class id;
    values outside 0..C-1 (an ignore index) cast no vote, and a pixel where no map emits a class gets
    `ignore_index`.

    Args:
        preds: N >= 1 (H, W) integer maps of the same shape.
        num_classes: C.
        ignore_index: the label of pixels without a vote.

    Returns:
        An (H, W) map of the inputs' (common) dtype.
    """
    stack, label, count = _votes(preds, num_classes)
    return np.where(count > 0, label, ignore_index).astype(stack.dtype)


def agreement_map(preds, num_classes: int) -> np.ndarray:
    """The pixel-wise agreement of N label maps, as the study defines it: the number of maps that emit the
    `majority_vote` winner, divided by N (1 = unanimous, 1/N = no two maps agree; 0 where no map emits a class
    in 0..C-1). An uncertainty proxy.

    Returns:
        An (H, W) float32 map in [0, 1].
    """
    stack, _, count = _votes(preds, num_classes)
    return (count / len(stack)).astype(np.float32)
