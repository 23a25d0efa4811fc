"""Out-of-core ingestion: ratings tables and matrix files into matrix stores.

Coordinate sources (CSV, Parquet, MatrixMarket) are streamed in four
phases, each holding a bounded amount in memory:

A. parse: read the source in batches, validate every record, give each ID
   a code in first-seen order, and append valid (row code, column code,
   value) records to a spill file on disk. Invalid records are counted.
B. IDs: sort each axis's IDs (numerically for integer IDs, by code point
   for strings) so the matrix does not depend on the order of the input's
   rows; raise now if invalid records must be rejected (nothing has been
   written to the output yet).
C. scatter: re-read the spill file and split it into one file per row
   block, in positions.
D. build: per row block, merge duplicates, build CSR, cut it into column
   blocks and write each block; then the ID maps and, last, the metadata.

Peak memory is about 80 bytes per record of the largest row block plus the
ID maps, independent of the file's size. SciPy ``.npz`` files are loaded
whole (the format cannot be streamed); ``.npy`` files are memory-mapped and
written block by block.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from . import locations
from .chunking import ChunksLike, default_cores, is_regular, normalize_chunks, sparse_row_blocks
from .codecs import DEFAULT_CODEC, check_index_dtype, parse_codec
from .dense import write_dense_block
from .ids import write_ids
from .layout import DENSE_ARRAY, MatrixInfo
from .matrix import check_output, commit_matrix_store, new_write_id, writing_store
from .sources import Batch, CsvSource, MtxSource, ParquetSource, Source, read_mtx_header
from .sparse import write_sparse_block

logger = logging.getLogger(__name__)

InputFormat = Literal["auto", "csv", "parquet", "mtx", "npz", "npy"]
#: One spilled record: row code/position, column code/position, value.
RECORD = np.dtype([("r", "<i8"), ("c", "<i8"), ("v", "<f8")])
#: Records per read when scattering the spill file (about 48 MiB).
SCATTER_RECORDS = 2**21
_REASONS = (
    "missing ID",
    "index out of range",
    "non-finite or non-numeric value",
    "negative value",
    "value too large for the store's dtype",
)


@dataclass(frozen=True)
class BlockFormat:
    """How sparse blocks are written: codec spec and index width (see :mod:`dnmf.storage.codecs`)."""

    codec: str = DEFAULT_CODEC
    index_dtype: str = "auto"


@dataclass
class InvalidRecords:
    """Counts of invalid records by reason, and the first one seen."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_REASONS, 0))
    first: str | None = None

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        parts = [f"{n} with {reason}" for reason, n in self.counts.items() if n]
        return ", ".join(parts)


class IdCoder:
    """Gives IDs integer codes batch by batch, with work done in Arrow's C++.

    Each batch is dictionary-encoded on its own; a record's code is its
    batch's offset plus its index in the batch dictionary. :meth:`finish`
    then deduplicates the concatenated batch dictionaries once, which is
    much faster than looking every batch up in a growing Python dict.
    Memory: the batch dictionaries, about (ID length + 8) bytes per distinct
    ID per batch.
    """

    def __init__(self, infer_ints: bool = False) -> None:
        self._dicts: list[pa.Array] = []
        self._offset = 0
        self._infer_ints = infer_ints

    def encode(self, ids: pa.Array) -> np.ndarray:
        enc = pc.dictionary_encode(ids)
        dictionary = enc.dictionary
        if pa.types.is_string(dictionary.type):
            # 64-bit offsets: the concatenation may exceed 2 GiB of text.
            dictionary = dictionary.cast(pa.large_string())
        codes = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64) + self._offset
        self._dicts.append(dictionary)
        self._offset += len(dictionary)
        return codes

    def finish(self) -> tuple[np.ndarray, np.ndarray, str]:
        """``(sorted_ids, position_of_code, kind)``; see :func:`sort_ids`."""
        if not self._dicts:
            return np.empty(0, dtype=object), np.empty(0, dtype=np.int64), "string"
        everything = pa.concat_arrays(self._dicts)
        self._dicts = []
        unique = pc.dictionary_encode(everything)
        del everything
        sorted_ids, position, kind = sort_ids(unique.dictionary, self._infer_ints)
        return sorted_ids, position[unique.indices.to_numpy(zero_copy_only=False)], kind


