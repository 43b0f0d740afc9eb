"""The catalogue's fast read for search processes gives the same columns as reading every row as it is."""

import numpy as np

from spotit.storage.catalogue import _ALL, NO_DATE, Catalogue, Images, columns_of


def photos() -> Images:
    images = Images()
    for i in range(40):
        images[f"dir{i % 3}/photo-{i:03d}.jpg"] = {"shard": f"{i % 4 * 7:06d}.h5", "row": i // 4, "size": 1000 + i,
                                                   "mtime_ns": 10**18 + i, "width": 640, "height": 480 + i,
                                                   "taken": 1_600_000_000 + i}
    images["dir1/no-date.jpg"] = {"shard": "000003.h5", "row": 0, "size": 5, "mtime_ns": 6, "width": None,
                                  "height": None, "taken": None}
    images[b"odd-\xff.jpg".decode("utf-8", "surrogateescape")] = {"shard": "000003.h5", "row": 1, "size": 7,
                                                                   "mtime_ns": 8, "width": 10, "height": 20, "taken": 9}
    return images


def test_fast_columns_equal_the_rows_read_as_they_are(tmp_path):
    catalogue = Catalogue(tmp_path)
    catalogue.create({"generation": 1})
    catalogue.commit({"generation": 2}, photos())
    fast = catalogue.columns(2)
    plain = columns_of(catalogue._snapshot_query(2, _ALL)[0])
    in_byte_order = sorted(photos(), key=lambda n: n.encode("utf-8", "surrogateescape"))
    assert fast.names == plain.names == in_byte_order
    assert [fast.shards[s] for s in fast.shard] == [plain.shards[s] for s in plain.shard]
    for field in ("row", "width", "height", "size", "mtime_ns", "taken"):
        assert np.array_equal(getattr(fast, field), getattr(plain, field)), field
    undated = fast.names.index("dir1/no-date.jpg")
    assert fast.taken[undated] == NO_DATE and fast.entry(undated)["taken"] is None and fast.width[undated] == 0


def test_stamps_read_after_a_newer_commit_are_refused(tmp_path):
    """The stamps come in a second read: it must be of the same commit as the first, or say it is not."""
    import pytest

    from spotit.storage.catalogue import Changed

    catalogue = Catalogue(tmp_path)
    catalogue.create({"generation": 1})
    catalogue.commit({"generation": 2}, photos())
    assert np.array_equal(catalogue.columns(2).size, catalogue._stamps(2)[0])
    catalogue.commit({"generation": 3}, photos())
    with pytest.raises(Changed):
        catalogue._stamps(2)
