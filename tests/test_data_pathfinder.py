"""Pathfinder-32: labels match the drawn geometry, images reproduce, the layout reads back."""

from __future__ import annotations

import argparse
import itertools
import math
import shutil
from collections import deque
from pathlib import Path

import numpy as np
import pytest

from ernie_sparse.cli import main
from ernie_sparse.data.errors import DataFormatError
from ernie_sparse.data.pathfinder import (
    DIFFICULTIES,
    PathfinderParams,
    add_arguments,
    difficulty_dir,
    generate_pathfinder,
    generate_sample,
    montage,
    read_pathfinder,
    split_indices,
)

Image = pytest.importorskip("PIL.Image")
PER_DIFFICULTY = 40


@pytest.fixture(scope="module")
def samples() -> dict[str, list]:
    """40 images of each difficulty, seed 0: the geometry checks share them."""
    return {
        name: [
            generate_sample(index, seed=0, params=PathfinderParams.for_difficulty(name))
            for index in range(PER_DIFFICULTY)
        ]
        for name in DIFFICULTIES
    }


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> Path:
    """A small easy set in the release layout: 12 images in batches of 5 (three folders)."""
    root = tmp_path_factory.mktemp("pathfinder")
    generate_pathfinder(root, difficulty="easy", num=12, seed=5, batch_size=5)
    return root


def reach(mask: np.ndarray, start: tuple[int, int], step: int) -> np.ndarray:
    """Pixels of ``mask`` reachable from ``start`` in jumps of Chebyshev length <= ``step``.

    ``step = 2`` bridges the one-pixel gaps between the dashes of one snake; the generator
    keeps different snakes at least three pixels apart, so it never bridges two snakes.
    """
    seen = np.zeros_like(mask)
    if not mask[start]:
        return seen
    seen[start] = True
    queue = deque([start])
    size = mask.shape[0]
    while queue:
        row, col = queue.popleft()
        for r in range(max(row - step, 0), min(row + step, size - 1) + 1):
            for c in range(max(col - step, 0), min(col + step, size - 1) + 1):
                if mask[r, c] and not seen[r, c]:
                    seen[r, c] = True
                    queue.append((r, c))
    return seen


@pytest.mark.parametrize("difficulty", list(DIFFICULTIES))
def test_label_is_one_exactly_when_the_markers_are_connected(samples, difficulty) -> None:
    for sample in samples[difficulty]:
        snake_a, snake_b = sample.targets
        targets = snake_a.mask | snake_b.mask
        assert not (snake_a.mask & snake_b.mask).any()
        first, second = sample.markers
        for marker in sample.markers:
            assert all(0 <= value < 32 for value in marker)
            assert targets[marker], f"marker {marker} is not on a target snake"
        connected = bool(reach(targets, first, step=2)[second])
        assert connected == (sample.label == 1)


def pieces(mask: np.ndarray) -> int:
    """8-connected pieces of a mask: a dashed snake shows several."""
    left, count = mask.copy(), 0
    while left.any():
        left &= ~reach(left, tuple(int(v) for v in np.argwhere(left)[0]), step=1)
        count += 1
    return count


@pytest.mark.parametrize("difficulty", list(DIFFICULTIES))
def test_target_snakes_are_whole_dashed_curves(samples, difficulty) -> None:
    length = DIFFICULTIES[difficulty]
    counts = []
    for sample in samples[difficulty]:
        for snake in sample.targets:
            assert len(snake.paddles) == length
            start = tuple(int(v) for v in np.argwhere(snake.mask)[0])
            assert (reach(snake.mask, start, step=2) == snake.mask).all(), "snake breaks apart"
            counts.append(pieces(snake.mask))
    assert np.mean(counts) > length / 3, "too few visible gaps between paddles"
    assert np.mean(np.equal(counts, 1)) < 0.1, "too many snakes drawn as solid lines"


def test_paddles_have_the_set_length_and_turn_at_most_90_degrees(samples) -> None:
    params = PathfinderParams()
    for sample in samples["hard"]:
        for snake in sample.targets:
            directions = []
            for start, end in snake.paddles:
                delta = np.subtract(end, start)
                assert math.hypot(*delta) == pytest.approx(params.paddle_length)
                directions.append(math.atan2(delta[0], delta[1]))
            for before, after in itertools.pairwise(directions):
                turn = abs((after - before + math.pi) % (2 * math.pi) - math.pi)
                assert turn <= math.pi / 2 + 1e-9


def test_images_have_markers_snakes_and_distractors(samples) -> None:
    for name, group in samples.items():
        for sample in group:
            image = sample.image
            assert image.shape == (32, 32) and image.dtype == np.uint8
            assert all(image[marker] == 255 for marker in sample.markers)
            assert 0.05 < (image > 0).mean() < 0.5
        limit = PathfinderParams.for_difficulty(name).num_distractors
        counts = [sample.distractors for sample in group]
        assert max(counts) <= limit and np.mean(counts) >= 1


def test_labels_are_roughly_balanced(samples) -> None:
    labels = [sample.label for group in samples.values() for sample in group]
    assert len(labels) == 3 * PER_DIFFICULTY
    assert 0.38 < np.mean(labels) < 0.62