#: Canonical decimal integers that fit in int64 (18 digits always do).
_CANONICAL_INT = r"^(0|-?[1-9][0-9]{0,17})$"


def sort_ids(ids: pa.Array, infer_ints: bool = False) -> tuple[np.ndarray, np.ndarray, str]:
    """Sort distinct IDs; return them, each one's sorted position, and their kind.

    Integers sort numerically, strings by code point (Arrow compares UTF-8
    bytes, which orders code points the same way). With ``infer_ints``
    (untyped text such as CSV), text IDs that are all canonical integers
    ("17", "-3"; not "017", "+3" or "1e3") become integers.
    """
    kind = "int64" if pa.types.is_integer(ids.type) else "string"
    if infer_ints and kind == "string" and len(ids) and pc.all(pc.match_substring_regex(ids, _CANONICAL_INT)).as_py():
        ids, kind = ids.cast(pa.int64()), "int64"
    order = pc.sort_indices(ids).to_numpy()
    position = np.empty(len(ids), dtype=np.int64)
    position[order] = np.arange(len(ids), dtype=np.int64)
    ordered = ids.take(order).to_numpy(zero_copy_only=False)
    return (ordered.astype(np.int64) if kind == "int64" else ordered.astype(object)), position, kind


def detect_format(path: str) -> str:
    """The input format implied by a file name (or a directory: Parquet)."""
    lower = path.lower()
    if lower.endswith(".gz"):
        lower = lower[:-3]
    for fmt, suffixes in (
        ("csv", (".csv", ".tsv", ".txt", ".dat")),
        ("parquet", (".parquet", ".pq")),
        ("mtx", (".mtx", ".mm")),
        ("npz", (".npz",)),
        ("npy", (".npy",)),
    ):
        if lower.endswith(suffixes):
            return fmt
    if os.path.isdir(path):
        return "parquet"
    raise ValueError(
        f"Cannot tell the format of {path!r} from its name. Pass format='csv', 'parquet', 'mtx', 'npz' or 'npy'."
    )


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}; got {value!r}.")


