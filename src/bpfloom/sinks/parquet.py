"""Raw records to a Parquet file, straight from the numpy batches.

The fast way out for bulk capture: each batch's records, viewed as a numpy structured
array (``Batch.numpy()``, no copy), become Arrow columns with no Python step per event,
and are written as one row group per batch. What is written is therefore the record
as the kernel wrote it — the C struct's fields, not a tool's computed columns:

- integers, floats and bools: columns of the same type;
- ``char`` arrays: ``binary`` columns holding the bytes up to the first NUL (exact,
  whatever the encoding; ``.decode()`` them);
- other arrays: fixed-size lists (arrays of arrays flattened to one list per row);
- nested structs: struct columns;
- bitfields are not in a numpy view and are left out; wider opaque values (16-byte
  integers) are fixed-size binary.

Needs pyarrow (``pip install 'bpfloom[parquet]'``). The file must not exist yet: a
Parquet file cannot be appended to, and bpfloom never overwrites what the user had.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .._exceptions import BpfloomError
from ..batch import empty_batch
from . import Record, Sink

if TYPE_CHECKING:
    from ..batch import Batch
    from ..decode import Decoder


class ParquetSink(Sink):
    """Raw records of every batch appended as a row group to a new Parquet file.

    Raises ``BpfloomError`` at construction when pyarrow is missing or ``path`` exists
    or cannot be created. Batches of several record types (objects with several
    buffers) cannot share one file: the first type fixes the schema, and a batch of
    another is a counted error.
    """

    wants_batches = True

    def __init__(
        self,
        path: str,
        on_stop: Callable[[], None] | None = None,
        *,
        decoder: Decoder | None = None,
    ) -> None:
        """``decoder``, the record type when known in advance, lets a run that saw no
        event still leave a valid file (no rows, the columns of that type)."""
        super().__init__(on_stop)
        self._decoder = decoder
        try:
            import pyarrow
            import pyarrow.parquet  # noqa: F401
        except ImportError as exc:
            raise BpfloomError(
                "writing Parquet needs pyarrow: pip install 'bpfloom[parquet]'"
            ) from exc
        self.name = path
        self.path = path
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except FileExistsError:
            raise BpfloomError(
                f"{path} exists; a Parquet file cannot be appended to: choose a new name"
            ) from None
        except OSError as exc:
            raise BpfloomError(f"cannot write {path}: {exc.strerror}", errno=exc.errno) from exc
        self._file = os.fdopen(fd, "wb")
        self._writer: Any = None
        self._schema: Any = None

    def _write_batch(self, batch: Batch) -> None:
        import pyarrow.parquet as pq

        # Fleet batches (bpfloom.collect) come as Arrow already.
        arrow = getattr(batch, "arrow", None)
        table = arrow() if arrow is not None else arrow_table(batch.numpy())
        if self._writer is None:
            self._writer = pq.ParquetWriter(self._file, table.schema)
            self._schema = table.schema
        elif not table.schema.equals(self._schema):
            raise BpfloomError(f"{batch.source}: records of another type than the file's")
        self._writer.write_table(table)

    def _write(self, records: Sequence[Record]) -> None:
        """Only raw batches go to Parquet; decoded records are not written here."""

    def _close(self) -> None:
        if self._writer is None and self._decoder is not None and not self._file.closed:
            import pyarrow.parquet as pq

            empty = arrow_table(empty_batch(self._decoder, self.path).numpy())
            pq.write_table(empty, self._file)
        if self._writer is not None:
            writer, self._writer = self._writer, None
            writer.close()
        if not self._file.closed:
            self._file.close()


def arrow_table(records: np.ndarray) -> Any:
    """An Arrow table of a numpy structured array's fields (see the module docstring)."""
    import pyarrow as pa

    dtype = records.dtype
    names = list(dtype.names or ())
    return pa.Table.from_arrays([_column(records[n]) for n in names], names=names)


def _column(values: np.ndarray) -> Any:
    import pyarrow as pa

    dtype = values.dtype
    if dtype.names:  # a nested struct
        names = list(dtype.names)
        return pa.StructArray.from_arrays([_column(values[n]) for n in names], names=names)
    if values.ndim > 1:  # an array member: one fixed-size list per row
        rows = values.shape[0]
        flat = values.reshape(rows, int(np.prod(values.shape[1:])))
        width = flat.shape[1]
        return pa.FixedSizeListArray.from_arrays(_column(flat.reshape(-1)), width)
    if dtype.kind == "S":  # char[N]: the bytes up to the first NUL, as one buffer
        rows, width = len(values), dtype.itemsize
        chars = np.ascontiguousarray(values).view(np.uint8).reshape(rows, width)
        nul = chars == 0
        lengths = np.where(nul.any(axis=1), nul.argmax(axis=1), width)
        keep = np.arange(width) < lengths[:, None]
        offsets = np.zeros(rows + 1, dtype=np.int32)
        np.cumsum(lengths, out=offsets[1:])
        buffers = [None, pa.py_buffer(offsets), pa.py_buffer(chars[keep])]
        return pa.BinaryArray.from_buffers(pa.binary(), rows, buffers)
    if dtype.kind == "V":  # opaque (e.g. 16-byte integers): the bytes as they are
        data = pa.py_buffer(np.ascontiguousarray(values).tobytes())
        return pa.FixedSizeBinaryArray.from_buffers(
            pa.binary(dtype.itemsize), len(values), [None, data]
        )
    return pa.array(np.ascontiguousarray(values))