def test_same_seed_and_index_give_the_same_image() -> None:
    params = PathfinderParams.for_difficulty("easy")
    first = generate_sample(7, seed=3, params=params)
    again = generate_sample(7, seed=3, params=params)
    other = generate_sample(8, seed=3, params=params)
    assert (first.image == again.image).all() and first.label == again.label
    assert not (first.image == other.image).all()


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_one_or_two_workers_write_identical_files(tmp_path) -> None:
    for workers in (1, 2):
        generate_pathfinder(
            tmp_path / str(workers),
            difficulty="easy",
            num=14,
            seed=2,
            workers=workers,
            batch_size=6,
        )
    one, two = _files(tmp_path / "1"), _files(tmp_path / "2")
    assert len(one) == 14 + 3  # PNGs and three metadata files
    assert one == two


def metadata_rows(path: Path) -> list[list[str]]:
    """A metadata file as public readers of the release parse it: text, split on spaces."""
    return [line.split() for line in path.read_text().splitlines()]


def test_written_set_reads_back_pixel_for_pixel(written) -> None:
    folder = written / "curv_baseline"
    rows = [row for b in range(3) for row in metadata_rows(folder / "metadata" / f"{b}.npy")]
    dataset = read_pathfinder(written, difficulty="easy")
    assert len(dataset) == len(rows) == 12
    assert dataset.info.vocab_size == 256 and dataset.info.max_length == 1024
    params = PathfinderParams.for_difficulty("easy")
    for example, row in zip(dataset.examples, rows, strict=True):
        pixels = np.asarray(Image.open(folder / row[0] / row[1]))
        assert example["input_ids"].tolist() == pixels.reshape(-1).tolist()
        assert example["labels"] == int(row[3])
        assert generate_sample(int(row[2]), seed=5, params=params).label == int(row[3])
    assert rows[7][:2] == ["imgs/1", "sample_2.png"] and len(rows[7]) == 11
    assert len(read_pathfinder(folder, difficulty="easy")) == 12  # the difficulty folder itself


def _broken_copy(written: Path, tmp_path: Path) -> Path:
    """A copy with one PNG missing (batch 0, row 1) and one label 7 (batch 2, row 0)."""
    root = tmp_path / "copy"
    shutil.copytree(written, root)
    folder = root / "curv_baseline"
    (folder / "imgs" / "0" / "sample_1.png").unlink()
    rows = metadata_rows(folder / "metadata" / "2.npy")
    rows[0][3] = "7"
    (folder / "metadata" / "2.npy").write_text("".join(" ".join(r) + "\n" for r in rows))
    return root


def test_reader_names_the_metadata_file_and_row(written, tmp_path) -> None:
    root = _broken_copy(written, tmp_path)
    with pytest.raises(DataFormatError, match=r"0\.npy:line 2: missing image"):
        read_pathfinder(root, difficulty="easy")
    (root / "curv_baseline" / "metadata" / "0.npy").unlink()
    with pytest.raises(DataFormatError, match=r"2\.npy:line 1: label '7' is not 0 or 1"):
        read_pathfinder(root, difficulty="easy")


def test_reader_skips_and_counts_bad_records(written, tmp_path) -> None:
    root = _broken_copy(written, tmp_path)
    folder = root / "curv_baseline"
    Image.new("L", (16, 16)).save(folder / "imgs" / "1" / "sample_0.png")
    (folder / "imgs" / "1" / "sample_1.png").write_bytes(b"not a png")
    dataset = read_pathfinder(root, difficulty="easy", skip_bad=True)
    assert len(dataset) == 12 - 4 and dataset.bad.count == 4
    problems = " | ".join(str(error) for error in dataset.bad.skipped)
    assert "16x16" in problems and "unreadable image" in problems


def test_folders_have_the_release_names(written, tmp_path) -> None:
    assert [difficulty_dir(d) for d in ("easy", "intermediate", "hard")] == [
        "curv_baseline", "curv_contour_length_9", "curv_contour_length_14"
    ]  # fmt: skip
    assert sorted(p.name for p in written.iterdir()) == ["curv_baseline"]
    old = tmp_path / "old"
    shutil.copytree(written / "curv_baseline", old / "curv_contour_length_6")
    with pytest.raises(FileNotFoundError, match=r"curv_contour_length_6: the release names "
                       r"the easy set curv_baseline .* rename the folder"):  # fmt: skip
        read_pathfinder(old, difficulty="easy")


RELEASE_FIELDS = "1.8 6 2 2 1.5 1 1"  # continuity contour_len distractor_len ... n_contrasts


