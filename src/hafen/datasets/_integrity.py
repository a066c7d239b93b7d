"""Detecting damaged files: checksums written with every file, checked when it is read.

Three layers, from cheap to thorough:

- **Page checksums.** Every Parquet file hafen writes (data and index files) carries a CRC-32 of
  each of its pages (``write_page_checksum``), and every read verifies them
  (``page_checksum_verification``): a flipped bit in a data or dictionary page is an error, not
  a different value.
- **Footer checks.** After a read, what each file's footer says is compared with what the log
  recorded when the file was written: its rows, and its columns' names and types. A damaged
  footer that still parses (a column renamed, which Arrow would read as nulls; a timestamp's
  unit changed) is an error too. (These checks read nothing: Arrow keeps the footer it read.)
- **File checksums.** The log records each data file's size and a CRC-32 of its bytes, computed
  from the bytes as they are written. :func:`verify_files` reads every file of a version whole
  and checks both, then decodes it with page checksums on.

Reads do not compute the file checksum: that would read each file whole (a projection reads only
its columns) and cost about as much again as the page checksums. The one kind of damage a read
can miss is therefore a footer that still parses but points a column at another valid page of
the same type; it took one of about 150,000 single-byte flips of a test file. Verification finds
it, like every single-byte flip: CRC-32 detects every error burst of up to 32 bits.

Why CRC-32 (zlib's): it is the checksum Parquet's pages and S3's ``CRC32`` use, detects every
burst of up to 32 flipped bits with certainty, and every zlib computes the same value. hafen
computes it with zlib-ng's SIMD implementation (about 20 GB/s on one core, against 2.5-3.4 GB/s
for the standard library's zlib, which is the fallback where zlib-ng is not installed); both
release the GIL, so writers hash in parallel. A cryptographic hash is 2-5 times slower than
zlib and guards against tampering, which is not the threat here.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

import pyarrow as pa
import pyarrow.dataset as pds

try:
    from zlib_ng.zlib_ng import crc32
except ImportError:  # pragma: no cover - the same CRC-32, slower
    from zlib import crc32

from hafen.datasets._actions import DataFile
from hafen.datasets._schema import _normalize_type

__all__ = [
    "DAMAGE",
    "HashingSink",
    "checksum_of",
    "footer_problem",
    "fragment_problem",
    "parquet_format",
]

ALGORITHM = "crc32"

#: What a damaged Parquet file raises in Arrow (and pyarrow, decoding names in its footer).
DAMAGE = (pa.ArrowException, OSError, UnicodeDecodeError)


def checksum_text(crc: int) -> str:
    """The log's form of a CRC-32: ``"crc32:"`` and eight hex digits."""
    return f"{ALGORITHM}:{crc & 0xFFFFFFFF:08x}"


def checksum_of(data: bytes | memoryview) -> str:
    """The checksum of ``data`` in the log's form."""
    return checksum_text(crc32(data))


def parquet_format() -> pds.ParquetFileFormat:
    """Arrow's Parquet format, verifying the checksum of every page it reads."""
    return pds.ParquetFileFormat(
        default_fragment_scan_options=pds.ParquetFragmentScanOptions(
            page_checksum_verification=True
        )
    )


# -- writing ---------------------------------------------------------------------------------


class HashingSink:
    """A writable file object that passes writes on to ``inner``, keeping their CRC-32 and size.

    Wrapped in :class:`pyarrow.PythonFile` it is a sink for Arrow's writers; ``checksum`` is
    final once it is closed. ``crc32`` releases the GIL on large writes.
    """

    def __init__(self, inner: pa.NativeFile) -> None:
        self._inner = inner
        self._crc = 0
        self.size = 0
        self.closed = False

    def write(self, data: bytes) -> int:
        self._crc = crc32(data, self._crc)
        self._inner.write(data)
        self.size += len(data)
        return len(data)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self._inner.flush()

    def close(self) -> None:
        if not self.closed:
            self._inner.close()
            self.closed = True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    @property
    def checksum(self) -> str:
        return checksum_text(self._crc)

    def stream(self) -> pa.NativeFile:
        """This sink as an Arrow output stream."""
        return pa.PythonFile(self, mode="w")


# -- reading ---------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def _same_values(actual: pa.DataType, expected: pa.DataType) -> bool:
    """Whether a file column of type ``actual`` reads as the same values as ``expected``.

    A file hafen wrote has its dataset's types as Parquet stores them (a date64 as days,
    seconds as milliseconds), but a concurrent ``schema_mode="merge"`` can leave a narrower
    integer or float, or plain values where a dictionary is expected (or the reverse); another
    unit or time zone would change the values, and means damage. Nested types are not compared.
    """
    a, e = _normalize_type(actual), _normalize_type(expected)
    if pa.types.is_dictionary(a):
        a = a.value_type
    if pa.types.is_dictionary(e):
        e = e.value_type
    if a == e or a == _as_stored(e) or pa.types.is_null(a) or pa.types.is_nested(e):
        return True
    if pa.types.is_integer(a) and pa.types.is_integer(e):
        return e.bit_width >= a.bit_width and (
            pa.types.is_signed_integer(e) or not pa.types.is_signed_integer(a)
        )
    return pa.types.is_floating(a) and pa.types.is_floating(e) and e.bit_width >= a.bit_width


def _as_stored(t: pa.DataType) -> pa.DataType:
    """The type Arrow reads back from Parquet for a column written as ``t``."""
    if pa.types.is_date64(t):
        return pa.date32()
    if pa.types.is_time32(t) and t.unit == "s":
        return pa.time32("ms")
    if pa.types.is_timestamp(t) and t.unit == "s":
        return pa.timestamp("ms", t.tz)
    return t


def footer_problem(
    f: DataFile,
    physical: pa.Schema,
    num_rows: int,
    group_rows: Iterable[int],
    expected: pa.Schema,
) -> str | None:
    """What is wrong with a data file's footer, given the log's record ``f``; None if nothing.

    ``physical`` is the Arrow schema the footer describes, ``num_rows`` the rows it counts and
    ``group_rows`` the rows of each row group; ``expected`` is the dataset schema without the
    partition columns. Files without a recorded checksum (written by Kartothek, plateau or an
    older hafen) are held only to their row count and to columns that exist in the dataset.
    """
    in_groups = sum(group_rows)
    if num_rows != f.num_rows or in_groups != f.num_rows:
        return (
            f"has a damaged footer: it counts {num_rows} rows ({in_groups} in its row "
            f"groups), the log {f.num_rows}"
        )
    strict = f.checksum is not None
    for field in physical:
        index = expected.get_field_index(field.name)
        if index < 0:
            if strict:
                return (
                    f"has a damaged footer: it names a column {field.name!r} the dataset "
                    "does not have"
                )
            continue
        want = expected.field(index).type
        if strict and not _same_values(field.type, want):
            return (
                f"has a damaged footer: it gives column {field.name!r} the type "
                f"{field.type}, not {want}"
            )
    return None


def fragment_problem(
    fragment: pds.ParquetFileFragment, f: DataFile, expected: pa.Schema
) -> str | None:
    """:func:`footer_problem` of a fragment Arrow has scanned (its footer is cached)."""
    try:
        metadata = fragment.metadata
        groups = [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]
        return footer_problem(f, fragment.physical_schema, metadata.num_rows, groups, expected)
    except DAMAGE as exc:  # names pyarrow cannot decode, say
        return f"has a damaged footer ({type(exc).__name__}: {exc})"
