"""The data of the digits example (``visionsweep example digits``). The example's training, prediction and
evaluation run, with the README's commands, in test_readme.py (slow)."""
from __future__ import annotations

from collections import Counter

from PIL import Image

from visionsweep.data.jsonl import read_labeled_data
from visionsweep.examples import write_digits_dataset
from visionsweep.tasks import Task


def test_digits_are_written_once_each_and_split_80_20_within_every_class(tmp_path):
    train_file, validation_file = write_digits_dataset(tmp_path, size=8)
    train = read_labeled_data(train_file, Task.CLASSIFICATION).records
    validation = read_labeled_data(validation_file, Task.CLASSIFICATION).records
    paths = [r.image_path for r in train + validation]
    assert len(paths) == len(set(paths)) == 1797
    # 183 threes, as test_readme.py counts them in the example's output
    assert len(list((tmp_path / "images" / "3").iterdir())) == 183
    totals = Counter(r.labels[0] for r in train + validation)
    held_out = Counter(r.labels[0] for r in validation)
    assert sorted(totals) == [str(digit) for digit in range(10)]
    assert all(abs(held_out[label] - 0.2 * total) <= 0.5 for label, total in totals.items())
    with Image.open(paths[0]) as image:
        assert image.size == (8, 8) and image.mode == "RGB"
