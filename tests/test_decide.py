"""The decision rule of METHOD.md §3 against a plain float64 restatement of it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from models.decoding import DecodeOptions, decide, decide_explained

EPS = 1e-10


# -- a plain restatement, one row at a time, written from METHOD.md only ---------------


def plain_softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


def plain_score(zm: np.ndarray, zs: np.ndarray, zt: np.ndarray) -> np.ndarray:
    pm, ps, pt = plain_softmax(zm), plain_softmax(zs), plain_softmax(zt)
    e = np.array([-p * math.log(p + EPS) for p in pt])
    alpha = (1 - e) / (1 - e.max() + EPS)
    j = np.empty(len(zt))
    for i in range(len(zt)):
        m = (pm[i] + ps[i]) / 2
        j[i] = 0.5 * (m * math.log((m + EPS) / (pm[i] + EPS)) + m * math.log((m + EPS) / (ps[i] + EPS)))
    beta = j / (j.max() + EPS)
    return (1 + alpha) * zt - beta * zs


def plain_decide(zm, zs, zt, mask, use_global=True, use_local=True) -> list[int]:
    targets = np.flatnonzero(mask)
    out = []
    for r in range(zt.shape[0]):
        if use_global:
            best = int(np.argmax(plain_score(zm[r], zs[r], zt[r])))
            if not mask[best]:
                out.append(-1)
                continue
            if not use_local:
                out.append(best)
                continue
        local = plain_score(zm[r, targets], zs[r, targets], zt[r, targets])
        out.append(int(targets[np.argmax(local)]))
    return out


def random_logits(rng: np.random.Generator, n: int, v: int, scale: float = 3.0) -> list[np.ndarray]:
    return [rng.normal(size=(n, v)) * scale for _ in range(3)]


def run(zs: list[np.ndarray], mask: np.ndarray, dtype=torch.float64, **flags) -> list[int]:
    tensors = [torch.tensor(z, dtype=dtype) for z in zs]
    return decide(*tensors, torch.tensor(mask), **flags).tolist()


# -- agreement with the plain restatement ----------------------------------------------


CONTIGUOUS = np.array([False] * 4 + [True] * 5 + [False] * 3)
SCATTERED = np.array([True, False, False, True, False, True, True, False, False, False, True, False])


@pytest.mark.parametrize("mask", [CONTIGUOUS, SCATTERED], ids=["contiguous", "scattered"])
@pytest.mark.parametrize(
    "flags",
    [{}, {"use_global": False}, {"use_local": False}],
    ids=["full", "no_global", "no_local"],
)
def test_decide_matches_plain_float64_restatement(mask: np.ndarray, flags: dict) -> None:
    rng = np.random.default_rng(7)
    zs = random_logits(rng, 200, len(mask))
    assert run(zs, mask, **flags) == plain_decide(*zs, mask, **flags)


def test_random_cases_cover_discard_replace_and_a_local_choice_unlike_the_global_one() -> None:
    # guards the test above against passing on cases that never exercise the local step
    rng = np.random.default_rng(7)
    zm, zs, zt = random_logits(rng, 200, len(CONTIGUOUS))
    full = plain_decide(zm, zs, zt, CONTIGUOUS)
    global_only = plain_decide(zm, zs, zt, CONTIGUOUS, use_local=False)
    assert -1 in full and any(c >= 0 for c in full)
    assert any(f >= 0 and f != g for f, g in zip(full, global_only, strict=True))


def test_float32_and_bfloat16_inputs_are_scored_in_float32() -> None:
    rng = np.random.default_rng(3)
    zs = random_logits(rng, 100, len(CONTIGUOUS))
    assert run(zs, CONTIGUOUS, dtype=torch.float32) == plain_decide(*zs, CONTIGUOUS)
    bf16 = [torch.tensor(z, dtype=torch.bfloat16) for z in zs]
    expected = decide(*(z.float() for z in bf16), torch.tensor(CONTIGUOUS))
    assert decide(*bf16, torch.tensor(CONTIGUOUS)).tolist() == expected.tolist()


# -- hand-made logits -------------------------------------------------------------------

MASK = np.array([False, False, True, True, True])  # items 2..4 are the target domain


def test_global_argmax_outside_target_discards() -> None:
    # the target expert is sure of item 0, a source item: g's argmax is 0
    zt = np.array([[9.0, 0.0, 1.0, 0.5, 0.0]])
    zm = zs = np.zeros((1, 5))
    assert run([zm, zs, zt], MASK) == [-1]
    assert run([zm, zs, zt], MASK, use_local=False) == [-1]


def test_global_argmax_inside_target_replaces_with_local_argmax() -> None:
    zt = np.array([[0.0, 0.0, 1.0, 6.0, 2.0]])
    zm = zs = np.zeros((1, 5))
    assert run([zm, zs, zt], MASK) == [3]


def test_no_global_always_goes_local() -> None:
    zt = np.array([[9.0, 0.0, 1.0, 0.5, 3.0]])
    zm = zs = np.zeros((1, 5))
    assert run([zm, zs, zt], MASK) == [-1]
    assert run([zm, zs, zt], MASK, use_global=False) == [4]


def test_no_local_replaces_with_the_global_argmax() -> None:
    # the source expert pushes item 3 down inside T only, so local and global agree here;
    # the point is that use_local=False returns the global argmax itself
    zt = np.array([[0.0, 0.0, 5.0, 5.5, 1.0]])
    zm = np.zeros((1, 5))
    zs = np.array([[0.0, 0.0, 0.0, 8.0, 0.0]])
    expected = int(np.argmax(plain_score(zm[0], zs[0], zt[0])))
    assert run([zm, zs, zt], MASK, use_local=False) == [expected]
    assert MASK[expected]


def test_empty_batch_gives_empty_result() -> None:
    z = torch.zeros(0, 5)
    assert decide(z, z, z, torch.tensor(MASK)).shape == (0,)


def test_ablation_options_reject_both_scores_off() -> None:
    with pytest.raises(ValueError):
        DecodeOptions(no_global=True, no_local=True)


# -- properties and explain -------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    v=st.integers(2, 12),
    n=st.integers(1, 6),
    seed=st.integers(0, 2**16),
    use_global=st.booleans(),
    data=st.data(),
)
def test_choices_are_target_items_or_discard(v: int, n: int, seed: int, use_global: bool, data) -> None:
    start = data.draw(st.integers(0, v - 1))
    end = data.draw(st.integers(start + 1, v))
    mask = np.zeros(v, dtype=bool)
    mask[start:end] = True
    zs = random_logits(np.random.default_rng(seed), n, v)
    out = run(zs, mask, use_global=use_global)
    assert all(c == -1 or mask[c] for c in out)
    if not use_global:
        assert -1 not in out


@pytest.mark.parametrize("mask_np", [CONTIGUOUS, SCATTERED], ids=["contiguous", "scattered"])
def test_explained_agrees_with_decide_and_ranks_candidates(mask_np: np.ndarray) -> None:
    rng = np.random.default_rng(11)
    zs = [torch.tensor(z) for z in random_logits(rng, 50, len(mask_np))]
    mask = torch.tensor(mask_np)
    ex = decide_explained(*zs, mask, top_k=3)
    choice = decide(*zs, mask)
    assert ex.choice.tolist() == choice.tolist()
    g = torch.tensor(np.stack([plain_score(*(z[r].numpy() for z in zs)) for r in range(50)]))
    assert ex.global_ids[:, 0].tolist() == g.argmax(-1).tolist()
    assert torch.all(ex.global_scores[:, :-1] >= ex.global_scores[:, 1:])
    replaced = choice >= 0
    assert ex.local_ids[replaced, 0].tolist() == choice[replaced].tolist()
    assert torch.all(ex.local_ids[~replaced] == -1)
    assert torch.all(mask[ex.local_ids[replaced]])
