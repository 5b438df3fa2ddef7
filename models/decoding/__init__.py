"""Stage II of Taesar: adaptive contrastive decoding (METHOD.md §3).

`decide` (rule.py) is the whole decision rule on logits; everything else is batching
around it. The `Regenerator` (engine.py) runs one causal forward pass per needed model
over each batch (teacher forcing: a decision never feeds back into later prefixes),
gathers the hidden state at j-1 for every source item at j, and decides all those
positions at once, chunked so the [n, V] score work stays inside a memory budget
(budget.py). results.py holds what decoding returns and its post-processing;
external.py decodes sequences of external ids. Decoding runs in float32 (float64
models stay float64) on every device.
"""

from models.decoding.budget import (
    CPU_AUTO_BUDGET_MB,
    CUDA_AUTO_SHARE,
    MemoryBudget,
    min_memory_budget_mb,
    resolve_memory_budget_mb,
)
from models.decoding.engine import ProgressFn, Regenerator
from models.decoding.external import iter_regenerate_external, regenerate_external
from models.decoding.results import NO_CONTEXT, Action, Decision, DecodeOptions, Regenerated, assemble
from models.decoding.rule import EPS, Explained, TargetItems, contrastive_score, decide, decide_explained

__all__ = [
    "CPU_AUTO_BUDGET_MB",
    "CUDA_AUTO_SHARE",
    "EPS",
    "NO_CONTEXT",
    "Action",
    "Decision",
    "DecodeOptions",
    "Explained",
    "MemoryBudget",
    "ProgressFn",
    "Regenerated",
    "Regenerator",
    "TargetItems",
    "assemble",
    "contrastive_score",
    "decide",
    "decide_explained",
    "iter_regenerate_external",
    "min_memory_budget_mb",
    "regenerate_external",
    "resolve_memory_budget_mb",
]
