"""Factor matrices written as plain files: ``.npy``, CSV or Parquet, block by block.

A table has one row per sample (or feature) and one column per component,
named ``c0 .. c{k-1}``, preceded by an ``id`` column when IDs are known.
Blocks are appended one after the other, so a factor larger than memory is
written with one block in memory at a time. Files are written under a
temporary name and renamed when complete: an interrupted export leaves no
half-written file under the final name.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Sequence

import numpy as np

from . import locations

FORMATS = ("npy", "csv", "parquet")


def _tmp_for(path: str) -> str:
    parent = os.path.dirname(os.path.abspath(path)) or "."
    os.makedirs(parent, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=parent)
    try:
        os.fchmod(fd, locations.file_mode())  # mkstemp's 0600 would stay after the rename
    finally:
        os.close(fd)
    return tmp


def write_table(
    path: str,
    blocks: Iterable[np.ndarray],
    shape: tuple[int, int],
    *,
    format: str,
    ids: Sequence | None = None,
    dtype=np.float64,
) -> str:
    """Write a (rows, k) matrix given as consecutive row blocks.

    Parameters
    ----------
    path : str
        Local file to create (replaced if it exists).
    blocks : iterable of ndarray (r_i, k)
        Consecutive row blocks; their rows add up to ``shape[0]``.
    shape : (int, int)
    format : {"npy", "csv", "parquet"}
    ids : sequence of length shape[0], optional
        Row IDs, written as the first column (``id``) of CSV/Parquet tables;
        ignored for npy (positions are the IDs).

    Returns
    -------
    str
        The path written.
    """
    if format not in FORMATS:
        raise ValueError(f"Unknown table format {format!r}; use one of {', '.join(FORMATS)}.")
    tmp = _tmp_for(path)
    try:
        if format == "npy":
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
            start = 0
            for b in blocks:
                out[start : start + b.shape[0]] = b
                start += b.shape[0]
            out.flush()
            del out
        else:
            _write_columns(tmp, blocks, shape, format, ids)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _writer(path: str, schema, format: str):
    """A pyarrow batch writer of CSV or Parquet."""
    if format == "parquet":
        import pyarrow.parquet as pq

        return pq.ParquetWriter(path, schema)
    import pyarrow.csv as pcsv

    return pcsv.CSVWriter(path, schema)


def _write_columns(tmp: str, blocks, shape, format: str, ids) -> None:
    import pyarrow as pa

    names = [f"c{j}" for j in range(shape[1])]
    writer = None
    start = 0
    try:
        for b in blocks:
            cols = [pa.array(np.ascontiguousarray(b[:, j])) for j in range(b.shape[1])]
            col_names = list(names)
            if ids is not None:
                cols.insert(0, pa.array(list(ids[start : start + b.shape[0]])))
                col_names.insert(0, "id")
            start += b.shape[0]
            batch = pa.record_batch(cols, names=col_names)
            writer = writer or _writer(tmp, batch.schema, format)
            writer.write_batch(batch)
        if writer is None:  # no rows: still a valid, empty table with its header
            fields = ([pa.field("id", pa.string())] if ids is not None else []) + [
                pa.field(n, pa.float64()) for n in names
            ]
            empty = pa.table({f.name: pa.array([], type=f.type) for f in fields})
            if format == "parquet":
                import pyarrow.parquet as pq

                pq.write_table(empty, tmp)
            else:
                import pyarrow.csv as pcsv

                pcsv.write_csv(empty, tmp)
    finally:
        if writer is not None:
            writer.close()


def write_ranked(path: str, blocks: Iterable[dict], *, format: str) -> int:
    """Write a long table (e.g. user, rank, item, score) given as blocks of columns.

    Parameters
    ----------
    path : str
        Local file to create (replaced if it exists), written atomically.
    blocks : iterable of dict of str to 1-D array
        Consecutive blocks of rows, every block with the same columns.
    format : {"csv", "parquet"}

    Returns
    -------
    int
        Rows written.
    """
    import pyarrow as pa

    if format not in ("csv", "parquet"):
        raise ValueError(f"Unknown table format {format!r}; use csv or parquet.")
    tmp = _tmp_for(path)
    rows = 0
    writer = None
    try:
        for block in blocks:
            batch = pa.record_batch(
                [
                    pa.array(np.asarray(v).tolist() if np.asarray(v).dtype == object else np.asarray(v))
                    for v in block.values()
                ],
                names=list(block),
            )
            writer = writer or _writer(tmp, batch.schema, format)
            writer.write_batch(batch)
            rows += batch.num_rows
        if writer is not None:
            writer.close()
            writer = None
        os.replace(tmp, path)
    except BaseException:
        if writer is not None:
            writer.close()
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return rows
