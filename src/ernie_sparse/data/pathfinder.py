"""Long Range Arena Pathfinder at 32x32: generate images, write the release layout, read it back.

Each image holds dashed curves ("snakes") built from short strokes ("paddles") and two round
markers; the label is 1 when both markers sit on the same snake. The generator follows the
LRA recipe (docs: /work/shared/specs/lra-data.md, "Pathfinder"), written from that description.

Geometry at 32x32 (the spec's numbers come from larger canvases, so some need a reading):

* Coordinates are (row, col) floats with pixel centres at integers.
* A snake is a chain of pivots. From pivot ``P`` in direction ``theta`` the candidate directions
  are the pixels on a circle of radius ``paddle_length + margin`` around ``P``; each is weighted
  by ``(1 - blocked) * max(cos(min(|turn| * continuity, pi/2)), 0) ** 2`` and one is sampled.
  The paddle then runs from ``P + margin*u`` to ``P + (margin + paddle_length)*u`` and the next
  pivot lies ``paddle_length + 2*margin`` ahead, so consecutive paddles are ``2*margin`` apart:
  at 32x32 that is the smallest gap that still shows as a dark pixel between dashes.
* ``blocked`` is the occupancy of everything drawn before (other snakes and this snake's own
  paddles except the last one) dilated by ``clearance`` pixels, plus the 1-pixel border.
  ``clearance = 2`` keeps different snakes at least 3 pixels (Chebyshev) apart while gaps within
  a snake are at most one pixel wide, so "same snake" stays well defined after rasterisation.
* Paddles are drawn with a round pen on a 2x supersampled grid and averaged down (anti-aliasing).
  The pen radius is ``thickness / 2`` = 0.25 px raised to half a subpixel's diagonal (0.354 px):
  the smallest pen that lights the pixel holding any point of a paddle. So the markers, which
  sit on the pixels holding the snakes' tips, are pixels of that snake, and a dash gap leaves
  at most one dark pixel, less than the two dark pixels ``clearance`` keeps between snakes.
* The first target seed keeps ``seed_edge_clearance`` (7 = seed_distance) from the edge; the
  spec's 2 x seed_distance would leave only a 4x4 patch of a 32x32 image.

Every image is a function of ``(seed, index, contour_length)`` alone (its own numpy Generator),
so the data set does not depend on the number of worker processes.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..plotting import save_figure
from ..safety import OutsideFolderError, inside
from .base import TaskInfo, TokenDataset
from .errors import BadRecords

DIFFICULTIES = {"easy": 6, "intermediate": 9, "hard": 14}  # contour length (paddles per snake)
# The release's folder names (pathfinder32/curv_baseline, ...); easy is not named by length.
FOLDERS = {
    "easy": "curv_baseline",
    "intermediate": "curv_contour_length_9",
    "hard": "curv_contour_length_14",
}
OLD_FOLDERS = {"easy": "curv_contour_length_6"}  # what ernie-sparse wrote before the fix
NUMPY_MAGIC = b"\x93NUMPY"
IMAGE_SIZE = 32
# Pixels are tokens 0-255 as in LRA's image tasks. Token 0 (black) is also the padding id, which
# is harmless here: every Pathfinder example is exactly 1024 tokens, so batches never hold
# padding, and attention masks come from sequence lengths (collate.py), never from id 0.
TASK_INFO = TaskInfo(
    task="pathfinder", vocab_size=256, num_labels=2, max_length=IMAGE_SIZE * IMAGE_SIZE
)
SPLIT_FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}


def difficulty_dir(difficulty: str) -> str:
    """The release's folder for a difficulty: ``easy`` -> ``curv_baseline``,
    ``intermediate`` -> ``curv_contour_length_9``, ``hard`` -> ``curv_contour_length_14``."""
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"difficulty must be one of {sorted(DIFFICULTIES)}, got {difficulty!r}")
    return FOLDERS[difficulty]


@dataclass(frozen=True)
class PathfinderParams:
    """Every knob of the generator; ``for_difficulty`` gives LRA's three settings."""

    contour_length: int = 14  # paddles per target snake
    image_size: int = IMAGE_SIZE
    paddle_length: float = 2.0
    thickness: float = 0.5
    margin: float = 1.0  # gap on each side of a pivot: dashes are 2 * margin apart
    clearance: int = 2  # pixels kept free around other snakes (dilation radius)
    continuity: float = 1.0
    seed_distance: float = 7.0  # between the two target snakes' start points
    seed_edge_clearance: int = 7  # first target seed keeps this far from the edge
    marker_radius: float = 1.5
    supersample: int = 2
    distractor_budget: int = 20  # 20 // distractor_length distractor snakes
    min_free_fraction: float = 0.01  # stop adding distractors below this
    paddle_retries: int = 8  # overlapping candidates tried before a snake fails
    seed_tries: int = 32  # directions tried for the second target seed
    distractor_tries: int = 4  # seeds tried per distractor before it is dropped
    max_restarts: int = 1000  # failed target pairs before giving up on an image
    n_contrasts: int = 1  # one contrast level: recorded in the metadata, as LRA does

    @classmethod
    def for_difficulty(cls, difficulty: str, **overrides: object) -> PathfinderParams:
        difficulty_dir(difficulty)  # validates the name
        return cls(contour_length=DIFFICULTIES[difficulty], **overrides)

    @property
    def distractor_length(self) -> int:
        return max(1, self.contour_length // 3)

    @property
    def num_distractors(self) -> int:
        return self.distractor_budget // self.distractor_length

    @property
    def pen_radius(self) -> float:
        """``thickness / 2``, but at least half a subpixel's diagonal: the smallest round pen
        that lights the pixel holding any point of a paddle (so tips are snake pixels and the
        pixels at a dash gap are at most 2 apart)."""
        return max(self.thickness / 2, math.sqrt(0.5) / self.supersample)

    @property
    def circle_radius(self) -> float:
        return self.paddle_length + self.margin


@dataclass
class Snake:
    """One drawn snake: its paddles as ((row, col) start, end) segments and its own pixels."""

    paddles: list[tuple[tuple[float, float], tuple[float, float]]]
    mask: np.ndarray  # bool [size, size]: pixels this snake lights
    layer: np.ndarray = field(repr=False)  # float [size, size] anti-aliased intensity

    @property
    def start_tip(self) -> tuple[float, float]:
        return self.paddles[0][0]

    @property
    def end_tip(self) -> tuple[float, float]:
        return self.paddles[-1][1]


@dataclass
class PathfinderSample:
    """An image with the geometry that decided its label (for checks and pictures)."""

    image: np.ndarray  # uint8 [size, size]
    label: int
    targets: tuple[Snake, Snake]
    markers: tuple[tuple[int, int], tuple[int, int]]  # marker centre pixels (row, col)
    marker_snakes: tuple[int, int]  # index into targets of the snake under each marker
    distractors: int  # distractor snakes drawn
    restarts: int  # target pairs thrown away before this one


# ----------------------------------------------------------------------------- drawing


def _unit(theta: float) -> np.ndarray:
    return np.array([math.sin(theta), math.cos(theta)])


def _pixel(point: Sequence[float]) -> tuple[int, int]:
    """The pixel holding a point (pixel k covers [k - 0.5, k + 0.5))."""
    return math.floor(point[0] + 0.5), math.floor(point[1] + 0.5)


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Square (Chebyshev) dilation, written out so the package needs no scipy."""
    rows = mask.copy()
    for shift in range(1, radius + 1):
        rows[shift:] |= mask[:-shift]
        rows[:-shift] |= mask[shift:]
    out = rows.copy()
    for shift in range(1, radius + 1):
        out[:, shift:] |= rows[:, :-shift]
        out[:, :-shift] |= rows[:, shift:]
    return out


def _render_segment(
    p0: np.ndarray, p1: np.ndarray, radius: float, params: PathfinderParams
) -> np.ndarray | None:
    """Intensity of a round-pen segment on the image grid (supersampled, then averaged).

    Returns a full-size float layer, or None when the stroke would leave the image.
    """
    size, ss = params.image_size, params.supersample
    # pixels holding a subpixel centre within ``radius`` of the segment's box, per axis
    lo = np.ceil((np.minimum(p0, p1) - radius + 0.5) * ss - 0.5).astype(int) // ss
    hi = np.floor((np.maximum(p0, p1) + radius + 0.5) * ss - 0.5).astype(int) // ss
    if lo.min() < 0 or hi.max() > size - 1:
        return None
    n_rows, n_cols = hi - lo + 1
    sub_r = lo[0] - 0.5 + (np.arange(n_rows * ss) + 0.5) / ss
    sub_c = lo[1] - 0.5 + (np.arange(n_cols * ss) + 0.5) / ss
    d_r, d_c = sub_r[:, None] - p0[0], sub_c[None, :] - p0[1]
    v = p1 - p0
    length2 = float(v @ v)
    t = np.clip((d_r * v[0] + d_c * v[1]) / length2, 0.0, 1.0) if length2 > 0 else 0.0
    dist2 = (d_r - t * v[0]) ** 2 + (d_c - t * v[1]) ** 2
    lit = (dist2 <= radius * radius + 1e-9).astype(np.float32)  # tolerate rounding at the rim
    block = lit.reshape(n_rows, ss, n_cols, ss).sum(axis=(1, 3)) / (ss * ss)
    layer = np.zeros((size, size), dtype=np.float32)
    layer[lo[0] : hi[0] + 1, lo[1] : hi[1] + 1] = block
    return layer


def _circle_candidates(pivot: np.ndarray, params: PathfinderParams) -> tuple[np.ndarray, ...]:
    """Pixels (inside the image) whose centre lies within half a pixel of the circle."""
    radius, size = params.circle_radius, params.image_size
    reach = math.ceil(radius + 1.5)
    offsets = np.arange(-reach, reach + 1)
    rr = math.floor(pivot[0]) + offsets[:, None] + np.zeros_like(offsets)[None, :]
    cc = math.floor(pivot[1]) + offsets[None, :] + np.zeros_like(offsets)[:, None]
    d_r, d_c = rr - pivot[0], cc - pivot[1]
    dist = np.hypot(d_r, d_c)
    keep = (dist >= radius - 0.5) & (dist < radius + 0.5)
    keep &= (rr >= 0) & (rr < size) & (cc >= 0) & (cc < size)
    return rr[keep], cc[keep], np.arctan2(d_r[keep], d_c[keep])


def _turn_weights(angles: np.ndarray, theta: float, continuity: float) -> np.ndarray:
    """``max(cos(min(|turn| * continuity, pi/2)), 0) ** 2``, exactly 0 from a right angle on
    (``cos(pi/2)`` is 6e-17 in floating point, which would let a snake fold back when every
    other direction is blocked)."""
    bend = np.abs((angles - theta + np.pi) % (2 * np.pi) - np.pi) * continuity
    return np.where(bend < np.pi / 2, np.cos(np.minimum(bend, np.pi / 2)), 0.0) ** 2


# ----------------------------------------------------------------------------- growing


class _Canvas:
    """What is drawn so far: occupancy for the overlap rules and the paddles' intensity."""

    def __init__(self, params: PathfinderParams) -> None:
        size = params.image_size
        self.params = params
        self.border = np.ones((size, size), dtype=bool)
        self.border[1:-1, 1:-1] = False
        self.occupied = np.zeros((size, size), dtype=bool)
        self.layer = np.zeros((size, size), dtype=np.float32)

    def blocked(self, extra: np.ndarray | None = None) -> np.ndarray:
        occupied = self.occupied if extra is None else self.occupied | extra
        return _dilate(occupied, self.params.clearance) | self.border

    def commit(self, snake: Snake) -> None:
        self.occupied |= snake.mask
        np.maximum(self.layer, snake.layer, out=self.layer)


def _paddle_layer(
    start: np.ndarray, end: np.ndarray, blocked: np.ndarray, params: PathfinderParams
) -> np.ndarray | None:
    """The paddle's layer if it stays inside the image and off ``blocked`` pixels."""
    layer = _render_segment(start, end, params.pen_radius, params)
    if layer is None or (blocked & (layer > 0)).any():
        return None
    return layer


def _next_paddle(
    rng: np.random.Generator,
    pivot: np.ndarray,
    theta: float,
    blocked: np.ndarray,
    params: PathfinderParams,
) -> tuple[float, np.ndarray, np.ndarray, np.ndarray] | None:
    """Sample a direction on the candidate circle; (angle, start, end, layer) or None."""
    rows, cols, angles = _circle_candidates(pivot, params)
    weights = (~blocked[rows, cols]) * _turn_weights(angles, theta, params.continuity)
    for _ in range(params.paddle_retries):
        total = weights.sum()
        if total <= 0:
            return None
        pick = int(np.searchsorted(np.cumsum(weights), rng.random() * total, side="right"))
        pick = min(pick, len(weights) - 1)
        angle = float(angles[pick])
        u = _unit(angle)
        start = pivot + params.margin * u
        end = start + params.paddle_length * u
        layer = _paddle_layer(start, end, blocked, params)
        if layer is not None:
            return angle, start, end, layer
        weights[pick] = 0.0
    return None


def _grow_snake(
    rng: np.random.Generator,
    canvas: _Canvas,
    seed: np.ndarray,
    theta: float,
    n_paddles: int,
    reserved: np.ndarray | None = None,
) -> Snake | None:
    """Grow a snake from ``seed``; None when a paddle finds no room (the caller retries)."""
    params = canvas.params
    base = canvas.blocked(reserved)
    u = _unit(theta)
    end = seed + params.paddle_length * u
    layer = _paddle_layer(seed, end, base, params)
    if layer is None:
        return None
    paddles = [(tuple(seed), tuple(end))]
    own_layer, last = layer.copy(), layer > 0
    own_older = np.zeros_like(last)  # own paddles before the last: blocked like other snakes
    pivot = seed + params.circle_radius * u
    for _ in range(n_paddles - 1):
        blocked = base | _dilate(own_older, params.clearance)
        step = _next_paddle(rng, pivot, theta, blocked, params)
        if step is None:
            return None
        theta, start, end, layer = step
        paddles.append((tuple(start), tuple(end)))
        own_older |= last
        last = layer > 0
        np.maximum(own_layer, layer, out=own_layer)
        pivot = end + params.margin * _unit(theta)
    return Snake(paddles=paddles, mask=own_layer > 0, layer=own_layer)


def _random_orientation(rng: np.random.Generator) -> float:
    """A uniform integer orientation in [-180, 180) degrees, as radians."""
    return math.radians(int(rng.integers(-180, 180)))


def _target_seeds(
    rng: np.random.Generator, params: PathfinderParams
) -> tuple[np.ndarray, np.ndarray] | None:
    """First seed away from the edge; the second exactly ``seed_distance`` from it."""
    size, edge = params.image_size, params.seed_edge_clearance
    first = rng.integers(edge, size - edge, size=2).astype(float)
    for _ in range(params.seed_tries):
        second = first + params.seed_distance * _unit(rng.uniform(-math.pi, math.pi))
        if np.all(second >= 1) and np.all(second <= size - 2):
            return first, second
    return None


def _grow_targets(
    rng: np.random.Generator, params: PathfinderParams
) -> tuple[_Canvas, Snake, Snake, int]:
    """Two target snakes; any failure throws the pair away and starts again (bounded)."""
    for restart in range(params.max_restarts):
        canvas = _Canvas(params)
        seeds = _target_seeds(rng, params)
        if seeds is None:
            continue
        first, second = seeds
        reserved = np.zeros_like(canvas.occupied)
        reserved[_pixel(second)] = True
        snake_a = _grow_snake(
            rng, canvas, first, _random_orientation(rng), params.contour_length, reserved
        )
        if snake_a is None:
            continue
        canvas.commit(snake_a)
        snake_b = _grow_snake(rng, canvas, second, _random_orientation(rng), params.contour_length)
        if snake_b is None:
            continue
        canvas.commit(snake_b)
        return canvas, snake_a, snake_b, restart
    raise RuntimeError(
        f"no room for two snakes of {params.contour_length} paddles after "
        f"{params.max_restarts} tries: loosen PathfinderParams"
    )


def _add_distractors(rng: np.random.Generator, canvas: _Canvas) -> int:
    """Short snakes seeded on free pixels; stops early when the image is nearly full."""
    params, drawn = canvas.params, 0
    for _ in range(params.num_distractors):
        for _ in range(params.distractor_tries):
            free = ~canvas.blocked()
            if free.mean() < params.min_free_fraction:
                return drawn
            rows, cols = np.nonzero(free)
            pick = int(rng.integers(len(rows)))
            seed = np.array([rows[pick], cols[pick]], dtype=float)
            snake = _grow_snake(
                rng, canvas, seed, _random_orientation(rng), params.distractor_length
            )
            if snake is not None:
                canvas.commit(snake)
                drawn += 1
                break
    return drawn


def _marker_layer(centres: Sequence[tuple[int, int]], params: PathfinderParams) -> np.ndarray:
    """Discs at the marker pixels. Tips lie off the 1-pixel border, so a disc of radius < 2
    fits in the image."""
    layer = np.zeros((params.image_size, params.image_size), dtype=np.float32)
    for centre in centres:
        point = np.array(centre, dtype=float)
        disc = _render_segment(point, point, params.marker_radius, params)
        if disc is None:
            raise ValueError(f"marker at {centre} does not fit in the image")
        np.maximum(layer, disc, out=layer)
    return layer


def _to_uint8(image: np.ndarray) -> np.ndarray:
    """Min-max scale to 0-255, as the LRA images are."""
    low, high = float(image.min()), float(image.max())
    if high <= low:
        return np.zeros(image.shape, dtype=np.uint8)
    return np.rint((image - low) * (255.0 / (high - low))).astype(np.uint8)


def image_rng(seed: int, index: int, params: PathfinderParams) -> np.random.Generator:
    """The image's own random stream: depends on (seed, index, contour length) only."""
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be >= 0, got seed={seed}, index={index}")
    return np.random.default_rng([seed, index, params.contour_length])


def generate_sample(
    index: int, *, seed: int = 0, params: PathfinderParams | None = None
) -> PathfinderSample:
    """Image ``index`` of the data set drawn with ``seed``, with its geometry."""
    params = params or PathfinderParams()
    rng = image_rng(seed, index, params)
    label = int(rng.random() < 0.5)
    canvas, snake_a, snake_b, restarts = _grow_targets(rng, params)
    distractors = _add_distractors(rng, canvas)
    first = int(rng.integers(2))
    second = first if label else 1 - first
    targets = (snake_a, snake_b)
    markers = (_pixel(targets[first].start_tip), _pixel(targets[second].end_tip))
    image = np.maximum(canvas.layer, _marker_layer(markers, params))
    return PathfinderSample(
        image=_to_uint8(image),
        label=label,
        targets=targets,
        markers=markers,
        marker_snakes=(first, second),
        distractors=distractors,
        restarts=restarts,
    )


# ----------------------------------------------------------------------------- release layout


def _save_png(image: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(path, format="PNG")  # mode L


def _metadata_row(index: int, label: int, params: PathfinderParams, batch_size: int) -> list[str]:
    """``[subdir, file, idx, label, continuity, contour_len, distractor_len, paddle_len,
    thickness, margin, n_contrasts]``; idx is the global index, which regenerates the image."""
    batch, position = divmod(index, batch_size)
    return [
        f"imgs/{batch}",
        f"sample_{position}.png",
        str(index),
        str(label),
        str(params.continuity),
        str(params.contour_length),
        str(params.distractor_length),
        str(params.paddle_length),
        str(params.thickness),
        str(params.margin),
        str(params.n_contrasts),
    ]


def _write_chunk(
    folder: str, params: PathfinderParams, seed: int, indices: range, batch_size: int
) -> list[list[str]]:
    """Draw and save images ``indices`` (one worker's share); returns their metadata rows."""
    rows = []
    for index in indices:
        sample = generate_sample(index, seed=seed, params=params)
        row = _metadata_row(index, sample.label, params, batch_size)
        path = Path(folder, row[0], row[1])
        path.parent.mkdir(parents=True, exist_ok=True)
        _save_png(sample.image, path)
        rows.append(row)
    return rows


def _chunks(num: int, workers: int, batch_size: int) -> list[range]:
    """Pieces small enough to balance the workers; any piece may straddle batch folders."""
    size = max(1, min(batch_size, math.ceil(num / (4 * workers))))
    return [range(start, min(start + size, num)) for start in range(0, num, size)]


def _check_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def generate_pathfinder(
    out_dir: str | Path,
    *,
    difficulty: str = "hard",
    num: int = 1000,
    seed: int = 0,
    workers: int = 1,
    batch_size: int = 1000,
    params: PathfinderParams | None = None,
) -> dict:
    """Write ``num`` images in LRA's layout under ``out_dir``; returns counts and timing.

    Refuses a folder that already holds metadata, so two runs never mix in one data set.
    """
    folder = Path(out_dir) / difficulty_dir(difficulty)
    for name, value in (("num", num), ("workers", workers), ("batch_size", batch_size)):
        _check_positive(name, value)
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    if params is None:
        params = PathfinderParams.for_difficulty(difficulty)
    elif params.contour_length != DIFFICULTIES[difficulty]:
        raise ValueError(f"params.contour_length {params.contour_length} != {difficulty}")
    if any((folder / "metadata").glob("*.npy")):
        raise ValueError(f"out_dir {folder} already holds a Pathfinder set; use a new folder")
    started = time.perf_counter()
    rows = _run_chunks(
        str(folder), params, seed, _chunks(num, workers, batch_size), workers, batch_size
    )
    _write_metadata(folder, rows, batch_size)
    seconds = time.perf_counter() - started
    positives = sum(int(row[3]) for row in rows)
    return {
        "folder": str(folder),
        "difficulty": difficulty,
        "num": num,
        "seed": seed,
        "workers": workers,
        "batches": math.ceil(num / batch_size),
        "positives": positives,
        "label_balance": positives / num,
        "seconds": seconds,
        "images_per_second": num / seconds,
        "images_per_second_per_worker": num / seconds / workers,
    }


def _run_chunks(
    folder: str,
    params: PathfinderParams,
    seed: int,
    chunks: list[range],
    workers: int,
    batch_size: int,
) -> list[list[str]]:
    if workers == 1:
        return [
            row for chunk in chunks for row in _write_chunk(folder, params, seed, chunk, batch_size)
        ]
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers) as pool:
        futures = [
            pool.submit(_write_chunk, folder, params, seed, chunk, batch_size) for chunk in chunks
        ]
        return [row for future in futures for row in future.result()]


def _write_metadata(folder: Path, rows: list[list[str]], batch_size: int) -> None:
    """One ``metadata/<batch>.npy`` per image folder, rows in index order, in the release's
    form: text despite the name, one space-separated line per image (public readers of the
    release parse it so)."""
    (folder / "metadata").mkdir(parents=True, exist_ok=True)
    by_batch: dict[int, list[list[str]]] = {}
    for row in sorted(rows, key=lambda row: int(row[2])):
        by_batch.setdefault(int(row[2]) // batch_size, []).append(row)
    for batch, batch_rows in by_batch.items():
        path = folder / "metadata" / f"{batch}.npy"
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text("".join(" ".join(row) + "\n" for row in batch_rows))
        temporary.replace(path)


# ----------------------------------------------------------------------------- reading


def split_indices(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """LRA's 80/10/10 train/val/test split of ``n`` records, fixed by ``seed``, sorted."""
    order = np.random.default_rng(seed).permutation(n)
    n_train, n_val = n * 8 // 10, n // 10
    parts = {
        "train": order[:n_train],
        "val": order[n_train : n_train + n_val],
        "test": order[n_train + n_val :],
    }
    return {name: np.sort(part) for name, part in parts.items()}


def _find_folder(root: Path, difficulty: str) -> Path:
    """``root/<difficulty_dir>``, or ``root`` itself when it is already that folder."""
    for folder in (root / difficulty_dir(difficulty), root):
        if (folder / "metadata").is_dir():
            return folder
    old = OLD_FOLDERS.get(difficulty)
    if old and (root / old / "metadata").is_dir():
        raise FileNotFoundError(
            f"{root / old}: the release names the {difficulty} set {difficulty_dir(difficulty)} "
            f"(older ernie-sparse wrote {old}); rename the folder to "
            f"{root / difficulty_dir(difficulty)}"
        )
    raise FileNotFoundError(
        f"no Pathfinder metadata under {root / difficulty_dir(difficulty) / 'metadata'} "
        f"or {root / 'metadata'}"
    )


def _metadata_files(folder: Path) -> list[Path]:
    """Metadata files in batch order (``2.npy`` before ``10.npy``)."""
    files = list((folder / "metadata").glob("*.npy"))
    return sorted(
        files,
        key=lambda path: (
            not path.stem.isdigit(),
            int(path.stem) if path.stem.isdigit() else 0,
            path.name,
        ),
    )


Record = tuple[Path, str, list[str]]  # (metadata file, "row i" / "line n", fields)


def _metadata_rows(folder: Path, bad: BadRecords) -> list[Record]:
    """Every (metadata file, where, fields) of the release's metadata files, in either
    form: text lines of space-separated fields (the release) or a numpy array of strings
    (loaded without pickle). A file or row that is neither is bad."""
    records: list[Record] = []
    for path in _metadata_files(folder):
        with path.open("rb") as handle:
            is_numpy = handle.read(len(NUMPY_MAGIC)) == NUMPY_MAGIC
        reader = _numpy_metadata if is_numpy else _text_metadata
        records.extend(reader(path, bad))
    return records


def _numpy_metadata(path: Path, bad: BadRecords) -> list[Record]:
    try:
        table = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        bad.report(path, None, f"cannot read metadata: {error}")
        return []
    if table.ndim != 2 or table.shape[1] < 4:
        bad.report(path, None, f"metadata must be rows of >= 4 columns, got {table.shape}")
        return []
    return [(path, f"row {number}", [str(field) for field in row]) for number, row in
            enumerate(table)]  # fmt: skip


def _text_metadata(path: Path, bad: BadRecords) -> list[Record]:
    """The release's form: ``subdir file idx label ...`` per line (blank lines skipped)."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        bad.report(path, None, f"metadata is neither a numpy array nor UTF-8 text ({error})")
        return []
    records: list[Record] = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if fields:  # a short line is reported when read, so the split never moves
            records.append((path, f"line {number}", fields))
    return records


def _parse_label(text: str) -> int | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return int(value) if value in (0.0, 1.0) else None


def _load_tokens(path: Path, size: int) -> tuple[np.ndarray | None, str]:
    """A grayscale PNG's pixels as 0-255 tokens, or None and what is wrong with it."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        return None, f"missing image {path}"
    try:
        with Image.open(path) as image:
            image.load()
            if image.size != (size, size):
                return None, f"image {path} is {image.size[0]}x{image.size[1]}, not {size}x{size}"
            pixels = np.asarray(image.convert("L"), dtype=np.int64)
    except (OSError, UnidentifiedImageError) as error:
        return None, f"unreadable image {path}: {error}"
    return pixels.reshape(-1), ""


def read_pathfinder(
    root: str | Path,
    *,
    difficulty: str = "hard",
    skip_bad: bool = False,
    split: str | None = None,
    split_seed: int = 0,
    limit: int | None = None,
) -> TokenDataset:
    """Read LRA's Pathfinder-32 layout: every ``metadata/*.npy`` row names a PNG and a label
    (the release's text lines or a numpy array of the same rows; ``_metadata_rows``).

    Tokens are the pixels (0-255) row-major, 1024 per image. ``split`` keeps one part of
    ``split_indices`` over all metadata rows (in file order), so the split does not move when
    bad rows are skipped. Bad rows raise ``DataFormatError`` naming the metadata file and row,
    or with ``skip_bad`` are skipped and counted in ``dataset.bad``.
    """
    if split is not None and split not in SPLIT_FRACTIONS:
        raise ValueError(f"split must be one of {sorted(SPLIT_FRACTIONS)} or None, got {split!r}")
    folder = _find_folder(Path(root), difficulty)
    dataset = TokenDataset(
        info=TASK_INFO, bad=BadRecords(skip_bad=skip_bad), label_names=("0", "1")
    )
    records = _metadata_rows(folder, dataset.bad)
    chosen = range(len(records))
    if split is not None:
        chosen = split_indices(len(records), split_seed)[split].tolist()
    if limit is not None:
        chosen = chosen[:limit]
    for position in chosen:
        _read_record(folder, *records[position], dataset)
    source = str(folder) if split is None else f"{folder} [{split}]"
    return dataset.finish(source, empty=False)


def _read_record(
    folder: Path, metadata: Path, where: str, row: Sequence[str], dataset: TokenDataset
) -> None:
    if len(row) < 4:
        problem = f"expected >= 4 fields (subdir file idx label ...), got {len(row)}"
        dataset.bad.report(metadata, where, problem)
        return
    text = str(row[3])
    label = _parse_label(text)
    if label is None:
        dataset.bad.report(metadata, where, f"label {text!r} is not 0 or 1")
        return
    try:
        image_path = _image_path(folder, str(row[0]), str(row[1]))
    except OutsideFolderError as error:
        dataset.bad.report(metadata, where, f"image path {error}")
        return
    tokens, problem = _load_tokens(image_path, IMAGE_SIZE)
    if tokens is None:
        dataset.bad.report(metadata, where, problem)
        return
    dataset.add(label, tokens)


def _image_path(folder: Path, subdir: str, file: str) -> Path:
    """``folder/subdir/file`` (the release's subdir is ``imgs/<batch>``), or, for a subdir
    written without it, ``folder/imgs/subdir/file`` when only that exists. Never outside
    ``folder``: an absolute name, a ``..`` or a symlink out is ``OutsideFolderError``."""
    name = str(Path(subdir) / file)  # an absolute file name stays absolute
    path = inside(folder, name)  # never read an image outside the release folder
    if not path.is_file() and Path(subdir).parts[:1] != ("imgs",):
        under_imgs = inside(folder, str(Path("imgs") / name))
        if under_imgs.is_file():
            return under_imgs
    return path


# ----------------------------------------------------------------------------- pictures


def _as_images(dataset_or_images: object, labels: Sequence[int] | None, count: int):
    """First ``count`` images as [32, 32] arrays with their labels, from either input form."""
    if isinstance(dataset_or_images, TokenDataset):
        examples = dataset_or_images.examples[:count]
        images = [np.asarray(example["input_ids"]) for example in examples]
        if labels is None:
            labels = [example["labels"] for example in examples]
    else:
        images = [np.asarray(image) for image in list(dataset_or_images)[:count]]
    if labels is None:
        raise ValueError("labels are needed when images are given without a dataset")
    side = IMAGE_SIZE
    images = [image.reshape(side, side) for image in images]
    return images, list(labels)[: len(images)]


def montage(
    dataset_or_images: object,
    labels: Sequence[int] | None,
    path: str | Path,
    *,
    rows: int = 4,
    cols: int = 8,
) -> Path:
    """A grid of the first ``rows * cols`` images titled with their labels, for eyeballing.

    Takes a ``TokenDataset`` (labels may be None) or images as [N, 32, 32] / [N, 1024].
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError("montage needs matplotlib: pip install 'ernie-sparse[plot]'") from error
    images, labels = _as_images(dataset_or_images, labels, rows * cols)
    if not images:
        raise ValueError("montage got no images")
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.8 * rows), squeeze=False)
    for axis, image, label in zip(axes.flat, images, labels, strict=False):
        axis.imshow(image, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        axis.set_title(f"label {int(label)}", fontsize=9)
    for axis in axes.flat:
        axis.axis("off")
    return save_figure(fig, path, dpi=100)


# ----------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``ernie-sparse data pathfinder``."""
    parser.add_argument("--out", required=True, help="folder to write the release layout into")
    parser.add_argument("--difficulty", choices=sorted(DIFFICULTIES), default="hard")
    parser.add_argument("--num", type=int, default=1000, help="images to draw")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1, help="processes drawing images")
    parser.add_argument("--batch-size", type=int, default=1000, help="images per imgs/ folder")
    parser.add_argument("--montage", default=None, help="also write a PNG grid of 32 samples")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Generate, print a summary, optionally draw a montage of what was written."""
    if args.difficulty not in DIFFICULTIES:
        raise ValueError(f"--difficulty must be one of {sorted(DIFFICULTIES)}")
    for flag, value in (
        ("--num", args.num),
        ("--workers", args.workers),
        ("--batch-size", args.batch_size),
    ):
        if value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    if args.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {args.seed}")
    stats = generate_pathfinder(
        args.out,
        difficulty=args.difficulty,
        num=args.num,
        seed=args.seed,
        workers=args.workers,
        batch_size=args.batch_size,
    )
    print(
        f"wrote {stats['num']} {args.difficulty} Pathfinder images to {stats['folder']} "
        f"({stats['batches']} batch folders): label 1 in {stats['label_balance']:.1%}, "
        f"{stats['seconds']:.1f} s, {stats['images_per_second']:.1f} images/s, "
        f"{stats['images_per_second_per_worker']:.1f} per worker ({args.workers})"
    )
    if args.montage:
        dataset = read_pathfinder(args.out, difficulty=args.difficulty, limit=32)
        print(f"wrote {montage(dataset, None, args.montage)}")
    return 0
