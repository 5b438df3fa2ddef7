"""Readers that turn interaction logs into one frame: user_id, item_id, domain, timestamp.

Every mistake a user can make with an input file becomes a `DataError` whose
one-line message names the file and the problem, because that line is all the
CLI prints. Ids and domains are strings (leading zeros survive), held as pandas
categoricals: an int code per row and each distinct string once, in order of
first appearance, so a log of tens of millions of rows costs a few bytes per row
and no Python object per row (columns.py). Timestamps are int64 when the input holds
integers and float64 seconds otherwise (datetimes become seconds since the epoch, naive
ones read as UTC; times.py). The frame keeps the input's row order, which later breaks
ties between equal timestamps. Files are read in blocks (Arrow), never whole as text
(files.py).

MovieLens-100K comes either from the RecBole wheel on PyPI (read straight out
of the zip; RecBole is never imported) or from GroupLens' original u.data/u.item
(movielens.py).
"""

from models.importers.files import (
    COLUMNS,
    IMPORT_BYTES_PER_ROW,
    IMPORT_WORK_BYTES,
    check_import_memory,
    domain_counts,
    read_interactions,
)
from models.importers.movielens import (
    ML100K_DOMAINS,
    ML100K_FALLBACK_DOMAIN,
    ML100K_GENRE_DOMAINS,
    ML100K_GENRES,
    ML100K_MIN_DOMAIN_ITEMS,
    RECBOLE_VERSION,
    cached_wheel,
    fetch_recbole_wheel,
    ml100k_item_domains,
    read_ml100k_grouplens,
    read_ml100k_recbole,
)

__all__ = [
    "COLUMNS",
    "IMPORT_BYTES_PER_ROW",
    "IMPORT_WORK_BYTES",
    "ML100K_DOMAINS",
    "ML100K_FALLBACK_DOMAIN",
    "ML100K_GENRES",
    "ML100K_GENRE_DOMAINS",
    "ML100K_MIN_DOMAIN_ITEMS",
    "RECBOLE_VERSION",
    "cached_wheel",
    "check_import_memory",
    "domain_counts",
    "fetch_recbole_wheel",
    "ml100k_item_domains",
    "read_interactions",
    "read_ml100k_grouplens",
    "read_ml100k_recbole",
]
