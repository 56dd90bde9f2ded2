"""Training data in chunks: ``.npy``, ``.npz``, CSV and Parquet, mapped onto the model's input tensors.

Every source yields chunks ``{input name: array}`` with rows on axis 0, never the whole
file, so data larger than memory works. The mapping rule:

* ``.npy`` holds one input. ``--data NAME=FILE`` names it; otherwise the file's stem must
  be an input name, or the model must have a single input.
* ``.npz`` holds arrays named after the inputs (extra arrays are an error unless
  ignored with ``--ignore-column``).
* CSV and Parquet: a column feeds one feature of an input whose row is a scalar or 1-D
  (``[D]``), by name or by order (columns.py has the rule).

Numeric inputs read every column as float64 (empty cells and nulls become NaN, which the
statistics count as missing; the builder then casts float inputs to their datatype, as clients
send them); BYTES inputs read text (nulls become empty, also missing).

``--labels COLUMN`` names the label: a table column or an ``.npz`` array that is not an input. A source
that holds it yields it in every chunk under ``LABEL`` (table cells as text, None where empty; ``.npz``
values as stored), beside the inputs of the same rows.
"""

from __future__ import annotations

import csv
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from serve.baseline.columns import ignore_flags, map_columns
from serve.baseline.model import BaselineInputError
from serve.types import TensorSpec

Chunk = dict[str, np.ndarray]
# The chunk key of the labels: NUL cannot start a tensor name a client can send, so no input is called this.
LABEL = "\0label"
TABLE_SUFFIXES = {".csv": "csv", ".tsv": "csv", ".parquet": "parquet", ".pq": "parquet"}


class DataSource:
    """One ``--data`` file; ``chunks`` may be called more than once (two passes)."""

    path: Path
    rows: int | None  # None when unknown before reading (CSV)
    tensors: list[str]
    feature_names: dict[str, list[str]]
    label_column: str | None = None  # the --labels column, when this source holds it

    def chunks(self, chunk_rows: int) -> Iterator[Chunk]:
        raise NotImplementedError

    def describe(self) -> str:
        return self.path.name


def _spec_for(specs: Sequence[TensorSpec], name: str, path: Path) -> TensorSpec:
    for spec in specs:
        if spec.name == name:
            return spec
    raise BaselineInputError(f"{path.name}: '{name}' is not an input of the model (inputs: {[s.name for s in specs]})")


def _check_rows(array_shape: tuple[int, ...], spec: TensorSpec, where: str) -> None:
    dims = tuple(spec.dims)
    if len(array_shape) != len(dims) + 1 or any(d >= 0 and d != s for d, s in zip(dims, array_shape[1:], strict=True)):
        raise BaselineInputError(
            f"{where}: array of shape {list(array_shape)} does not fit input '{spec.name}' "
            f"(rows of shape {list(dims)}, so an array [N, {', '.join(map(str, dims))}])"
        )


# ---------------------------------------------------------------- .npy


class NpySource(DataSource):
    def __init__(self, path: Path, specs: Sequence[TensorSpec], name: str | None) -> None:
        self.path = path
        if name is None:
            if any(s.name == path.stem for s in specs):
                name = path.stem
            elif len(specs) == 1:
                name = specs[0].name
            else:
                raise BaselineInputError(
                    f"{path.name}: a .npy file holds one input; name it with --data NAME={path} "
                    f"(inputs: {[s.name for s in specs]})"
                )
        spec = _spec_for(specs, name, path)
        array = np.load(path, mmap_mode="r", allow_pickle=False)
        _check_rows(array.shape, spec, path.name)
        self.rows = int(array.shape[0])
        self.tensors = [name]
        self.feature_names = {}

    def chunks(self, chunk_rows: int) -> Iterator[Chunk]:
        # Memory-mapped: only the slice being copied is ever resident.
        array = np.load(self.path, mmap_mode="r", allow_pickle=False)
        for start in range(0, self.rows or 0, chunk_rows):
            yield {self.tensors[0]: np.array(array[start : start + chunk_rows])}


# ---------------------------------------------------------------- .npz


def _npz_header(f: IO[bytes]) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    return np.lib.format.read_array_header_2_0(f)