def ingest(
    input: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    format: InputFormat = "auto",
    user_col: str = "user",
    item_col: str = "item",
    value_col: str | None = "rating",
    duplicates: Literal["sum", "last"] = "sum",
    on_invalid: Literal["raise", "drop"] = "raise",
    chunks: ChunksLike = None,
    dtype: Any = None,
    overwrite: bool = False,
    tmp_dir: str | None = None,
    read_options: Mapping[str, Any] | None = None,
    batch_records: int = 1_000_000,
    storage_options: Mapping[str, Any] | None = None,
    codec: str | None = None,
    index_dtype: str = "auto",
    cores: int | None = None,
) -> MatrixInfo:
    """Turn a ratings table or matrix file into a matrix store, out of core.

    The engine of :func:`dnmf.ingest` (whose docstring describes every
    parameter); returns the new store's :class:`MatrixInfo` instead of the
    opened store.
    """
    input = os.fspath(input)
    out = locations.normalize(output)
    fmt = detect_format(input) if format == "auto" else format
    _check_choice("format", fmt, ("csv", "parquet", "mtx", "npz", "npy"))
    _check_choice("duplicates", duplicates, ("sum", "last"))
    _check_choice("on_invalid", on_invalid, ("raise", "drop"))
    if not os.path.exists(input) and "://" not in input:
        raise FileNotFoundError(f"No input at {input!r}. Check the path.")
    locations.check_disjoint([("output", out)], [("input", input)])
    check_output(out, overwrite=overwrite, storage_options=storage_options)
    fmt_opts = BlockFormat(codec=str(parse_codec(codec)), index_dtype=check_index_dtype(index_dtype))
    cores = default_cores() if cores is None else cores
    sparse_row_blocks(1, 1, 4, cores)  # checks cores before any work
    opts = dict(read_options or {})
    if fmt == "csv" and "sep" not in opts and input.lower().removesuffix(".gz").endswith(".tsv"):
        opts["sep"] = "\t"
    common: dict[str, Any] = dict(
        chunks=chunks,
        overwrite=overwrite,
        storage_options=storage_options,
        on_invalid=on_invalid,
        block_format=fmt_opts,
        cores=cores,
    )
    if fmt in ("npz", "npy") or (fmt == "mtx" and read_mtx_header(input).layout == "array"):
        return _ingest_matrix_file(input, out, fmt, dtype=dtype, **common)
    source: Source
    if fmt == "csv":
        source = CsvSource(input, user_col, item_col, value_col, batch_records=batch_records, read_options=opts)
    elif fmt == "parquet":
        source = ParquetSource(input, user_col, item_col, value_col, batch_records=batch_records)
    else:
        source = MtxSource(input, batch_records=batch_records)
    default = np.float32 if source.keyed else np.float64
    return ingest_source(
        source,
        out,
        duplicates=duplicates,
        dtype=np.dtype(default if dtype is None else dtype),
        tmp_dir=tmp_dir,
        **common,
    )


def _validate(batch: Batch, source: Source, invalid: InvalidRecords, dtype: np.dtype) -> np.ndarray:
    """Mask of invalid records in ``batch``; updates the counts."""
    values = batch.values
    masks = {
        "missing ID": batch.missing,
        "non-finite or non-numeric value": ~np.isfinite(values),
        "negative value": values < 0,
        # Cast to the store's dtype they would become infinity.
        "value too large for the store's dtype": np.abs(values) > np.finfo(dtype).max,
    }
    if not source.keyed:
        m, n = source.shape  # type: ignore[misc]
        r, c = batch.rows, batch.cols
        masks["index out of range"] = (r < 0) | (r >= m) | (c < 0) | (c >= n)
    bad = np.zeros(len(values), dtype=bool)
    for reason in _REASONS:
        if reason in masks:
            # Count each record once, under its first reason.
            new = masks[reason] & ~bad
            invalid.counts[reason] += int(new.sum())
            bad |= new
    if invalid.first is None and bad.any():
        invalid.first = source.describe(batch, int(np.argmax(bad)))
    return bad


