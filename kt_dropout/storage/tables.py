"""Rows of a table as CSV text or as a pandas DataFrame: the one place both are made, so that `kt-dropout
export`, `ResultStore.to_dataframe`, `SearchResult.to_csv` and `SearchResult.to_dataframe` give the same
columns and values from the same rows.

pandas is optional (the `pandas` extra): without it `dataframe` raises one `MissingPackage` line saying what to
install, and nothing else here needs it.
"""

from __future__ import annotations

import csv
import io
from typing import Iterable, Sequence

from kt_dropout.errors import MissingPackage

PANDAS_EXTRA = 'pip install "kt-dropout[pandas]"'


def columns_of(rows: Iterable[dict]) -> list[str]:
    """Every column of `rows`, in the order they first appear."""
    return list(dict.fromkeys(name for row in rows for name in row))


def csv_text(rows: Iterable[dict], columns: Sequence[str]) -> str:
    """The rows as CSV with a header line; a missing or None value is an empty cell."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue()


def dataframe(rows: Sequence[dict], columns: Sequence[str]):
    """The rows as a `pandas.DataFrame` with these columns (missing values are NaN or None).

    Raises:
        MissingPackage: pandas is not installed.
    """
    try:
        import pandas
    except ImportError as error:
        raise MissingPackage(f"to_dataframe needs pandas, which is not installed: {PANDAS_EXTRA}") from error
    return pandas.DataFrame.from_records(list(rows), columns=list(columns))
