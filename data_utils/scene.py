"""The synthetic street-scene renderer: one frame's image, Cityscapes label ids and instance ids from an RNG.

Each frame is a perspective street: sky, a distant skyline, building facades / walls / fences / hedges
receding along both sidewalks, a road with dashed lane markings, terrain, trees, poles carrying traffic
signs and lights, and cars, trucks, a bus, a tram (train), persons, and riders on bicycles and motorcycles,
painted far to near so nearer objects occlude farther ones, plus void ids: ego vehicle (1), rectification
border (2), static (4), ground (6), parking (9) and rail track (10).

Colours and textures are tied to classes (window grids on buildings, tiles on sidewalks, slats on fences,
leafy noise on vegetation, ...), so a tiny model can learn them from a few dozen frames.

`render_scene` is a pure function of its arguments; `data_utils.synthetic` draws the frames of a dataset from
it and writes them (the Cityscapes layout or an HF DatasetDict).
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np
from scipy.ndimage import zoom

# Label ids (not train ids): the values written into *_gtFine_labelIds.png.
EGO, BORDER, STATIC, GROUND, ROAD, SIDEWALK, PARKING, RAIL = 1, 2, 4, 6, 7, 8, 9, 10
BUILDING, WALL, FENCE, POLE, LIGHT, SIGN, VEGETATION, TERRAIN, SKY = 11, 12, 13, 17, 19, 20, 21, 22, 23
PERSON, RIDER, CAR, TRUCK, BUS, TRAIN, MOTORCYCLE, BICYCLE = 24, 25, 26, 27, 28, 31, 32, 33

BUILDING_COLOURS = [(128, 110, 95), (150, 140, 125), (105, 100, 98), (170, 160, 140), (122, 92, 80)]
CAR_COLOURS = [(30, 45, 110), (160, 160, 165), (150, 25, 30), (28, 28, 32), (215, 215, 220), (50, 90, 60)]
CLOTHES = [(180, 40, 40), (40, 60, 150), (60, 120, 60), (200, 170, 60), (90, 90, 90), (150, 80, 150)]


class Canvas:
    """Image, label ids and instance ids of one frame, painted shape by shape (later shapes occlude)."""

    def __init__(self, height: int, width: int, rng: np.random.Generator):
        self.h, self.w, self.rng = height, width, rng
        self.image = np.zeros((height, width, 3), np.float32)
        self.label = np.zeros((height, width), np.uint8)
        self.inst = np.zeros((height, width), np.uint16)
        self.fine = rng.standard_normal((height, width, 3), dtype=np.float32)  # per-pixel grain
        coarse = rng.standard_normal((height // 16 + 2, width // 16 + 2), dtype=np.float32)
        self.blotch = zoom(coarse, 16, order=1)[:height, :width, None]  # smooth low-frequency field
        self.instances: dict[int, int] = defaultdict(int)

    def clip_box(self, y0, y1, x0, x1) -> tuple[int, int, int, int] | None:
        y0, y1 = max(0, int(round(y0))), min(self.h, int(round(y1)))
        x0, x1 = max(0, int(round(x0))), min(self.w, int(round(x1)))
        return (y0, y1, x0, x1) if y0 < y1 and x0 < x1 else None

    def grid(self, box):
        y0, y1, x0, x1 = box
        return np.mgrid[y0:y1, x0:x1].astype(np.float32)  # (2, h, w): yy, xx

    def paint(self, box, mask, label_id: int, colour, noise: float = 6.0, blotch: float = 0.0,
              pattern: np.ndarray | None = None, instance: int | None = None) -> None:
        """Paint `colour` (+ texture) and `label_id` where `mask` (local to `box`; None = all of it) holds.

        pattern: optional (h, w, 3) additive texture for the box. instance: an instance number, or None to
        write the label id itself into the instance map.
        """
        if box is None:
            return
        y0, y1, x0, x1 = box
        if mask is None:
            mask = np.ones((y1 - y0, x1 - x0), bool)
        if not mask.any():
            return
        tex = np.asarray(colour, np.float32) + noise * self.fine[y0:y1, x0:x1][mask]  # texture at masked pixels only
        if blotch:
            tex += blotch * self.blotch[y0:y1, x0:x1][mask]
        if pattern is not None:
            tex += np.broadcast_to(pattern, (y1 - y0, x1 - x0, pattern.shape[-1]))[mask]
        self.image[y0:y1, x0:x1][mask] = tex
        self.label[y0:y1, x0:x1][mask] = label_id
        self.inst[y0:y1, x0:x1][mask] = label_id * 1000 + instance if instance is not None else label_id

    def new_instance(self, label_id: int) -> int:
        k = self.instances[label_id]
        self.instances[label_id] += 1
        return k

    # -- shapes: each returns (box, local mask) -----------------------------------------------------------
    def rect(self, y0, y1, x0, x1):
        return self.clip_box(y0, y1, x0, x1), None

    def ellipse(self, cy, cx, ry, rx):
        ry, rx = max(ry, 0.7), max(rx, 0.7)
        box = self.clip_box(cy - ry, cy + ry + 1, cx - rx, cx + rx + 1)
        if box is None:
            return None, None
        yy, xx = self.grid(box)
        return box, ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0

    def ring(self, cy, cx, r, thickness):
        box, outer = self.ellipse(cy, cx, r, r)
        if box is None:
            return None, None
        yy, xx = self.grid(box)
        return box, outer & ((yy - cy) ** 2 + (xx - cx) ** 2 >= max(r - thickness, 0) ** 2)

    def segment(self, ya, xa, yb, xb, thickness):
        """A thick line from (ya, xa) to (yb, xb)."""
        t = thickness / 2 + 0.5
        box = self.clip_box(min(ya, yb) - t, max(ya, yb) + t + 1, min(xa, xb) - t, max(xa, xb) + t + 1)
        if box is None:
            return None, None
        yy, xx = self.grid(box)
        dy, dx = yb - ya, xb - xa
        s = np.clip(((yy - ya) * dy + (xx - xa) * dx) / max(dy * dy + dx * dx, 1e-6), 0, 1)
        return box, (yy - ya - s * dy) ** 2 + (xx - xa - s * dx) ** 2 <= t * t


class Street:
    """Perspective geometry of one frame: horizon, vanishing point, road and sidewalk edges per row."""

    def __init__(self, h: int, w: int, rng: np.random.Generator):
        self.h, self.w = h, w
        self.horizon = h * rng.uniform(0.36, 0.46)
        self.vx = w * rng.uniform(0.42, 0.58)
        depth = h - self.horizon
        self.k_left = (self.vx - w * rng.uniform(0.05, 0.25)) / depth  # road edge slope (px per row)
        self.k_right = (w * rng.uniform(0.75, 0.95) - self.vx) / depth
        self.ks_left = self.k_left * rng.uniform(0.35, 0.6)  # sidewalk width slope
        self.ks_right = self.k_right * rng.uniform(0.35, 0.6)
        self.kv_left = self.k_left * rng.uniform(0.1, 0.25)  # grass verge (terrain) between sidewalk and facades
        self.kv_right = self.k_right * rng.uniform(0.1, 0.25)

    def d(self, y):
        """Rows below the horizon: the pixel size of ~1.3 m (the camera height) at ground row y."""
        return np.maximum(np.asarray(y, np.float32) - self.horizon, 0.0)

    def road(self, y):
        return self.vx - self.d(y) * self.k_left, self.vx + self.d(y) * self.k_right

    def outer(self, y):
        """Outer sidewalk edges (left, right) at row y."""
        left, right = self.road(y)
        return left - self.d(y) * self.ks_left, right + self.d(y) * self.ks_right

    def ground_row(self, x, side: str):
        """The row where the far edge of the verge passes column x (the foot of a facade there)."""
        if side == "left":
            return self.horizon + (self.vx - x) / (self.k_left + self.ks_left + self.kv_left)
        return self.horizon + (x - self.vx) / (self.k_right + self.ks_right + self.kv_right)

    def sample_row(self, rng, low: float, high: float) -> float:
        """A ground row at a fraction in [low, high] of the way from the horizon to the bottom."""
        return self.horizon + rng.uniform(low, high) * (self.h - self.horizon)


# -- scene parts -------------------------------------------------------------------------------------------
def _sky_and_skyline(cv: Canvas, st: Street, rng) -> None:
    box = cv.clip_box(0, cv.h, 0, cv.w)
    yy, _ = cv.grid(box)
    t = np.clip(yy / max(st.horizon, 1), 0, 1)[..., None]
    gradient = (1 - t) * np.array([110, 150, 205], np.float32) + t * np.array([185, 205, 230], np.float32)
    cv.paint(box, None, SKY, (0, 0, 0), noise=2.0, blotch=4.0, pattern=gradient)
    x = 0.0
    while x < cv.w:  # distant buildings, tops at random heights above the horizon
        bw = cv.w * rng.uniform(0.05, 0.14)
        top = st.horizon - cv.h * rng.uniform(0.06, 0.25)
        colour = np.array(BUILDING_COLOURS[rng.integers(len(BUILDING_COLOURS))]) * 0.9
        cv.paint(*cv.rect(top, st.horizon + 2, x, x + bw), BUILDING, colour, noise=4.0)
        x += bw


def _ground(cv: Canvas, st: Street, rng) -> None:
    """Terrain below the horizon, then sidewalks, road (with lane dashes) and a parking area."""
    box = cv.clip_box(st.horizon, cv.h, 0, cv.w)
    if box is None:
        return
    cv.paint(box, None, TERRAIN, (135, 165, 75), noise=10.0, blotch=12.0)
    yy, xx = cv.grid(box)
    road_l, road_r = st.road(yy)
    out_l, out_r = st.outer(yy)
    tiles = ((xx.astype(int) % 9 == 0) | (yy.astype(int) % 7 == 0))[..., None] * np.float32(-25.0)
    cv.paint(box, (xx >= out_l) & (xx < out_r), SIDEWALK, (165, 155, 160), noise=5.0, pattern=tiles)
    road = (xx >= road_l) & (xx < road_r)
    cv.paint(box, road, ROAD, (80, 75, 85), noise=7.0, blotch=4.0)
    # Dashed centre line: dash on/off by distance along the road, which grows like 1/(rows below horizon).
    centre = (road_l + road_r) / 2
    distance = 60.0 / (st.d(yy) + 0.5)
    on_line = np.abs(xx - centre) <= np.maximum(0.01 * (road_r - road_l), 0.6)
    dash = road & on_line & (np.floor(distance / 0.6) % 2 == 0)
    cv.paint(box, dash, ROAD, (225, 225, 215), noise=4.0)
    # Parking (void 9): a stretch of one sidewalk's inner half, with white bay lines.
    side = rng.choice(["left", "right"])
    y0, y1 = st.sample_row(rng, 0.25, 0.45), st.sample_row(rng, 0.6, 0.9)
    in_rows = (yy >= y0) & (yy < y1)
    half = (xx >= out_l + 0.5 * (road_l - out_l)) & (xx < road_l) if side == "left" else \
        (xx >= road_r) & (xx < road_r + 0.5 * (out_r - road_r))
    lines = (yy.astype(int) % 12 == 0)[..., None] * np.float32(70.0)
    cv.paint(box, in_rows & half, PARKING, (150, 130, 135), noise=5.0, pattern=lines)


def _side_objects(cv: Canvas, st: Street, rng) -> None:
    """Facades, walls, fences and hedges along both outer sidewalk edges, receding to the vanishing point.

    A segment covers a range of columns; in column x it stands on the ground row where the outer edge passes
    x and rises `height_factor` times that row's depth (its height in units of the camera height).
    """
    kinds = {"building": (BUILDING, (4.0, 8.0)), "wall": (WALL, (0.9, 1.2)), "fence": (FENCE, (0.7, 1.0)),
             "hedge": (VEGETATION, (0.9, 1.4))}
    fence_left = rng.random() < 0.5  # a wall on one side, a fence on the other: both appear in every frame
    for side in ("left", "right"):
        must = "fence" if (side == "left") == fence_left else "wall"
        plan = ["building", "building", rng.choice(["hedge", "building", "wall", "fence"])]
        rng.shuffle(plan)
        plan.insert(int(rng.integers(2)), must)  # among the two nearest segments, so it stays visible
        if side == "right":
            plan.reverse()  # segments run left to right in columns: the near end is at the right edge
        lo, hi = (0.0, st.vx * 0.93) if side == "left" else (st.vx + (cv.w - st.vx) * 0.07, float(cv.w))
        cuts = np.sort(rng.uniform(lo, hi, len(plan) - 1))
        edges = np.concatenate([[lo], cuts, [hi]])
        for kind, xa, xb in zip(plan, edges[:-1], edges[1:]):
            label_id, (hmin, hmax) = kinds[kind]
            box = cv.clip_box(0, cv.h, xa, xb)
            if box is None:
                continue
            yy, xx = cv.grid(box)
            bottom = st.ground_row(xx, side)
            top = bottom - rng.uniform(hmin, hmax) * st.d(bottom)
            mask = (yy >= top) & (yy < bottom)
            if kind == "building":
                colour = BUILDING_COLOURS[rng.integers(len(BUILDING_COLOURS))]
                period = rng.uniform(7, 12)
                # Windows: a grid in (row, column) that shrinks with depth like the facade itself.
                u = (bottom - yy) / np.maximum(st.d(bottom), 1) * 6
                v = xx / period
                windows = ((u % 1.3 < 0.6) & (v % 1.0 < 0.5) & (u > 0.8))[..., None]
                cv.paint(box, mask, BUILDING, colour, noise=5.0, blotch=6.0,
                         pattern=windows * (np.array([45, 55, 70], np.float32) - np.array(colour, np.float32)))
            elif kind == "wall":
                courses = ((yy.astype(int) % 5) == 0)[..., None] * np.float32(-30.0)
                cv.paint(box, mask, WALL, (180, 175, 165), noise=5.0, pattern=courses)
            elif kind == "fence":
                slats = ((xx.astype(int) % 4) < 2)[..., None] * np.float32(-45.0)
                cv.paint(box, mask, FENCE, (145, 118, 88), noise=5.0, pattern=slats)
            else:
                cv.paint(box, mask, VEGETATION, (55, 105, 40), noise=22.0, blotch=15.0)


def _tree(cv: Canvas, st: Street, rng, side: str) -> None:
    y = st.sample_row(rng, 0.1, 0.45)
    d = st.d(y)
    out_l, out_r = st.outer(y)
    road_l, road_r = st.road(y)
    x = out_l + 0.3 * (road_l - out_l) if side == "left" else out_r - 0.3 * (out_r - road_r)
    trunk_w = max(2.0, 0.1 * d)
    top = y - 2.2 * d
    cv.paint(*cv.ellipse(y, x, 0.06 * d + 1, 0.35 * d + 2), GROUND, (125, 100, 80), noise=9.0)  # tree pit, void 6
    cv.paint(*cv.rect(top, y, x - trunk_w / 2, x + trunk_w / 2), VEGETATION, (85, 65, 45), noise=8.0)
    cv.paint(*cv.ellipse(top, x, 0.9 * d + 2, 1.1 * d + 2), VEGETATION, (55, 105, 40), noise=22.0, blotch=15.0)


def _pole(cv: Canvas, st: Street, rng, y: float, side: str, carries: str) -> None:
    """A pole near the kerb carrying a traffic sign or a traffic light at its top."""
    d = st.d(y)
    road_l, road_r = st.road(y)
    out_l, out_r = st.outer(y)
    x = road_l - 0.2 * (road_l - out_l) if side == "left" else road_r + 0.2 * (out_r - road_r)
    pole_w = max(2.0, 0.07 * d)
    top = max(y - 3.0 * d, 0.04 * cv.h)
    cv.paint(*cv.rect(top, y, x - pole_w / 2, x + pole_w / 2), POLE, (125, 125, 130), noise=4.0)
    size = max(5.0, 0.45 * d)
    if carries == "sign":
        shape = rng.integers(3)
        if shape == 0:  # round prohibition sign: red ring, white face
            cv.paint(*cv.ellipse(top, x, size / 2, size / 2), SIGN, (235, 235, 235), noise=3.0)
            cv.paint(*cv.ring(top, x, size / 2, max(1.0, size / 6)), SIGN, (205, 30, 30), noise=3.0)
        else:  # rectangular information sign: blue or yellow
            colour = (30, 80, 190) if shape == 1 else (230, 210, 30)
            cv.paint(*cv.rect(top - size / 2, top + size / 2, x - size * 0.6, x + size * 0.6), SIGN, colour, noise=3.0)
    else:
        bw, bh = max(3.0, 0.3 * size), max(6.0, 0.8 * size)
        cv.paint(*cv.rect(top, top + bh, x - bw, x + bw), LIGHT, (35, 35, 35), noise=3.0)
        lamp = [(230, 40, 30), (240, 170, 20), (40, 200, 80)][rng.integers(3)]
        cv.paint(*cv.ellipse(top + bh * rng.choice([0.2, 0.5, 0.8]), x, bw * 0.6, bw * 0.6), LIGHT, lamp, noise=3.0)


def _road_x(cv: Canvas, st: Street, y: float, frac: float, width: float) -> float:
    """Centre column of an object `width` px wide at lateral position `frac` (0 = left kerb .. 1 = right kerb)."""
    road_l, road_r = st.road(y)
    return float(np.clip(road_l + frac * (road_r - road_l), width / 2, max(width / 2, cv.w - width / 2)))


def _vehicle(cv: Canvas, st: Street, rng, label_id: int, y: float, frac: float,
             size_m: tuple[float, float, float], colour, view: str, x: float | None = None) -> None:
    """A car / truck / bus / tram: body, windows, wheels, one instance.

    size_m: (length, width, height) in metres (the camera is 1.3 m high); view "side" shows the length,
    "rear" the width. frac places it across the road (0 = left kerb, 1 = right kerb) inside the image;
    an explicit centre column x overrides frac and may put it partly off the image.
    """
    ppm = st.d(y) / 1.3
    w, h = (size_m[0] if view == "side" else size_m[1]) * ppm, size_m[2] * ppm
    x = _road_x(cv, st, y, frac, w) if x is None else x
    x0, x1, k = x - w / 2, x + w / 2, cv.new_instance(label_id)
    paint = lambda shape, col, **kw: cv.paint(*shape, label_id, col, instance=k, **kw)  # noqa: E731
    cab = 0.55 if label_id == CAR else 0.85  # fraction of the height the body covers below the windows
    paint(cv.rect(y - h * cab, y - 0.12 * h, x0, x1), colour, noise=4.0)
    inset = 0.15 * w if label_id == CAR else 0.02 * w
    paint(cv.rect(y - h, y - h * cab, x0 + inset, x1 - inset), colour, noise=4.0)
    glass = (45, 55, 70)
    if label_id in (BUS, TRAIN):  # a band of windows along the upper body
        paint(cv.rect(y - 0.8 * h, y - 0.5 * h, x0 + 0.04 * w, x1 - 0.04 * w), glass, noise=5.0)
        if label_id == TRAIN:
            paint(cv.rect(y - 0.42 * h, y - 0.34 * h, x0, x1), (200, 30, 30), noise=3.0)
    else:
        margin = inset + 0.05 * w
        paint(cv.rect(y - h * 0.95, y - h * (cab + 0.03), x0 + margin, x1 - margin), glass, noise=5.0)
    r = max(1.5, 0.2 * h if label_id == CAR else 0.12 * h)
    for wx in ((x0 + 0.2 * w, x1 - 0.2 * w) if view == "side" else (x0 + 0.12 * w, x1 - 0.12 * w)):
        paint(cv.ellipse(y - r, wx, r, r if view == "side" else r * 0.5), (20, 20, 22), noise=3.0)
    if view == "rear":
        for lx in (x0 + 0.08 * w, x1 - 0.08 * w):
            paint(cv.ellipse(y - 0.45 * h, lx, 0.04 * h + 0.7, 0.04 * w + 0.7), (200, 20, 20), noise=3.0)


def _person(cv: Canvas, st: Street, rng, y: float, x: float, label_id: int = PERSON, seated: bool = False) -> None:
    """A pedestrian (legs, torso, head) or, with seated=True, a rider's upper body whose feet hang at y."""
    ppm = st.d(y) / 1.3
    h, k = 1.75 * ppm, cv.new_instance(label_id)
    paint = lambda shape, col, **kw: cv.paint(*shape, label_id, col, instance=k, **kw)  # noqa: E731
    half = max(1.0, 0.13 * h)
    clothes = CLOTHES[rng.integers(len(CLOTHES))] if label_id == PERSON else (235, 120, 20)
    if not seated:
        paint(cv.rect(y - 0.48 * h, y, x - half, x - half * 0.15), (50, 50, 70), noise=5.0)
        paint(cv.rect(y - 0.48 * h, y, x + half * 0.15, x + half), (50, 50, 70), noise=5.0)
    top = y - (h if not seated else 0.85 * h)
    paint(cv.rect(top + 0.14 * h, top + 0.55 * h, x - half * 1.2, x + half * 1.2), clothes, noise=6.0)
    if seated:  # legs bent down to the pedals
        paint(cv.rect(top + 0.5 * h, y - 0.1 * h, x - half * 0.8, x + half * 0.8), (50, 50, 70), noise=5.0)
    head = (215, 175, 140) if label_id == PERSON else (240, 240, 240)  # riders wear white helmets
    paint(cv.ellipse(top + 0.07 * h, x, 0.075 * h + 0.5, 0.06 * h + 0.5), head, noise=4.0)


