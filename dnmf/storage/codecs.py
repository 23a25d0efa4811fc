"""Compression settings shared by every array dnmf writes.

Blosc with Zstandard and byte shuffling compresses CSR index and rating
arrays about 25% better than plain Zstandard and decodes at least as fast.
A CRC32C checksum after the compressor turns a truncated or bit-flipped
chunk into a clear error instead of silently wrong numbers.

Sparse stores may be written with another codec (:func:`parse_codec`):
``"zstd[:LEVEL]"`` (the default, level 3), ``"lz4[:LEVEL]"`` (Blosc LZ4
with shuffling: faster to decode, larger) or ``"none"`` (checksum only).
Zarr records each array's codecs in its metadata, so readers need no
option: any store reads back whatever codec wrote it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

#: Zstandard level: 3 is Zstandard's default, a good speed/size balance.
ZSTD_LEVEL = 3
#: Codec names :func:`parse_codec` accepts.
CODEC_NAMES = ("zstd", "lz4", "none")
#: Blosc's LZ4 level: 5 is Blosc's own default.
LZ4_LEVEL = 5
#: Default codec of numeric arrays: Blosc-LZ4, byte-shuffled. A fit reads the
#: whole store every iteration, and LZ4 decodes 2-4x faster than Zstandard
#: (stores written before this release, Zstandard level 3, read as before).
DEFAULT_CODEC = f"lz4:{LZ4_LEVEL}"
#: Index widths of sparse blocks: "auto" is 32-bit unless the block needs 64.
INDEX_DTYPES = ("auto", "int32", "int64")
#: Blosc refuses buffers of 2 GiB or more; beyond this plain Zstandard is used.
_BLOSC_MAX_BYTES = 2**31 - 2**16
_LEVELS = {"zstd": (1, 22), "lz4": (1, 9)}

#: Zarr array options that make a missing chunk detectable: every chunk is
#: written, even one equal to the fill value. (Typed Any: Zarr types it as
#: ``zarr.core.array_spec.ArrayConfigParams``, a TypedDict of a private module.)
ARRAY_CONFIG: Any = {"write_empty_chunks": True}


@dataclass(frozen=True)
class Codec:
    """A parsed codec spec: ``name`` in :data:`CODEC_NAMES` and its level (None for "none")."""

    name: str
    level: int | None

    def __str__(self) -> str:
        return self.name if self.level is None else f"{self.name}:{self.level}"


def parse_codec(spec: str | Codec | None, whom: str = "codec") -> Codec:
    """``"zstd"``, ``"zstd:9"``, ``"lz4"``, ``"lz4:1"`` or ``"none"`` as a :class:`Codec`.

    None means :data:`DEFAULT_CODEC`. A name without a level takes the
    default level (3 for zstd, 5 for lz4, Blosc's default).

    Raises
    ------
    ValueError
        For an unknown name or a level out of range; ``whom`` names the
        option in the message (e.g. ``"--codec"`` on the command line).
    """
    if spec is None:
        spec = DEFAULT_CODEC
    if isinstance(spec, Codec):
        return spec
    name, _, level_text = str(spec).strip().lower().partition(":")
    if name not in CODEC_NAMES:
        raise ValueError(f"{whom} must be one of 'zstd[:LEVEL]', 'lz4[:LEVEL]' or 'none'; got {spec!r}.")
    if name == "none":
        if level_text:
            raise ValueError(f"{whom} 'none' takes no level; got {spec!r}. Pass 'none'.")
        return Codec("none", None)
    lo, hi = _LEVELS[name]
    if not level_text:
        return Codec(name, ZSTD_LEVEL if name == "zstd" else LZ4_LEVEL)
    try:
        level = int(level_text)
    except ValueError:
        level = -1
    if not lo <= level <= hi:
        raise ValueError(f"{whom} {name!r} takes a level from {lo} to {hi}; got {spec!r}.")
    return Codec(name, level)


def check_index_dtype(index_dtype: str, whom: str = "index_dtype") -> str:
    """``index_dtype`` if it is one of :data:`INDEX_DTYPES`, else ValueError naming ``whom``."""
    if index_dtype not in INDEX_DTYPES:
        raise ValueError(f"{whom} must be one of {', '.join(map(repr, INDEX_DTYPES))}; got {index_dtype!r}.")
    return index_dtype


def numeric_compressors(dtype: np.dtype, chunk_elements: int, codec: str | Codec | None = None) -> tuple[Any, ...]:
    """Compressor chain for a numeric array with chunks of ``chunk_elements``."""
    dtype = np.dtype(dtype)
    spec = parse_codec(codec)
    if spec.name == "none":
        return (Crc32cCodec(),)
    assert spec.level is not None
    compressor: Any
    if chunk_elements * dtype.itemsize < _BLOSC_MAX_BYTES:
        cname: Any = spec.name  # "zstd" or "lz4", both Blosc compressor names
        compressor = BloscCodec(cname=cname, clevel=spec.level, shuffle="shuffle", typesize=dtype.itemsize)
    else:
        compressor = ZstdCodec(level=spec.level if spec.name == "zstd" else ZSTD_LEVEL)
    return (compressor, Crc32cCodec())


def string_compressors() -> tuple[Any, ...]:
    """Compressor chain for variable-length UTF-8 string arrays (ID maps)."""
    return (ZstdCodec(level=ZSTD_LEVEL), Crc32cCodec())
