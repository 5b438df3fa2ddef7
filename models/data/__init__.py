"""Preprocessing, storage and leave-N-out splits of mixed-domain sequences (METHOD.md §4).

`prepare` (prepare.py) turns an interaction frame (user_id, item_id, domain, timestamp)
into a `Dataset`: a catalogue plus one chronological dense-id sequence per user.
storage.py writes and reads dataset folders; splits.py holds the valid/test points and
training parts. Nothing here knows domain names or how many there are.
"""

from models.data.prepare import Dataset, PrepConfig, fingerprint, prepare
from models.data.splits import (
    EvalPoint,
    Split,
    domain_eval_points,
    domain_train_sequences,
    eval_points,
    train_part,
)
from models.data.storage import FORMAT, VERSION, load_dataset, save_dataset, summarize

__all__ = [
    "FORMAT",
    "VERSION",
    "Dataset",
    "EvalPoint",
    "PrepConfig",
    "Split",
    "domain_eval_points",
    "domain_train_sequences",
    "eval_points",
    "fingerprint",
    "load_dataset",
    "prepare",
    "save_dataset",
    "summarize",
    "train_part",
]
