"""Streaming readers of coordinate data: ratings tables and MatrixMarket files.

Each source yields :class:`Batch` es of (row key, column key, value) records
in file order, never the whole file. Ratings tables (CSV, Parquet) are read
with pyarrow and give their IDs as Arrow arrays, to be mapped to positions;
MatrixMarket gives positions directly.
"""

from __future__ import annotations

import gzip
import io
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

#: Records per batch: bounded memory and few enough batches that per-batch
#: overhead is negligible.
BATCH_RECORDS = 1_000_000
#: Rough bytes per CSV line, to turn a record count into pyarrow's block size.
_CSV_LINE_BYTES = 32


@dataclass
class Batch:
    """Records ``start .. start + len(values)`` of one file of a source.

    ``rows``/``cols`` are IDs (Arrow arrays, keyed sources) or 0-based
    positions (NumPy arrays); records missing an ID are flagged in
    ``missing``.
    """

    rows: Any
    cols: Any
    values: np.ndarray
    missing: np.ndarray
    file: str
    start: int
    #: Record offset (from ``start``) of each record when they are not
    #: consecutive, e.g. mirrored entries of a symmetric matrix.
    origin: np.ndarray | None = None
    #: The values as found in the file (text), to show a non-numeric one as written.
    raw_values: Any = None

    def record(self, k: int) -> int:
        """Index in its file of record ``k`` of this batch."""
        return self.start + (int(self.origin[k]) if self.origin is not None else k)


class Source:
    """A stream of coordinate records (the interface ingestion reads)."""

    #: Keyed sources give IDs to map; others give 0-based positions.
    keyed: bool = True
    #: Known shape (positional sources) or None.
    shape: tuple[int, int] | None = None
    format: str = ""
    row_label, col_label, value_label = "row", "col", "value"

    def __init__(self, path: str) -> None:
        self.path = path

    def batches(self) -> Iterator[Batch]:
        raise NotImplementedError

    def locate(self, batch: Batch, k: int) -> str:
        """Where record ``k`` of ``batch`` is, for error messages."""
        return f"record {batch.record(k)} of {batch.file}"

    def describe(self, batch: Batch, k: int) -> str:
        """Location and content of record ``k`` of ``batch``."""
        return (
            f"{self.locate(batch, k)}: {self.row_label}={_item(batch.rows, k)!r}, "
            f"{self.col_label}={_item(batch.cols, k)!r}, "
            f"{self.value_label}={_value_text(batch, k)}"
        )


def _value_text(batch: Batch, k: int) -> str:
    value = float(batch.values[k])
    if np.isnan(value) and batch.raw_values is not None:
        raw = _item(batch.raw_values, k)
        if raw is not None:
            return repr(raw)
    return repr(value)


def _item(values: Any, k: int) -> Any:
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values[k].as_py()
    v = values[k]
    return v.item() if isinstance(v, np.generic) else v


def _missing_column(path: str, col: str, available: list[str], role: str) -> ValueError:
    fix = "value_col=None for implicit feedback (every pair counts 1.0)" if role == "value_col" else ""
    return ValueError(
        f"{role}={col!r} is not a column of {path!r}; its columns are {available}. Pass "
        f"{role} naming the right column" + (f", or {fix}" if fix else "") + "."
    )


def _to_values(column: Any, n: int) -> np.ndarray:
    """Values as float64; anything non-numeric becomes NaN (then reported invalid)."""
    if column is None:
        return np.ones(n, dtype=np.float64)
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if isinstance(column, pa.Array):
        if pa.types.is_dictionary(column.type):
            column = column.dictionary_decode()
        try:
            return column.cast(pa.float64()).to_numpy(zero_copy_only=False)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            column = column.to_pandas()
    return pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


