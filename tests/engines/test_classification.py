"""The classification extension: top-k strings in Triton's "value:index[:label]" form."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from inferd.engines.classification import read_labels, top_k


def test_batched_rows_each_get_their_top_k_largest_first() -> None:
    scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.25, 0.25]], dtype=np.float32)
    result = top_k(scores, 2, (), batched=True)
    assert result.shape == (2, 2)
    assert result.tolist() == [
        [b"0.700000:1", b"0.200000:2"],
        [b"0.500000:0", b"0.250000:1"],  # a tie keeps the lower index first
    ]


def test_labels_integers_and_k_beyond_the_element_count(tmp_path: Path) -> None:
    (tmp_path / "labels.txt").write_text("cat\ndog\n")
    labels = read_labels(tmp_path / "labels.txt")
    result = top_k(np.array([3, 9, 4], dtype=np.int32), 5, labels, batched=False)
    assert result.tolist() == [b"9:1:dog", b"4:2", b"3:0:cat"]