def ingest_source(
    source: Source,
    output: str,
    *,
    duplicates: str = "sum",
    on_invalid: str = "raise",
    chunks: ChunksLike = None,
    dtype: Any = np.float32,
    overwrite: bool = False,
    tmp_dir: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    block_format: BlockFormat | None = None,
    cores: int | None = None,
) -> MatrixInfo:
    """Run phases A-D (see the module docstring) for one coordinate source.

    ``cores``: with ``chunks`` None, the cores of the cluster expected to fit
    the store (:func:`~dnmf.storage.chunking.sparse_row_blocks`).
    """
    block_format = BlockFormat() if block_format is None else block_format
    t0 = time.perf_counter()
    work = tempfile.mkdtemp(prefix="dnmf-ingest-", dir=tmp_dir)
    try:
        spill = os.path.join(work, "records.bin")
        # Untyped text (CSV) may hold integer IDs; typed sources keep their types.
        infer = source.format == "csv"
        rows_coder, cols_coder = IdCoder(infer), IdCoder(infer)
        invalid = InvalidRecords()
        n_read = n_kept = 0
        # Phase A: parse, validate, code, spill.
        with open(spill, "wb") as f:
            for batch in source.batches():
                n_read += len(batch.values)
                bad = _validate(batch, source, invalid, np.dtype(dtype))
                if invalid.total and on_invalid == "raise":
                    continue  # keep counting; nothing more to spill
                keep = ~bad
                rec = np.empty(int(keep.sum()), dtype=RECORD)
                if source.keyed:
                    mask = pa.array(keep)
                    rec["r"] = rows_coder.encode(batch.rows.filter(mask))
                    rec["c"] = cols_coder.encode(batch.cols.filter(mask))
                else:
                    rec["r"], rec["c"] = batch.rows[keep], batch.cols[keep]
                rec["v"] = batch.values[keep]
                rec.tofile(f)
                n_kept += len(rec)
        logger.info("ingest %s: parsed %d records in %.1fs", source.path, n_read, time.perf_counter() - t0)
        # Phase B: validation verdict, ID maps.
        if invalid.total:
            message = (
                f"{invalid.total} of {n_read} records of {source.path!r} are invalid "
                f"({invalid.summary()}); NMF needs finite, non-negative values with both IDs "
                f"present. First at {invalid.first}."
            )
            if invalid.counts["value too large for the store's dtype"]:
                message += f" Values above {np.finfo(dtype).max:g} do not fit {np.dtype(dtype)}: pass dtype='float64'."
            if on_invalid == "raise":
                raise ValueError(message + " Fix the input, or pass on_invalid='drop' to skip them.")
            logger.warning("%s Dropped them (on_invalid='drop').", message)
        if n_kept == 0:
            raise ValueError(f"{source.path!r} holds no valid records. Check the file and the column names.")
        # ID maps (sorted IDs, position of each code, kind): keyed sources only.
        row_ids: np.ndarray | None
        col_ids: np.ndarray | None
        row_pos: np.ndarray | None
        col_pos: np.ndarray | None
        row_kind: str | None
        col_kind: str | None
        if source.keyed:
            row_ids, row_pos, row_kind = rows_coder.finish()
            col_ids, col_pos, col_kind = cols_coder.finish()
            shape = (len(row_ids), len(col_ids))
        else:
            shape = source.shape  # type: ignore[assignment]
            row_ids = col_ids = row_pos = col_pos = None
            row_kind = col_kind = None
        row_chunks, col_chunks = normalize_chunks(chunks, shape, dtype, nnz=n_kept, cores=cores)
        # Phase C: scatter to row blocks.
        block_files = _scatter(spill, n_kept, row_chunks, row_pos, col_pos, work)
        os.remove(spill)
        # Phase D: build and write the blocks, then the IDs, then commit.
        info = MatrixInfo(
            path=output,
            kind="sparse",
            shape=shape,
            dtype=np.dtype(dtype),
            row_chunks=row_chunks,
            col_chunks=col_chunks,
            nnz_per_block=tuple((0,) * len(col_chunks) for _ in row_chunks),
            row_ids=row_kind,
            col_ids=col_kind,
            write_id=new_write_id(),
            storage_options=storage_options,
        )
        with writing_store(info, overwrite=overwrite, storage_options=storage_options) as info:
            nnz = []
            for i, path in enumerate(block_files):
                nnz.append(_build_row_block(path, i, info, duplicates, storage_options, block_format))
                os.remove(path)
            if row_ids is not None:
                write_ids(info.path, "rows", row_ids, storage_options)
                write_ids(info.path, "cols", col_ids, storage_options)
            total = sum(map(sum, nnz))
            provenance = {
                "source": os.path.basename(source.path.rstrip("/")),
                "source_format": source.format,
                "records_read": n_read,
                "records_dropped": invalid.total,
                "invalid": {k: v for k, v in invalid.counts.items() if v},
                "duplicates": duplicates,
                "duplicates_merged": n_kept - total,
                "id_order": "sorted" if source.keyed else "positions",
                "codec": block_format.codec,
                "index_dtype": block_format.index_dtype,
            }
            info = replace(info, nnz_per_block=tuple(map(tuple, nnz)), provenance=provenance)
            commit_matrix_store(info, storage_options)
        info = replace(info, path=output)
        logger.info(
            "ingest %s: %d x %d, %d entries in %.1fs",
            source.path,
            *shape,
            total,
            time.perf_counter() - t0,
        )
        return info
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _spill_chunks(path: str, n: int) -> Iterator[np.ndarray]:
    with open(path, "rb") as f:
        for start in range(0, n, SCATTER_RECORDS):
            yield np.fromfile(f, dtype=RECORD, count=min(SCATTER_RECORDS, n - start))