def _two_wheeler(cv: Canvas, st: Street, rng, y: float, frac: float, label_id: int) -> None:
    """A bicycle or motorcycle in side view with its rider on top (rider painted after: it occludes)."""
    ppm = st.d(y) / 1.3
    length, r = (1.7 if label_id == BICYCLE else 2.1) * ppm, (0.35 if label_id == BICYCLE else 0.32) * ppm
    x = _road_x(cv, st, y, frac, length)
    xa, xb, cy = x - 0.5 * length + r, x + 0.5 * length - r, y - r
    k = cv.new_instance(label_id)
    paint = lambda shape, col, **kw: cv.paint(*shape, label_id, col, instance=k, **kw)  # noqa: E731
    t = max(1.0, 0.06 * ppm)
    if label_id == BICYCLE:
        for wx in (xa, xb):
            paint(cv.ring(cy, wx, r, t), (20, 20, 20), noise=3.0)
        frame = (120, 20, 30)
        for (p, q) in (((cy, xa), (cy - r, x)), ((cy - r, x), (cy, xb)), ((cy, xa), (cy - 1.1 * r, xa + 0.3 * r)),
                       ((cy - r, x), (cy - 1.4 * r, xb - 0.1 * r))):
            paint(cv.segment(*p, *q, t), frame, noise=3.0)
    else:
        for wx in (xa, xb):
            paint(cv.ellipse(cy, wx, r, r), (25, 25, 25), noise=3.0)
        paint(cv.ellipse(cy - 0.9 * r, x, 0.7 * r, 0.45 * length), (30, 30, 35), noise=4.0)
        paint(cv.ellipse(cy - 0.3 * r, x, 0.35 * r, 0.2 * length), (170, 170, 175), noise=4.0)  # chrome engine
    _person(cv, st, rng, y - 0.9 * r, x, label_id=RIDER, seated=True)


