"""Atomic file writes: write to a temporary file beside the target, then os.replace.

A crash or Ctrl-C during a write leaves the previous file intact, never a half-written one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
from pandas.api.types import is_integer_dtype


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Call write(tmp_path), then move the finished file over `path` in one step."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:  # on disk before it replaces the old file
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_csv_atomic(frame: pd.DataFrame, path: Path) -> None:
    """`frame.to_csv(path, index=False)`, byte for byte, written atomically."""
    write_atomic(path, lambda tmp: write_csv(frame, tmp))


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    """The bytes of `frame.to_csv(path, index=False)`, through pyarrow when that is the same text.

    pyarrow writes the 191,027 x 36 processed CheXpert table in 0.3 s, pandas in 4 s. Only
    string and integer columns take that path: pyarrow spells floats and booleans otherwise
    (1.0 as "1", True as "true"). With quoting_style="none" it refuses a value holding a comma,
    quote or line break (pandas quotes those its own way), and the whole file is then written
    by pandas. The header line is always pandas' own.
    """
    if _arrow_writes_like_pandas(frame):
        frame.iloc[:0].to_csv(path, index=False)
        try:
            with open(path, "ab") as handle:
                pa_csv.write_csv(pa.Table.from_pandas(frame, preserve_index=False), handle,
                                 pa_csv.WriteOptions(include_header=False, quoting_style="none"))
            return
        except pa.ArrowInvalid:  # a value that needs quotes: pandas writes the file instead
            pass
    frame.to_csv(path, index=False)


def _arrow_writes_like_pandas(frame: pd.DataFrame) -> bool:
    """Whether every column is one pyarrow renders as pandas does: strings, integers."""
    return (len(frame.columns) >= 2  # pandas writes a lone blank cell as "", pyarrow as nothing
            and frame.columns.is_unique and all(isinstance(name, str) for name in frame.columns)
            and all(isinstance(dtype, pd.StringDtype) or is_integer_dtype(dtype)
                    for dtype in frame.dtypes))


def write_text_atomic(text: str, path: Path) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(text))