class NpzSource(DataSource):
    """Arrays read member by member from the zip stream (compressed or not), ``chunk_rows`` at a time."""

    def __init__(
        self, path: Path, specs: Sequence[TensorSpec], ignore: Sequence[str], labels: str | None = None
    ) -> None:
        self.path = path
        self.feature_names = {}
        self._headers: dict[str, tuple[tuple[int, ...], bool, np.dtype]] = {}
        with zipfile.ZipFile(path) as zf:
            for member in zf.namelist():
                key = member[:-4] if member.endswith(".npy") else member
                if key in ignore and key != labels:
                    continue
                with zf.open(member) as f:
                    self._headers[key] = _npz_header(f)
        if labels is not None and labels in self._headers:
            self.label_column = labels
        inputs = {s.name for s in specs}
        extra = sorted(set(self._headers) - inputs - {labels})
        if extra and labels is not None and self.label_column is None:
            raise BaselineInputError(
                f"--labels {labels}: no such array in {path.name} (arrays: {sorted(self._headers)})"
            )
        if extra:
            raise BaselineInputError(
                f"{path.name}: arrays {extra} are not model inputs {sorted(inputs)}; drop them with "
                f"{ignore_flags(extra)}"
            )
        rows = set()
        for key, (shape, fortran, dtype) in self._headers.items():
            if key == self.label_column:
                if len(shape) != 1:
                    raise BaselineInputError(f"{path.name}:{key}: labels must be a 1-D array, not {list(shape)}")
            else:
                _check_rows(shape, _spec_for(specs, key, path), f"{path.name}:{key}")
            if fortran and len(shape) > 1:
                raise BaselineInputError(f"{path.name}:{key} is stored in Fortran order; save it C-contiguous")
            if dtype.hasobject:
                raise BaselineInputError(
                    f"{path.name}:{key} holds Python objects; store text as a fixed-width 'U' array"
                )
            rows.add(shape[0])
        if len(rows) > 1:
            raise BaselineInputError(f"{path.name}: arrays have different row counts {sorted(rows)}")
        self.rows = rows.pop() if rows else 0
        self.tensors = [k for k in self._headers if k != self.label_column]

    def chunks(self, chunk_rows: int) -> Iterator[Chunk]:
        read = self.tensors + ([self.label_column] if self.label_column is not None else [])
        with zipfile.ZipFile(self.path) as zf:
            streams = {}
            try:
                for key in read:
                    member = key + ".npy" if key + ".npy" in zf.namelist() else key
                    f = zf.open(member)
                    streams[key] = f
                    _npz_header(f)
                for start in range(0, self.rows or 0, chunk_rows):
                    n = min(chunk_rows, (self.rows or 0) - start)
                    chunk = {}
                    for key, f in streams.items():
                        shape, _, dtype = self._headers[key]
                        per_row = int(np.prod(shape[1:])) if len(shape) > 1 else 1
                        data = f.read(n * per_row * dtype.itemsize)
                        values: np.ndarray = np.frombuffer(data, dtype=dtype).reshape((n, *shape[1:]))
                        chunk[LABEL if key == self.label_column else key] = values
                    yield chunk
            finally:
                for f in streams.values():
                    f.close()


# ---------------------------------------------------------------- tables


class _TableSource(DataSource):
    def __init__(
        self,
        path: Path,
        specs: Sequence[TensorSpec],
        header: list[str],
        feature_names: Mapping[str, Sequence[str]] | None,
        ignore: Sequence[str],
        labels: str | None,
    ) -> None:
        self.path = path
        self.specs = {s.name: s for s in specs}
        if labels is not None and labels in header:
            self.label_column = labels
            ignore = [*ignore, labels]  # not an input: neither a feature nor an unknown column
        try:
            self.mapping = map_columns(header, specs, feature_names, ignore)
        except BaselineInputError:
            if labels is None or labels in header:
                raise
            # Most likely the label is here under another name: say that rather than that columns do not fit.
            raise BaselineInputError(f"--labels {labels}: no such column in {path.name} (columns: {header})") from None
        self.tensors = sorted({s.tensor for s in self.mapping.slots}, key=[s.name for s in specs].index)
        self.feature_names = self.mapping.feature_names

    def _to_chunk(self, batch: Any) -> Chunk:
        import pyarrow as pa
        import pyarrow.compute as pc

        rows = batch.num_rows
        chunk: Chunk = {}
        for tensor in self.tensors:
            spec = self.specs[tensor]
            own = [(c, s) for c, s in zip(self.mapping.columns, self.mapping.slots, strict=True) if s.tensor == tensor]
            text = spec.datatype == "BYTES"
            width = 1 if own[0][1].column is None else max(s.column for _, s in own if s.column is not None) + 1
            out = np.empty((rows, width), dtype=object if text else np.float64)
            for column, slot in own:
                col = batch.column(batch.schema.get_field_index(column))
                if text:
                    values = col.cast(pa.string()).to_pylist()
                    out[:, slot.column or 0] = ["" if v is None else v for v in values]
                else:
                    try:
                        numbers = pc.cast(col, pa.float64())
                    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                        raise BaselineInputError(
                            f"{self.path.name}: column '{column}' is {col.type}, but input '{tensor}' is "
                            f"{spec.datatype}; only numbers can feed it"
                        ) from None
                    out[:, slot.column or 0] = numbers.to_numpy(zero_copy_only=False)
            chunk[tensor] = out[:, 0] if own[0][1].column is None else out
        if self.label_column is not None:
            text = batch.column(batch.schema.get_field_index(self.label_column)).cast(pa.string()).to_pylist()
            labels = np.empty(rows, dtype=object)
            labels[:] = text
            chunk[LABEL] = labels
        return chunk

    def _read_columns(self) -> list[str]:
        return self.mapping.columns + ([self.label_column] if self.label_column is not None else [])