def _ids(column: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """IDs with dictionaries decoded, and the mask of missing ones."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    return column, column.is_null().to_numpy(zero_copy_only=False)


#: pandas.read_csv-style options understood for CSV input, and pyarrow's names.
CSV_OPTIONS = ("sep", "delimiter", "header", "names", "skiprows", "quotechar", "encoding")


class CsvSource(Source):
    """A delimited ratings table streamed by pyarrow's CSV reader.

    IDs are read as text (so ``"007"`` and ``"7"`` stay distinct); ingestion
    turns them into integers afterwards if every one is a canonical integer.
    Only empty fields are missing: ``NA`` or ``null`` may be real IDs.
    """

    format = "csv"

    def __init__(
        self,
        path: str,
        user_col: str,
        item_col: str,
        value_col: str | None,
        *,
        batch_records: int = BATCH_RECORDS,
        read_options: Mapping[str, Any] | None = None,
    ) -> None:
        import pyarrow.csv as pcsv

        super().__init__(path)
        self.user_col, self.item_col, self.value_col = user_col, item_col, value_col
        self.row_label, self.col_label = user_col, item_col
        self.value_label = value_col or "value"
        opts = dict(read_options or {})
        unknown = sorted(set(opts) - set(CSV_OPTIONS))
        if unknown:
            raise ValueError(
                f"read_options {unknown} are not supported for CSV input; use only "
                f"{list(CSV_OPTIONS)}, or convert the file to Parquet first."
            )
        header = opts.get("header", "infer")
        names = opts.get("names")
        skip = int(opts.get("skiprows", 0))
        if header == "infer":
            header = None if names else 0
        if header not in (None, 0):
            raise ValueError(f"read_options['header'] must be 0 or None; got {header!r}.")
        self._header_lines = skip + (1 if header == 0 else 0)
        self._read = pcsv.ReadOptions(
            block_size=max(1 << 16, batch_records * _CSV_LINE_BYTES),
            skip_rows=skip,
            column_names=list(names) if names else None,
            skip_rows_after_names=1 if names and header == 0 else 0,
            autogenerate_column_names=False,
            encoding=opts.get("encoding", "utf8"),
        )
        self._parse = pcsv.ParseOptions(
            delimiter=opts.get("sep", opts.get("delimiter", ",")),
            quote_char=opts.get("quotechar", '"'),
        )
        self._check_columns()

    def _reader(self, columns: list[str] | None = None):
        import pyarrow.csv as pcsv

        convert = pcsv.ConvertOptions(
            include_columns=columns,
            column_types={c: pa.string() for c in (columns or [])},
            null_values=[""],
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
        )
        stream = pa.input_stream(self.path, compression="detect")
        return pcsv.open_csv(stream, read_options=self._read, parse_options=self._parse, convert_options=convert)

    def _csv_error(self, exc: Exception) -> ValueError:
        """pyarrow's CSV error, with the path and the likely cause."""
        with open(self.path, "rb") as fh:
            magic = fh.read(2)
        text = " ".join(str(exc).split())
        if magic == b"\x1f\x8b" and not self.path.lower().endswith(".gz"):
            return ValueError(
                f"{self.path!r} holds gzip-compressed data but is not named *.gz. Rename it to *.csv.gz "
                "(or decompress it)."
            )
        if "Empty CSV file" in text:
            return ValueError(f"{self.path!r} is empty: no header line and no records. Check the file.")
        return ValueError(f"Cannot read {self.path!r} as CSV: {text}. Check the file and the separator (--sep).")

    def _check_columns(self) -> None:
        try:
            reader = self._reader()
        except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
            raise self._csv_error(exc) from None
        available = list(reader.schema.names)
        reader.close()
        for role, col in (
            ("user_col", self.user_col),
            ("item_col", self.item_col),
            ("value_col", self.value_col),
        ):
            if col is not None and col not in available:
                raise _missing_column(self.path, col, available, role)

    def batches(self) -> Iterator[Batch]:
        cols = [self.user_col, self.item_col] + ([self.value_col] if self.value_col else [])
        start = 0
        try:
            reader = self._reader(cols)
        except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
            raise self._csv_error(exc) from None
        try:
            while True:
                try:
                    rb = reader.read_next_batch()
                except StopIteration:
                    break
                except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
                    raise self._csv_error(exc) from None
                if rb.num_rows == 0:
                    continue
                users, m1 = _ids(rb.column(self.user_col))
                items, m2 = _ids(rb.column(self.item_col))
                raw = rb.column(self.value_col) if self.value_col else None
                values = _to_values(raw, rb.num_rows)
                yield Batch(users, items, values, m1 | m2, self.path, start, raw_values=raw)
                start += rb.num_rows
        finally:
            reader.close()

    def locate(self, batch: Batch, k: int) -> str:
        # Assumes no blank lines and no line breaks inside quoted fields.
        return f"line {batch.record(k) + self._header_lines + 1} of {batch.file}"


class ParquetSource(Source):
    """A Parquet ratings table (a file, or a directory of files in name order).

    ID columns must be integers or strings (dictionary-encoded strings too);
    they keep their type in the ID maps.
    """

    format = "parquet"

    def __init__(
        self,
        path: str,
        user_col: str,
        item_col: str,
        value_col: str | None,
        *,
        batch_records: int = BATCH_RECORDS,
    ) -> None:
        super().__init__(path)
        import pyarrow.parquet as pq

        self.user_col, self.item_col, self.value_col = user_col, item_col, value_col
        self.row_label, self.col_label = user_col, item_col
        self.value_label = value_col or "value"
        self.batch_records = batch_records
        if os.path.isdir(path):
            self.files = sorted(
                os.path.join(d, f)
                for d, _, fs in os.walk(path)
                for f in fs
                if f.endswith((".parquet", ".pq")) and not f.startswith((".", "_"))
            )
            if not self.files and os.path.exists(os.path.join(path, "zarr.json")):
                raise ValueError(
                    f"{path!r} is already a Zarr store, not a file to ingest. Give it to fit, split or info "
                    "directly (copy a matrix store with dnmf.write_matrix)."
                )
            if not self.files:
                raise ValueError(
                    f"{path!r} is a directory without .parquet files. Point at a Parquet file or dataset directory."
                )
        else:
            self.files = [path]
        schema = pq.read_schema(self.files[0])
        for role, col in (("user_col", user_col), ("item_col", item_col), ("value_col", value_col)):
            if col is not None and col not in schema.names:
                raise _missing_column(self.files[0], col, list(schema.names), role)
        self.id_types = {c: self._id_kind(schema.field(c).type, c, self.files[0]) for c in (user_col, item_col)}

    def _id_kind(self, typ, col: str, file: str) -> str:
        if pa.types.is_dictionary(typ):
            typ = typ.value_type
        if pa.types.is_integer(typ):
            return "int"
        if pa.types.is_string(typ) or pa.types.is_large_string(typ):
            return "str"
        raise ValueError(
            f"ID column {col!r} of {file!r} has type {typ}; IDs must be integers or "
            "strings. Cast the column (e.g. to string) before ingesting."
        )

    def _column_ids(self, column: pa.Array, col: str, file: str) -> tuple[pa.Array, np.ndarray]:
        if self._id_kind(column.type, col, file) != self.id_types[col]:
            raise ValueError(
                f"ID column {col!r} has type {column.type} in {file!r} but "
                f"{self.id_types[col]} in {self.files[0]!r}. Give every file the same schema."
            )
        column, missing = _ids(column)
        if self.id_types[col] == "int":
            column = column.cast(pa.int64())
        return column, missing

    def batches(self) -> Iterator[Batch]:
        import pyarrow.parquet as pq

        cols = [self.user_col, self.item_col] + ([self.value_col] if self.value_col else [])
        for file in self.files:
            start = 0
            for rb in pq.ParquetFile(file).iter_batches(batch_size=self.batch_records, columns=cols):
                users, m1 = self._column_ids(rb.column(self.user_col), self.user_col, file)
                items, m2 = self._column_ids(rb.column(self.item_col), self.item_col, file)
                values = _to_values(rb.column(self.value_col) if self.value_col else None, rb.num_rows)
                yield Batch(users, items, values, m1 | m2, file, start)
                start += rb.num_rows

    def locate(self, batch: Batch, k: int) -> str:
        return f"row {batch.record(k)} (0-based) of {batch.file}"


@dataclass(frozen=True)
class MtxHeader:
    """The banner and size line of a MatrixMarket file."""

    layout: str  # "coordinate" or "array"
    field: str  # "real", "integer", "pattern", ...
    symmetry: str  # "general", "symmetric", ...
    shape: tuple[int, int]
    entries: int
    header_lines: int


def _open_text(path: str):
    if path.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8")


def read_mtx_header(path: str) -> MtxHeader:
    """Parse the banner, comments and size line of a MatrixMarket file."""
    with _open_text(path) as f:
        banner = f.readline()
        parts = banner.strip().lower().split()
        if len(parts) != 5 or parts[0] != "%%matrixmarket" or parts[1] != "matrix":
            raise ValueError(
                f"{path!r} does not start with a MatrixMarket banner "
                f"('%%MatrixMarket matrix ...'); got {banner[:60]!r}. Pass format=... "
                "matching the file."
            )
        layout, field, symmetry = parts[2:]
        n_lines = 1
        for line in f:
            n_lines += 1
            if line.strip() and not line.lstrip().startswith("%"):
                sizes = [int(v) for v in line.split()]
                break
        else:
            raise ValueError(f"{path!r} has no size line after its MatrixMarket banner.")
    if layout == "coordinate":
        shape, entries = (sizes[0], sizes[1]), sizes[2]
    else:
        shape, entries = (sizes[0], sizes[1]), sizes[0] * sizes[1]
    return MtxHeader(layout, field, symmetry, shape, entries, n_lines)


class MtxSource(Source):
    """The entries of a coordinate MatrixMarket file, streamed with pandas.

    Symmetric files yield both triangles. Positions are converted to 0-based.
    """

    keyed = False
    format = "mtx"

    def __init__(self, path: str, *, batch_records: int = BATCH_RECORDS) -> None:
        super().__init__(path)
        self.header = read_mtx_header(path)
        h = self.header
        if h.layout != "coordinate":
            raise ValueError(f"{path!r} is a dense ('array') MatrixMarket file; read it with the in-memory reader.")
        if h.field not in ("real", "integer", "pattern") or h.symmetry not in (
            "general",
            "symmetric",
        ):
            raise ValueError(
                f"{path!r} is a {h.field} {h.symmetry} MatrixMarket matrix; dnmf ingests "
                "real, integer or pattern matrices that are general or symmetric (NMF needs "
                "real non-negative entries). Convert the matrix first."
            )
        self.shape = h.shape
        self.batch_records = batch_records
        self.row_label, self.col_label = "row", "col"

    def batches(self) -> Iterator[Batch]:
        h = self.header
        names = ["r", "c"] if h.field == "pattern" else ["r", "c", "v"]
        reader = pd.read_csv(
            self.path,
            sep=r"\s+",
            header=None,
            names=names,
            usecols=range(len(names)),
            skiprows=h.header_lines,
            comment="%",
            chunksize=self.batch_records,
            dtype={"r": np.int64, "c": np.int64},
            skip_blank_lines=True,
        )
        start = 0
        with reader:
            for df in reader:
                rows = df["r"].to_numpy() - 1
                cols = df["c"].to_numpy() - 1
                values = _to_values(df.get("v"), len(df))
                missing = np.zeros(len(df), dtype=bool)
                batch = Batch(rows, cols, values, missing, self.path, start)
                start += len(df)
                if h.symmetry == "symmetric":
                    # The file holds one triangle; mirror its off-diagonal entries.
                    off = rows != cols
                    batch = Batch(
                        np.concatenate([rows, cols[off]]),
                        np.concatenate([cols, rows[off]]),
                        np.concatenate([values, values[off]]),
                        np.zeros(len(rows) + int(off.sum()), dtype=bool),
                        self.path,
                        batch.start,
                        np.concatenate([np.arange(len(rows)), np.flatnonzero(off)]),
                    )
                yield batch

    def locate(self, batch: Batch, k: int) -> str:
        # Assumes no comment or blank lines among the entries (the usual case).
        return f"line {batch.record(k) + self.header.header_lines + 1} of {batch.file}"

    def describe(self, batch: Batch, k: int) -> str:
        # Report positions the way the file writes them (1-based).
        return (
            f"{self.locate(batch, k)}: row={int(batch.rows[k]) + 1}, col={int(batch.cols[k]) + 1}, "
            f"value={float(batch.values[k])!r}"
        )