def render_scene(height: int, width: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One street scene: ((H, W, 3) uint8 RGB, (H, W) uint8 label ids, (H, W) uint16 instance ids)."""
    cv, st = Canvas(height, width, rng), Street(height, width, rng)
    _sky_and_skyline(cv, st, rng)
    _ground(cv, st, rng)
    _side_objects(cv, st, rng)
    for side in ("left", "right"):
        _tree(cv, st, rng, side)
    # Everything standing on the ground is painted far (small row) to near, so near objects occlude far
    # ones. Lanes are chosen so that no class is hidden completely: at a far crossing a truck in the middle
    # with a tram (on its rails) and a bus side by side to its left and right, running off the image;
    # poles at the kerbs; cars in the two lanes; two-wheelers along the kerbs; persons on the sidewalks.
    far = st.sample_row(rng, 0.06, 0.1)
    tram_left = rng.random() < 0.5
    sign_side = rng.choice(["left", "right"])
    movers = [("crossing", far, 0.0),
              ("sign", st.sample_row(rng, 0.12, 0.3), 0.0 if sign_side == "left" else 1.0),
              ("light", st.sample_row(rng, 0.12, 0.3), 1.0 if sign_side == "left" else 0.0)]
    movers += [("car", st.sample_row(rng, 0.2, 0.5), rng.choice([0.25, 0.75]) + rng.uniform(-0.08, 0.08))
               for _ in range(rng.integers(2, 4))]
    kerbs = rng.permutation([0.08, 0.92])
    movers += [("motorcycle", st.sample_row(rng, 0.3, 0.6), kerbs[0]),
               ("bicycle", st.sample_row(rng, 0.3, 0.6), kerbs[1])]
    movers += [("static", st.sample_row(rng, 0.2, 0.6), 0.0)]
    movers += [("person", st.sample_row(rng, 0.2, 0.75), 0.0) for _ in range(rng.integers(2, 4))]
    for kind, y, frac in sorted(movers, key=lambda m: m[1]):
        if kind == "crossing":
            ppm = st.d(y) / 1.3
            gap = 1.6 * ppm  # half the truck's width plus a little
            tram_len, bus_len = 14.0 * ppm, 12.0 * ppm
            tram_x = st.vx - gap - tram_len / 2 if tram_left else st.vx + gap + tram_len / 2
            bus_x = st.vx + gap + bus_len / 2 if tram_left else st.vx - gap - bus_len / 2
            x0, x1, depth = tram_x - tram_len / 2, tram_x + tram_len / 2, st.d(y)
            cv.paint(*cv.rect(y - 1, y + 0.25 * depth + 1, x0, x1), RAIL, (110, 95, 85), noise=8.0)  # void 10
            for rail_y in (y + 0.05 * depth, y + 0.2 * depth):
                cv.paint(*cv.rect(rail_y, rail_y + 1, x0, x1), RAIL, (175, 175, 180), noise=3.0)
            _vehicle(cv, st, rng, TRAIN, y, 0.0, (14.0, 2.65, 3.5), (235, 235, 228), "side", x=tram_x)
            bus_colour = [(215, 170, 30), (190, 40, 35)][rng.integers(2)]
            _vehicle(cv, st, rng, BUS, y, 0.0, (12.0, 2.55, 3.2), bus_colour, "side", x=bus_x)
            _vehicle(cv, st, rng, TRUCK, y - 0.2 * st.d(y), 0.5, (8.0, 2.5, 3.4), (215, 210, 195), "rear", x=st.vx)
        elif kind in ("sign", "light"):
            _pole(cv, st, rng, y, "left" if frac < 0.5 else "right", kind)
        elif kind == "car":
            colour = CAR_COLOURS[rng.integers(len(CAR_COLOURS))]
            view = "side" if st.d(y) < 0.3 * (height - st.horizon) and rng.random() < 0.5 else "rear"
            _vehicle(cv, st, rng, CAR, y, frac, (4.2, 1.8, 1.5), colour, view)
        elif kind in ("motorcycle", "bicycle"):
            _two_wheeler(cv, st, rng, y, frac, MOTORCYCLE if kind == "motorcycle" else BICYCLE)
        elif kind == "static":  # a litter bin on the sidewalk (void 4)
            out_l, road_l = st.outer(y)[0], st.road(y)[0]
            x, ppm = rng.uniform(out_l, road_l), st.d(y) / 1.3
            half = 0.3 * ppm + 0.5
            cv.paint(*cv.rect(y - 1.0 * ppm, y, x - half, x + half), STATIC, (70, 90, 70), noise=5.0)
        else:
            side = rng.choice(["left", "right"])
            (out_l, out_r), (road_l, road_r) = st.outer(y), st.road(y)
            x = rng.uniform(out_l, road_l) if side == "left" else rng.uniform(road_r, out_r)
            _person(cv, st, rng, y, x)
    # Ego vehicle (void 1): the bonnet along the bottom edge, curving down towards the sides.
    box = cv.clip_box(height * 0.85, height, 0, width)
    yy, xx = cv.grid(box)
    hood_top = height * (0.9 + 0.06 * ((xx - width / 2) / (width / 2)) ** 2)
    cv.paint(box, yy >= hood_top, EGO, (30, 30, 36), noise=3.0, pattern=(height - yy)[..., None] * 0.5)
    if rng.random() < 0.5:  # rectification border (void 2): black columns along the left edge
        cv.paint(*cv.rect(0, height, 0, 2), BORDER, (0, 0, 0), noise=0.0)
    gain = rng.uniform(0.85, 1.15)  # per-frame exposure
    image = np.clip(cv.image * gain + 2.0 * cv.fine, 0, 255).astype(np.uint8)
    return image, cv.label, cv.inst