def _scatter(
    spill: str,
    n: int,
    row_chunks: tuple[int, ...],
    row_pos: np.ndarray | None,
    col_pos: np.ndarray | None,
    work: str,
) -> list[str]:
    """Phase C: split the spill file by row block, mapping codes to positions."""
    bounds = np.cumsum(row_chunks)
    paths = [os.path.join(work, f"rows-{i:06d}.bin") for i in range(len(row_chunks))]
    for p in paths:
        open(p, "wb").close()
    for rec in _spill_chunks(spill, n):
        if row_pos is not None:
            assert col_pos is not None  # both or neither
            rec["r"] = row_pos[rec["r"]]
            rec["c"] = col_pos[rec["c"]]
        block = np.searchsorted(bounds, rec["r"], side="right")
        # A stable sort keeps file order within a block, which
        # duplicates="last" relies on.
        order = np.argsort(block, kind="stable")
        rec = rec[order]
        ends = np.cumsum(np.bincount(block, minlength=len(paths)))
        start = 0
        for i, end in enumerate(ends):
            if end > start:
                with open(paths[i], "ab") as f:
                    rec[start:end].tofile(f)
            start = end
    return paths


def _build_row_block(
    path: str, i: int, info: MatrixInfo, duplicates: str, storage_options, block_format: BlockFormat
) -> list[int]:
    """Phase D for row block ``i``: merge duplicates, write its blocks; return their nnz."""
    rec = np.fromfile(path, dtype=RECORD)
    r0 = sum(info.row_chunks[:i])
    n_rows, n = info.row_chunks[i], info.shape[1]
    rows = rec["r"] - r0
    # Contiguous copies, so that the spilled records can be freed now.
    cols = np.ascontiguousarray(rec["c"])
    values = np.ascontiguousarray(rec["v"])
    del rec
    if duplicates == "sum":
        # COO -> CSR is a counting sort, linear in the entries, and sums duplicates.
        csr = sp.csr_matrix((values, (rows, cols)), shape=(n_rows, n))
        csr.sum_duplicates()
    else:
        csr = _keep_last(rows, cols, values, n_rows, n)
    del rows, cols, values
    csr = csr.astype(info.dtype, copy=False)
    nnz = []
    c0 = 0
    for j, width in enumerate(info.col_chunks):
        block = csr if width == n else csr[:, c0 : c0 + width]
        nnz.append(
            write_sparse_block(
                info.path,
                i,
                j,
                block,
                shape=(n_rows, width),
                dtype=info.dtype,
                storage_options=storage_options,
                codec=block_format.codec,
                index_dtype=block_format.index_dtype,
            )
        )
        c0 += width
    return nnz


def _keep_last(rows, cols, values, n_rows: int, n: int) -> sp.csr_matrix:
    """CSR keeping, for each (row, col), the value of its last record in file order."""
    if n_rows * n < 2**62:
        key = rows * n + cols
        order = np.argsort(key, kind="stable")  # stable: file order within a key
        key = key[order]
    else:
        order = np.lexsort((cols, rows))
        key = None
    rows, cols, values = rows[order], cols[order], values[order]
    del order
    if len(rows):
        last = np.empty(len(rows), dtype=bool)
        last[-1] = True
        if key is not None:
            np.not_equal(key[1:], key[:-1], out=last[:-1])
        else:
            last[:-1] = (rows[1:] != rows[:-1]) | (cols[1:] != cols[:-1])
        rows, cols, values = rows[last], cols[last], values[last]
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n_rows), out=indptr[1:])
    csr = sp.csr_matrix((values, cols, indptr), shape=(n_rows, n))
    csr.has_canonical_format = True
    return csr