def _release_folder(root: Path) -> Path:
    """A folder as the LRA release has it: text metadata (despite .npy), 11 fields a line,
    a trailing newline; a second batch as a numpy array of the same rows."""
    folder = root / "pathfinder32" / "curv_baseline"
    for batch in ("0", "1"):
        (folder / "imgs" / batch).mkdir(parents=True)
    (folder / "metadata").mkdir()
    for index, value in enumerate((0, 60, 120, 180)):
        batch = index // 2
        Image.new("L", (32, 32), value).save(folder / f"imgs/{batch}/sample_{index % 2}.png")
    lines = [f"imgs/0 sample_{i}.png {i} {i % 2} {RELEASE_FIELDS}" for i in range(2)]
    (folder / "metadata" / "0.npy").write_text("\n".join(lines) + "\n")
    rows = [["1", f"sample_{i}.png", str(2 + i), str(i % 2), *RELEASE_FIELDS.split()]
            for i in range(2)]  # subdir "1" without imgs/: found under imgs/  # fmt: skip
    np.save(folder / "metadata" / "1.npy", np.array(rows, dtype=str))
    return folder


def test_release_text_metadata_and_numpy_rows_read_alike(tmp_path) -> None:
    folder = _release_folder(tmp_path)
    dataset = read_pathfinder(folder.parent, difficulty="easy")
    assert [example["labels"] for example in dataset.examples] == [0, 1, 0, 1]
    assert [int(example["input_ids"][0]) for example in dataset.examples] == [0, 60, 120, 180]
    assert len(read_pathfinder(folder, difficulty="easy")) == 4  # the difficulty folder itself


def test_release_text_metadata_errors_name_the_line(tmp_path) -> None:
    folder = _release_folder(tmp_path)
    metadata = folder / "metadata" / "0.npy"
    metadata.write_text(metadata.read_text() + "\nimgs/0 sample_0.png 9\n")  # a blank line too
    with pytest.raises(DataFormatError, match=r"0\.npy:line 4: expected >= 4 fields"):
        read_pathfinder(folder, difficulty="easy")
    metadata.write_text(f"imgs/0 ../../../../x.png 0 1 {RELEASE_FIELDS}\n")
    Image.new("L", (32, 32)).save(tmp_path / "x.png")  # outside the release: never read
    with pytest.raises(DataFormatError, match=r"0\.npy:line 1: image path .* leads outside"):
        read_pathfinder(folder, difficulty="easy")
    metadata.write_bytes(b"\xff\xfe not text")
    with pytest.raises(DataFormatError, match=r"0\.npy: metadata is neither a numpy array"):
        read_pathfinder(folder, difficulty="easy")


def test_data_info_finds_the_release_folders(tmp_path, capsys) -> None:
    _release_folder(tmp_path)
    assert main(["data", "info", str(tmp_path / "pathfinder32")]) == 0
    out = capsys.readouterr().out
    assert "pathfinder" in out and "curv_baseline: 4 examples" in out


def test_a_split_with_no_image_is_an_error(tmp_path) -> None:
    folder = _release_folder(tmp_path)
    with pytest.raises(DataFormatError, match=r"curv_baseline \[val\]: no examples"):
        read_pathfinder(folder, difficulty="easy", split="val")  # 10% of 4 rows: none


def test_split_is_80_10_10_disjoint_and_fixed_by_seed(written) -> None:
    parts = split_indices(1000, seed=1)
    assert [len(parts[name]) for name in ("train", "val", "test")] == [800, 100, 100]
    assert sorted(np.concatenate(list(parts.values())).tolist()) == list(range(1000))
    assert all((parts[k] == split_indices(1000, seed=1)[k]).all() for k in parts)
    assert not (parts["val"] == split_indices(1000, seed=2)["val"]).all()
    sizes = [len(read_pathfinder(written, difficulty="easy", split=s)) for s in parts]
    assert sizes == [9, 1, 2]
    with pytest.raises(ValueError, match="split"):
        read_pathfinder(written, difficulty="easy", split="dev")


def test_montage_writes_a_png_grid(written, tmp_path) -> None:
    dataset = read_pathfinder(written, difficulty="easy")
    path = montage(dataset, None, tmp_path / "grid.png", rows=2, cols=4)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    images = np.stack([example["input_ids"].numpy() for example in dataset.examples])
    montage(images.reshape(-1, 32, 32), [0] * 12, tmp_path / "arrays.png", rows=1, cols=3)
    with pytest.raises(ValueError, match="labels"):
        montage(images, None, tmp_path / "x.png")


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_command_generates_and_summarises(tmp_path, capsys) -> None:
    args = _parse("--out", str(tmp_path), "--difficulty", "easy", "--num", "5", "--seed", "1")
    assert args.run(args) == 0
    out = capsys.readouterr().out
    assert "wrote 5 easy Pathfinder images" in out and "images/s" in out
    assert len(list((tmp_path / "curv_baseline" / "imgs" / "0").glob("*.png"))) == 5
    with pytest.raises(ValueError, match="already holds"):
        args.run(args)


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--num", "0"], "--num"),
        (["--workers", "0"], "--workers"),
        (["--seed", "-1"], "--seed"),
        (["--batch-size", "0"], "--batch-size"),
    ],
)
def test_command_names_bad_arguments(tmp_path, argv, flag) -> None:
    args = _parse("--out", str(tmp_path), *argv)
    with pytest.raises(ValueError, match=flag):
        args.run(args)
    assert not any(tmp_path.iterdir())
