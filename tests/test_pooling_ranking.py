import numpy as np
import pytest

from spotit.pooling import average, gem, l2_normalise, max_
from spotit.ranking import rank, ranklist_line, read_ranklist, write_ranklist


def test_poolings_on_a_hand_worked_map():
    fmap = np.array([[[[1.0, 3.0], [0.0, 4.0]], [[2.0, 2.0], [2.0, 2.0]]]])  # (1, 2, 2, 2)
    assert np.allclose(average(fmap), [[2.0, 2.0]])
    assert np.allclose(max_(fmap), [[4.0, 2.0]])
    assert np.allclose(gem(fmap, p=1.0), average(fmap), atol=1e-5)
    assert np.allclose(gem(fmap, p=3.0), [[((1 + 27 + 0 + 64) / 4) ** (1 / 3), 2.0]], atol=1e-4)


def test_l2_normalise_gives_unit_rows_and_survives_zero():
    x = l2_normalise(np.array([[3.0, 4.0], [0.0, 0.0]]))
    assert np.allclose(x[0], [0.6, 0.8]) and np.all(np.isfinite(x[1]))


def test_rank_orders_best_first_and_keeps_ties_in_gallery_order():
    assert rank(np.array([0.2, 0.9, 0.2, 0.5])).tolist() == [1, 3, 0, 2]


def test_ranklist_format_and_round_trip(tmp_path):
    line = ranklist_line("7", ["12", "3", "4981"])
    assert line == "Q7: 12, 3, 4981"
    write_ranklist(tmp_path / "r.txt", [line, ranklist_line("8", ["3", "12", "4981"])])
    assert read_ranklist(tmp_path / "r.txt") == {"7": ["12", "3", "4981"], "8": ["3", "12", "4981"]}