def _csv_header(path: Path, delimiter: str) -> list[str]:
    with path.open(newline="", encoding="utf-8") as f:
        return next(csv.reader(f, delimiter=delimiter), [])


class CsvSource(_TableSource):
    def __init__(
        self,
        path: Path,
        specs: Sequence[TensorSpec],
        feature_names: Mapping[str, Sequence[str]] | None,
        ignore: Sequence[str],
        header: bool = True,
        labels: str | None = None,
    ) -> None:
        self.delimiter = "\t" if path.suffix == ".tsv" else ","
        self.has_header = header
        names = _csv_header(path, self.delimiter)
        if not header:
            names = [f"f{i}" for i in range(len(names))]
        if not names:
            raise BaselineInputError(f"{path.name} is empty")
        self.header = names
        super().__init__(path, specs, names, feature_names, ignore, labels)
        self.rows = None

    def chunks(self, chunk_rows: int) -> Iterator[Chunk]:
        import pyarrow as pa
        from pyarrow import csv as pacsv

        types = {
            c: (pa.string() if self.specs[s.tensor].datatype == "BYTES" else pa.float64())
            for c, s in zip(self.mapping.columns, self.mapping.slots, strict=True)
        }
        if self.label_column is not None:
            types[self.label_column] = pa.string()  # class values or numbers: the builder reads them
        read = pacsv.ReadOptions(
            block_size=max(1 << 16, chunk_rows * 16 * len(self.header)),
            column_names=None if self.has_header else self.header,
        )
        parse = pacsv.ParseOptions(delimiter=self.delimiter)
        convert = pacsv.ConvertOptions(
            column_types=types, include_columns=self._read_columns(), strings_can_be_null=True
        )
        try:
            reader = pacsv.open_csv(self.path, read_options=read, parse_options=parse, convert_options=convert)
            for batch in reader:
                yield self._to_chunk(batch)
        except pa.ArrowInvalid as exc:
            raise BaselineInputError(f"{self.path.name}: {exc}") from None


class ParquetSource(_TableSource):
    def __init__(
        self,
        path: Path,
        specs: Sequence[TensorSpec],
        feature_names: Mapping[str, Sequence[str]] | None,
        ignore: Sequence[str],
        labels: str | None = None,
    ) -> None:
        import pyarrow.parquet as pq

        self._file = pq.ParquetFile(path)
        super().__init__(path, specs, list(self._file.schema_arrow.names), feature_names, ignore, labels)
        self.rows = int(self._file.metadata.num_rows)

    def chunks(self, chunk_rows: int) -> Iterator[Chunk]:
        for batch in self._file.iter_batches(batch_size=chunk_rows, columns=self._read_columns()):
            yield self._to_chunk(batch)


def open_source(
    spec_text: str,
    specs: Sequence[TensorSpec],
    *,
    feature_names: Mapping[str, Sequence[str]] | None = None,
    ignore: Sequence[str] = (),
    csv_header: bool = True,
    labels: str | None = None,
) -> DataSource:
    """``FILE`` or ``NAME=FILE`` (NAME only for .npy) → a source; the format comes from the suffix. ``labels``: the
    label column, read beside the inputs where the file holds it (``label_column``)."""
    name: str | None = None
    text = spec_text
    if "=" in text and not Path(text).exists():
        name, text = text.split("=", 1)
    path = Path(text)
    if not path.is_file():
        raise BaselineInputError(f"--data {spec_text}: no such file")
    suffix = path.suffix.lower()
    if name is not None and suffix != ".npy":
        raise BaselineInputError(f"--data {spec_text}: NAME=FILE is only for .npy files")
    if suffix == ".npy":
        return NpySource(path, specs, name)
    if suffix == ".npz":
        return NpzSource(path, specs, ignore, labels)
    kind = TABLE_SUFFIXES.get(suffix)
    if kind == "csv":
        return CsvSource(path, specs, feature_names, ignore, csv_header, labels)
    if kind == "parquet":
        return ParquetSource(path, specs, feature_names, ignore, labels)
    raise BaselineInputError(f"--data {spec_text}: unknown format '{suffix}' (use .npy, .npz, .csv, .tsv or .parquet)")
