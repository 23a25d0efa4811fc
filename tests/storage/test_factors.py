"""The factor store's pointer protocol: commit, pin, unpin, and what each leaves on disk."""

import json

import numpy as np
import pytest

from dnmf.storage import StoreError, factors

LAYOUT = factors.Layout(W_chunks=(3, 2), Ht_chunks=(4,), k=2, dtype="float64")


def write_generation(root, g):
    rng = np.random.default_rng(g)
    blocks = {"W": [rng.random((3, 2)), rng.random((2, 2))], "Ht": [rng.random((4, 2))], "HHt": [rng.random((2, 2))]}
    for name, parts in blocks.items():
        for i, b in enumerate(parts):
            factors.write_block(root, g, name, i, b)
    return blocks


def on_disk(path):
    return sorted(p.name for p in path.iterdir() if p.name.startswith("g-"))


def test_commit_keeps_the_current_and_pinned_generations_and_reads_back_the_same_bits(tmp_path):
    root = str(tmp_path / "f")
    blocks = {g: write_generation(root, g) for g in range(4)}
    factors.commit(root, 1, LAYOUT)
    assert on_disk(tmp_path / "f") == ["g-00000001"]  # 0, 2 and 3 were neither current nor pinned
    factors.pin(root, 1)
    write_generation(root, 2)
    factors.commit(root, 2, LAYOUT)
    assert on_disk(tmp_path / "f") == ["g-00000001", "g-00000002"]
    factors.pin(root, 2)
    factors.unpin(root, keep_last=1)
    assert factors.read_pointer(root)["pinned"] == [2]
    assert on_disk(tmp_path / "f") == ["g-00000002"]
    W, Ht, HHt = factors.open_generation(root, 2, LAYOUT)
    assert factors.generation_of(W) == (root, 2) and factors.generation_of(Ht) == (root, 2)
    assert factors.generation_of(W + 1) is None
    np.testing.assert_array_equal(W.compute(), np.vstack(blocks[2]["W"]))
    np.testing.assert_array_equal(Ht.compute(), blocks[2]["Ht"][0])
    np.testing.assert_array_equal(HHt.compute(), blocks[2]["HHt"][0])


def test_a_damaged_pointer_or_a_missing_generation_names_the_file(tmp_path):
    root = str(tmp_path / "f")
    write_generation(root, 1)
    factors.commit(root, 1, LAYOUT)
    W, _, _ = factors.open_generation(root, 7, LAYOUT)
    with pytest.raises(StoreError, match=r"g-00000007/W/[01]': the block of generation 7 of the factor store"):
        W.compute()
    (tmp_path / "f" / factors.POINTER).write_text("{not json")
    with pytest.raises(StoreError, match="CURRENT.json is damaged"):
        factors.read_pointer(root)
    (tmp_path / "f" / factors.POINTER).write_text(json.dumps({"dnmf_format": "x", "version": 9, "current": 1}))
    with pytest.raises(StoreError, match="not a dnmf factor store pointer"):
        factors.read_pointer(root)
    with pytest.raises(StoreError, match="CURRENT.json is missing"):
        factors.read_pointer(str(tmp_path / "nowhere"))


def test_blocks_are_zarr_v3_arrays_that_zarr_reads(tmp_path):
    import zarr

    root = str(tmp_path / "f")
    for dtype in (np.float64, np.float32):
        block = np.random.default_rng(0).random((5, 3)).astype(dtype)
        factors.write_block(root, 1, "W", 0, block)
        read = zarr.open_array(f"{root}/g-00000001/W/0", mode="r")[...]
        assert read.dtype == dtype and np.array_equal(read, block)
    factors.write_block(root, 1, "W", 1, np.zeros((0, 3)))
    assert factors.read_block(root, 1, "W", 1).shape == (0, 3)


def test_a_given_up_generation_is_kept_as_spare_and_its_files_are_written_over(tmp_path):
    """The next generation's blocks move the spare's files into place and overwrite them: same bits as new files."""
    root = str(tmp_path / "f")
    write_generation(root, 0)
    factors.commit(root, 0, LAYOUT)
    current = write_generation(root, 1)
    factors.commit(root, 1, LAYOUT)
    spare = tmp_path / "f" / factors.SPARE
    assert on_disk(tmp_path / "f") == ["g-00000001"] and spare.is_dir()
    old_file = spare / "W" / "0" / "c" / "0" / "0"
    inode = old_file.stat().st_ino
    rng = np.random.default_rng(7)
    new = rng.random((5, 3)).astype(np.float32)  # fewer rows than the spare's block: truncated
    factors.write_block(root, 2, "W", 0, new)
    moved = tmp_path / "f" / "g-00000002" / "W" / "0" / "c" / "0" / "0"
    assert moved.stat().st_ino == inode and not (spare / "W" / "0").exists()
    np.testing.assert_array_equal(factors.read_block(root, 2, "W", 0), new)
    same = rng.random(factors.read_block(root, 1, "W", 1).shape)
    factors.write_block(root, 2, "W", 1, same)  # same size: written into the file's own pages
    np.testing.assert_array_equal(factors.read_block(root, 2, "W", 1), same)
    np.testing.assert_array_equal(factors.read_block(root, 1, "W", 1), current["W"][1])  # the current one untouched
    factors.drop_spare(root)
    assert not spare.exists()