def _ingest_matrix_file(
    input: str,
    output: str,
    fmt: str,
    *,
    dtype: Any,
    chunks: ChunksLike,
    on_invalid: str,
    overwrite: bool,
    storage_options: Mapping[str, Any] | None,
    block_format: BlockFormat,
    cores: int,
) -> MatrixInfo:
    """.npz (SciPy sparse, in memory), .npy (memory-mapped) and dense .mtx files."""
    if fmt == "npz":
        try:
            X: Any = sp.load_npz(input)
        except (ValueError, KeyError, OSError, TypeError) as exc:
            raise ValueError(
                f"{input!r} is not a SciPy sparse .npz file ({exc}). Save it with "
                "scipy.sparse.save_npz, or load it yourself and call dnmf.write_matrix."
            ) from None
    elif fmt == "npy":
        X = np.load(input, mmap_mode="r")
    else:
        import scipy.io

        X = np.asarray(scipy.io.mmread(input))  # dense MatrixMarket: read in memory
    if X.ndim != 2 or X.dtype.kind not in "biuf" or min(X.shape) < 1:
        raise ValueError(
            f"{input!r} holds an array of shape {X.shape} and dtype {X.dtype}; dnmf needs a "
            "non-empty 2-D numeric matrix."
        )
    default = X.dtype if X.dtype.kind == "f" else np.float64
    dtype = np.dtype(default if dtype is None else dtype)
    if sp.issparse(X):
        return _ingest_csr(
            input,
            sp.csr_matrix(X),
            output,
            fmt,
            dtype,
            chunks,
            on_invalid,
            overwrite,
            storage_options,
            block_format,
            cores,
        )
    return _ingest_dense(input, X, output, fmt, dtype, chunks, on_invalid, overwrite, storage_options)


def _invalid_message(input: str, total: int, size: int, first: str, counts: str) -> str:
    return (
        f"{total} of {size} entries of {input!r} are invalid ({counts}); NMF needs finite, "
        f"non-negative values. First at {first}."
    )


def _counts(nonfinite: int, negative: int) -> str:
    parts = [f"{n} {what}" for n, what in ((nonfinite, "non-finite"), (negative, "negative")) if n]
    return ", ".join(parts)


def _report(input, invalid_total, size, first, counts, on_invalid) -> None:
    if not invalid_total:
        return
    message = _invalid_message(input, invalid_total, size, first, counts)
    if on_invalid == "raise":
        raise ValueError(message + " Fix the input, or pass on_invalid='drop' to skip them.")
    logger.warning("%s Dropped them (on_invalid='drop').", message)


def _ingest_csr(input, X, output, fmt, dtype, chunks, on_invalid, overwrite, storage_options, block_format, cores):
    X.sum_duplicates()
    nonfinite = ~np.isfinite(X.data)
    negative = X.data < 0
    bad = nonfinite | negative
    if bad.any():
        k = int(np.argmax(bad))
        row = int(np.searchsorted(X.indptr, k, side="right") - 1)
        first = f"entry (row {row}, col {int(X.indices[k])}) = {float(X.data[k])!r}"
        counts = _counts(int(nonfinite.sum()), int((negative & ~nonfinite).sum()))
        _report(input, int(bad.sum()), X.nnz, first, counts, on_invalid)
        # Drop exactly the invalid entries; stored zeros are kept (observations).
        coo = X.tocoo()
        keep = ~bad
        X = sp.csr_matrix((coo.data[keep], (coo.row[keep], coo.col[keep])), shape=X.shape, dtype=X.dtype)
    row_chunks, col_chunks = normalize_chunks(chunks, X.shape, dtype, nnz=X.nnz, cores=cores)
    info = MatrixInfo(
        path=output,
        kind="sparse",
        shape=X.shape,
        dtype=dtype,
        row_chunks=row_chunks,
        col_chunks=col_chunks,
        nnz_per_block=tuple((0,) * len(col_chunks) for _ in row_chunks),
        write_id=new_write_id(),
        storage_options=storage_options,
    )
    with writing_store(info, overwrite=overwrite, storage_options=storage_options) as info:
        nnz = []
        r0 = 0
        for i, h in enumerate(row_chunks):
            band = X[r0 : r0 + h]
            row, c0 = [], 0
            for j, w in enumerate(col_chunks):
                row.append(
                    write_sparse_block(
                        info.path,
                        i,
                        j,
                        band[:, c0 : c0 + w],
                        shape=(h, w),
                        dtype=dtype,
                        storage_options=storage_options,
                        codec=block_format.codec,
                        index_dtype=block_format.index_dtype,
                    )
                )
                c0 += w
            nnz.append(tuple(row))
            r0 += h
        info = replace(
            info,
            nnz_per_block=tuple(nnz),
            provenance={
                "source": os.path.basename(input),
                "source_format": fmt,
                "entries_dropped": int(bad.sum()),
                "codec": block_format.codec,
                "index_dtype": block_format.index_dtype,
            },
        )
        commit_matrix_store(info, storage_options)
    return replace(info, path=output)


def _ingest_dense(input, X, output, fmt, dtype, chunks, on_invalid, overwrite, storage_options):
    row_chunks, col_chunks = normalize_chunks(chunks, X.shape, dtype)
    if not (is_regular(row_chunks) and is_regular(col_chunks)):
        raise ValueError(f"Dense stores need regular chunks; got {(row_chunks, col_chunks)}. Pass chunks=(rows, cols).")
    bounds = np.cumsum((0,) + row_chunks)
    # Validate every row band before writing anything.
    total = n_nonfinite = 0
    first = None
    for r0, r1 in zip(bounds[:-1], bounds[1:], strict=True):
        band = np.asarray(X[r0:r1])
        nonfinite = ~np.isfinite(band)
        bad = nonfinite | (band < 0)
        if bad.any():
            total += int(bad.sum())
            n_nonfinite += int(nonfinite.sum())
            if first is None:
                r, c = np.argwhere(bad)[0]
                first = f"entry (row {r0 + r}, col {c}) = {float(band[r, c])!r}"
    if total:
        _report(input, total, X.size, first, _counts(n_nonfinite, total - n_nonfinite), on_invalid)
    info = MatrixInfo(
        path=output,
        kind="dense",
        shape=X.shape,
        dtype=dtype,
        row_chunks=row_chunks,
        col_chunks=col_chunks,
        array_path=DENSE_ARRAY,
        write_id=new_write_id(),
        storage_options=storage_options,
    )
    col_bounds = np.cumsum((0,) + col_chunks)
    with writing_store(info, overwrite=overwrite, storage_options=storage_options) as info:
        for r0, r1 in zip(bounds[:-1], bounds[1:], strict=True):
            band = np.array(X[r0:r1])  # one row band of the memory map in memory
            if total:  # on_invalid="drop": a dropped entry of a dense matrix is a zero
                band[~np.isfinite(band) | (band < 0)] = 0
            band = band.astype(dtype, copy=False)
            for c0, c1 in zip(col_bounds[:-1], col_bounds[1:], strict=True):
                write_dense_block(
                    info.path,
                    DENSE_ARRAY,
                    (int(r0), int(r1), int(c0), int(c1)),
                    band[:, c0:c1],
                    storage_options=storage_options,
                )
        provenance = {"source": os.path.basename(input), "source_format": fmt}
        info = replace(info, provenance={**provenance, "entries_zeroed": total})
        commit_matrix_store(info, storage_options)
    return replace(info, path=output)
