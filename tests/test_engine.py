"""The batched decoding engine: invariants, equality with the per-step reference,
sliding context for long sequences, chunking, external ids and streaming."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.catalogue import Catalogue
from models.decoding import (
    CPU_AUTO_BUDGET_MB,
    CUDA_AUTO_SHARE,
    DecodeOptions,
    Regenerated,
    Regenerator,
    assemble,
    decide,
    iter_regenerate_external,
    min_memory_budget_mb,
    regenerate_external,
    resolve_memory_budget_mb,
)
from models.decoding_reference import reference_regenerate
from models.errors import ConfigError, UnknownItemError
from models.sasrec import SASRec, SASRecConfig


@dataclass
class World:
    catalogue: Catalogue
    mixed: SASRec
    experts: dict[str, SASRec]

    def regenerator(self, **kw) -> Regenerator:
        return Regenerator(self.catalogue, self.mixed, self.experts, **kw)


def make_world(sizes: Sequence[int], seed: int = 0, max_len: int = 8, scale: float = 10.0) -> World:
    """Random-weight models in float64, so that no float noise can flip an argmax
    between two computations that differ only in batching. `scale` widens the item
    embeddings so the softmaxes are not flat and all three outcomes occur."""
    names = [f"dom{k}" for k in range(len(sizes))]
    catalogue = Catalogue.build({f"{n}-{i}": n for n, size in zip(names, sizes, strict=True) for i in range(size)})
    torch.manual_seed(seed)

    def model() -> SASRec:
        cfg = SASRecConfig(n_items=catalogue.n_items, max_len=max_len, hidden=16, n_layers=1, n_heads=2, inner=16)
        m = SASRec(cfg)
        with torch.no_grad():
            m.item_emb.weight.mul_(scale)
        return m.double().eval()

    return World(catalogue, model(), {n: model() for n in names})


def random_sequences(world: World, n: int, max_length: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    v = world.catalogue.n_items
    return [rng.integers(0, v, size=rng.integers(0, max_length + 1)).tolist() for _ in range(n)]


def decision_view(results: Sequence[Regenerated]) -> list:
    return [[(d.position, d.item, d.action, d.replacement, d.reason) for d in r.decisions] for r in results]


@pytest.fixture(scope="module")
def world() -> World:
    return make_world([7, 9, 5, 6])


@pytest.fixture(scope="module")
def sequences(world: World) -> list[list[int]]:
    return random_sequences(world, 40, 20)


# -- equality with the reference ------------------------------------------------------

OPTIONS = [
    DecodeOptions(),
    DecodeOptions(no_adaptation=True),
    DecodeOptions(no_source_experts=True),
    DecodeOptions(no_global=True),
    DecodeOptions(no_local=True),
    DecodeOptions(drop_repeats=True),
]


@pytest.mark.parametrize(
    "options", OPTIONS, ids=["full", "no_adaptation", "no_source", "no_global", "no_local", "drop_repeats"]
)
def test_engine_decisions_equal_the_per_step_reference(world: World, sequences, options: DecodeOptions) -> None:
    # max_len 8 < length 20: the reference's windowed prefixes cover the sliding context too
    engine = world.regenerator(batch_size=7).regenerate(sequences, "dom1", options)
    reference = reference_regenerate(world.catalogue, world.mixed, world.experts, sequences, "dom1", options)
    assert decision_view(engine) == decision_view(reference)
    assert [r.sequence for r in engine] == [r.sequence for r in reference]


def test_random_worlds_produce_every_kind_of_decision(world: World, sequences) -> None:
    # guards the equality tests against comparing only discards
    reasons = {(d.action, d.reason) for r in world.regenerator().regenerate(sequences, "dom1") for d in r.decisions}
    assert {("keep", None), ("replace", None), ("discard", "global_not_target"), ("discard", "no_context")} <= reasons


@pytest.mark.slow
def test_engine_equals_reference_on_the_trained_tiny_bundle(request) -> None:
    try:
        path = request.getfixturevalue("tiny_bundle")
    except pytest.FixtureLookupError:
        pytest.skip("tiny_bundle fixture not provided by tests/conftest.py")
    from models.bundle import load_bundle

    bundle = load_bundle(path)
    # float64 copies: the test is about decoding logic, not about float32 ties between batch shapes
    mixed = bundle.mixed.double()
    experts = {d: m.double() for d, m in bundle.experts.items()}
    rng = np.random.default_rng(0)
    v = bundle.catalogue.n_items
    seqs = [rng.integers(0, v, size=rng.integers(0, 40)).tolist() for _ in range(24)]  # max_len 16: windows too
    for target in bundle.catalogue.domains:
        engine = Regenerator(bundle.catalogue, mixed, experts, batch_size=8).regenerate(seqs, target)
        reference = reference_regenerate(bundle.catalogue, mixed, experts, seqs, target)
        assert decision_view(engine) == decision_view(reference)


# -- sliding context ----------------------------------------------------------------


def brute_force_window(world: World, seq: list[int], target: str) -> dict[int, int]:
    """Decides every source position j >= 1 alone from x[max(0, j-max_len):j]."""
    cat = world.catalogue
    t = cat.domain_index(target)
    mask = torch.from_numpy(cat.item_domain == t)
    out = {}
    with torch.inference_mode():
        for j in range(1, len(seq)):
            d = int(cat.item_domain[seq[j]])
            if d == t:
                continue
            window = torch.tensor([[i + 1 for i in seq[max(0, j - 8) : j]]])
            models = (world.mixed, world.experts[cat.domains[d]], world.experts[target])
            z = [m.scores(m(window)[:, -1]) for m in models]
            out[j] = int(decide(*z, mask)[0])
    return out


def test_long_sequences_decide_each_position_from_the_last_max_len_items(world: World) -> None:
    seqs = random_sequences(world, 4, 30, seed=5)
    seqs = [s + s[:5] for s in seqs if len(s) > 0] + [[i % world.catalogue.n_items for i in range(30)]]
    for seq, result in zip(seqs, world.regenerator(batch_size=3).regenerate(seqs, "dom2"), strict=True):
        expected = brute_force_window(world, seq, "dom2")
        got = {
            d.position: (d.replacement if d.replacement is not None else -1)
            for d in result.decisions
            if d.position in expected
        }
        assert got == expected
        assert len(result.decisions) == len(seq)  # nothing dropped


# -- chunking, batching and padding -----------------------------------------------------


@pytest.mark.parametrize("options", [DecodeOptions(), DecodeOptions(explain_top_k=3, no_source_experts=True)])
def test_memory_budget_chunking_gives_identical_results(world: World, sequences, options: DecodeOptions) -> None:
    v = world.catalogue.n_items
    smallest = world.regenerator(memory_budget_mb=min_memory_budget_mb(v, "cpu"))
    assert smallest._chunk_rows(v) == (1, 1)  # one row per chunk
    few_rows = world.regenerator(memory_budget_mb=min_memory_budget_mb(v, "cpu") * 7)
    assert 1 < few_rows._chunk_rows(v)[0] < 20
    roomy = world.regenerator(memory_budget_mb=1024)
    expected = roomy.regenerate(sequences, "dom0", options)
    for reg in (smallest, few_rows):
        got = reg.regenerate(sequences, "dom0", options)
        assert decision_view(got) == decision_view(expected)
        # the same candidates; scores agree to rounding (a matmul over fewer rows may sum in another order)
        assert explained(got, ids=True) == explained(expected, ids=True)
        assert explained(got, ids=False) == pytest.approx(explained(expected, ids=False), rel=1e-12)


def explained(results: Sequence[Regenerated], *, ids: bool) -> list:
    return [
        c[0 if ids else 1]
        for r in results
        for d in r.decisions
        if d.explain
        for c in (*d.explain["global"], *d.explain["local"])
    ]


def test_chunk_rows_fit_the_budget_even_for_a_million_items(world: World) -> None:
    reg = world.regenerator(memory_budget_mb=64)
    for v in (20, 1_000, 200_000, 1_000_000):
        for budget in (min_memory_budget_mb(v, "cpu"), 16, 64, 256):
            if budget < min_memory_budget_mb(v, "cpu"):
                continue
            reg.memory_budget_mb = budget
            rows, step = reg._chunk_rows(v)
            assert rows >= 1 and 1 <= step <= rows
            # three [rows, V] logits + the decide temporaries of one [step, V] slice
            assert (3 * rows + 12 * step) * v * 4 <= budget * 2**20, (v, budget)


# -- the memory budget ---------------------------------------------------------------------


def test_auto_is_256_mb_on_cpu_and_a_number_always_wins(world: World) -> None:
    assert world.regenerator().memory_budget_mb == CPU_AUTO_BUDGET_MB == 256
    assert world.regenerator(memory_budget_mb="auto").memory_budget_mb == 256
    assert world.regenerator(memory_budget_mb=48).memory_budget_mb == 48.0
    assert resolve_memory_budget_mb(512, "cuda", free_bytes=80 << 30) == 512.0


def test_auto_on_cuda_is_a_share_of_the_free_memory_split_between_concurrent_decodes() -> None:
    free = 10 << 30  # 10 GiB
    assert resolve_memory_budget_mb("auto", "cuda", free_bytes=free) == CUDA_AUTO_SHARE * 10 * 1024
    assert resolve_memory_budget_mb("auto", "cuda:1", free_bytes=free, sharers=4) == CUDA_AUTO_SHARE * 10 * 1024 / 4


def test_auto_on_cuda_asks_the_device_for_its_free_memory(monkeypatch) -> None:
    asked = []

    def mem_get_info(device=None) -> tuple[int, int]:
        asked.append(torch.device(device))
        return 6 << 30, 80 << 30

    monkeypatch.setattr(torch.cuda, "mem_get_info", mem_get_info)
    assert resolve_memory_budget_mb("auto", "cuda:0") == CUDA_AUTO_SHARE * 6 * 1024
    assert asked == [torch.device("cuda:0")]


def test_a_budget_too_small_for_one_row_is_refused_with_the_minimum(world: World) -> None:
    v = world.catalogue.n_items
    minimum = min_memory_budget_mb(v, "cpu")
    assert minimum == 15 * 4 * v / 2**20 and min_memory_budget_mb(v, "cuda") == 12 * 4 * v / 2**20
    for budget in (minimum * 0.99, 1e-6, 0, -5):
        with pytest.raises(ConfigError) as err:
            world.regenerator(memory_budget_mb=budget)
        message = err.value.message
        assert f"catalogue of {v:,} items" in message and "needs 0.0016 MB" in message, message
        assert err.value.code == "bad_config" and err.value.details["n_items"] == v
    world.regenerator(memory_budget_mb=0.0016)  # the minimum the message names is enough
    world.regenerator(memory_budget_mb=minimum)


@pytest.mark.parametrize("budget", [math.nan, math.inf, "512", None, True])
def test_a_budget_that_is_not_a_number_or_auto_is_refused(world: World, budget) -> None:
    with pytest.raises(ConfigError, match="positive number of MB or 'auto'"):
        world.regenerator(memory_budget_mb=budget)


def test_batch_composition_does_not_change_decisions(world: World, sequences) -> None:
    together = world.regenerator(batch_size=64).regenerate(sequences, "dom3")
    alone = [world.regenerator().regenerate([s], "dom3")[0] for s in sequences[:12]]
    reversed_batch = world.regenerator(batch_size=5).regenerate(sequences[::-1], "dom3")[::-1]
    assert decision_view(alone) == decision_view(together[:12])
    assert decision_view(reversed_batch) == decision_view(together)


# -- invariants on random catalogues and models ------------------------------------------


@st.composite
def worlds_and_sequences(draw):
    sizes = draw(st.lists(st.integers(1, 6), min_size=2, max_size=5))
    world = make_world(sizes, seed=draw(st.integers(0, 1000)), max_len=draw(st.sampled_from([4, 8])))
    v = world.catalogue.n_items
    seqs = draw(st.lists(st.lists(st.integers(0, v - 1), max_size=14), min_size=1, max_size=6))
    target = draw(st.sampled_from(world.catalogue.domains))
    return world, seqs, target


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=worlds_and_sequences())
def test_regeneration_invariants(case) -> None:
    world, seqs, target = case
    cat = world.catalogue
    t = cat.domain_index(target)
    results = world.regenerator(batch_size=4).regenerate(seqs, target)
    for seq, r in zip(seqs, results, strict=True):
        assert all(cat.item_domain[i] == t for i in r.sequence)  # only target items
        assert [d.position for d in r.decisions] == list(range(len(seq)))  # one action per item
        assert all(a != b for a, b in zip(r.sequence, r.sequence[1:], strict=False))  # no consecutive duplicates
        rebuilt = []
        for d in r.decisions:
            if d.domain == t:
                assert d.action == "keep" or d.reason == "duplicate"
            else:
                assert d.action in ("replace", "discard")
            if d.action != "discard":
                rebuilt.append(d.item if d.action == "keep" else d.replacement)
        assert rebuilt == r.sequence
        assert r.stats.decided == len(seq)
        assert r.stats["kept"] + r.stats["replaced"] == len(r.sequence)
    again = world.regenerator(batch_size=3).regenerate(seqs, target)
    assert decision_view(again) == decision_view(results)
    alone = [world.regenerator().regenerate([s], target)[0] for s in seqs]
    assert decision_view(alone) == decision_view(results)


# -- positions and post-processing ---------------------------------------------------


def test_position_zero_source_item_is_discarded_without_context_and_target_kept(world: World) -> None:
    src, tgt = world.catalogue.domain_range("dom0")[0], world.catalogue.domain_range("dom1")[0]
    a, b = world.regenerator().regenerate([[src, tgt], [tgt, src]], "dom1")
    assert (a.decisions[0].action, a.decisions[0].reason) == ("discard", "no_context")
    assert b.decisions[0].action == "keep"
    assert a.decisions[1].action == "keep"


def test_consecutive_duplicates_collapse_into_the_first_copy(world: World) -> None:
    tgt = world.catalogue.domain_range("dom1")[0]
    (r,) = world.regenerator().regenerate([[tgt, tgt, tgt]], "dom1")
    assert r.sequence == [tgt]
    assert [(d.action, d.reason) for d in r.decisions] == [("keep", None)] + [("discard", "duplicate")] * 2
    assert r.stats.as_dict() == {"kept": 1, "replaced": 0, "discarded": 2}


def test_drop_repeats_discards_replacements_already_in_the_row_and_keeps_target_items() -> None:
    # domains: 0 = target, 1 = source; raw = replacement per source position
    items, domains = [10, 20, 21, 10, 22, 23], [0, 1, 1, 0, 1, 1]
    raw = [-1, 11, 10, 0, 11, 12]
    plain = assemble(items, domains, raw, 0)
    assert plain.sequence == [10, 11, 10, 11, 12]  # the kept 10 after a replaced 10 collapses
    once = assemble(items, domains, raw, 0, drop_repeats=True)
    assert once.sequence == [10, 11, 10, 12]  # target items stay, even when repeated
    assert [(d.action, d.reason) for d in once.decisions] == [
        ("keep", None), ("replace", None), ("discard", "repeat"), ("keep", None), ("discard", "repeat"),
        ("replace", None),
    ]  # fmt: skip
    assert once.decisions[2].replacement == 10  # what it would have been, for transparency
    assert len(set(once.sequence)) == len(once.sequence) - 1  # only the original 10 repeats


def test_duplicate_of_a_replacement_keeps_its_replacement_field(world: World, sequences) -> None:
    for r in world.regenerator().regenerate(sequences * 3, "dom1"):
        for d in r.decisions:
            if d.reason == "duplicate" and d.domain != world.catalogue.domain_index("dom1"):
                assert d.replacement is not None
                return
    pytest.skip("no replaced duplicate in this random world")


def test_empty_sequences_and_out_of_range_ids(world: World) -> None:
    (r,) = world.regenerator().regenerate([[]], "dom0")
    assert r.sequence == [] and r.decisions == [] and r.stats.as_dict() == {"kept": 0, "replaced": 0, "discarded": 0}
    with pytest.raises(UnknownItemError, match="sequence 1"):
        world.regenerator().regenerate([[0], [world.catalogue.n_items]], "dom0")


def test_explain_lists_candidates_for_decided_items(world: World, sequences) -> None:
    results = world.regenerator().regenerate(sequences, "dom1", DecodeOptions(explain_top_k=3))
    plain = world.regenerator().regenerate(sequences, "dom1")
    assert decision_view(results) == decision_view(plain)
    seen = 0
    for r in results:
        for d in r.decisions:
            if d.action == "replace":
                assert d.explain["local"][0][0] == d.replacement
                assert len(d.explain["global"]) == 3
                seen += 1
            elif d.reason in ("no_context", None):
                assert d.explain is None
    assert seen > 0


# -- streaming and progress ---------------------------------------------------------------


def test_streaming_consumes_a_generator_lazily_and_reports_progress(world: World, sequences) -> None:
    pulled = []

    def source():
        for s in sequences:
            pulled.append(1)
            yield s

    progress: list[int] = []
    stream = world.regenerator(batch_size=8).iter_regenerate(source(), "dom0", on_progress=progress.append)
    first = next(stream)
    assert len(pulled) <= 9  # one batch (and the look-ahead of the next item at most)
    rest = list(stream)
    assert decision_view([first, *rest]) == decision_view(world.regenerator().regenerate(sequences, "dom0"))
    assert progress[-1] == len(sequences) and progress == sorted(progress)


# -- external ids --------------------------------------------------------------------------


def test_unknown_external_item_raises_naming_item_and_sequence(world: World) -> None:
    ext = list(world.catalogue.item_ids[:3])
    with pytest.raises(UnknownItemError, match=r"'nope'.*sequence 1"):
        regenerate_external(world.regenerator(), [ext, [*ext, "nope"]], "dom0")


def test_unknown_items_dropped_take_no_part_in_decoding(world: World, sequences) -> None:
    cat = world.catalogue
    dense = [s for s in sequences if len(s) > 2][:10]
    with_unknown = [[cat.external(i) for i in s[:2]] + ["ghost"] + [cat.external(i) for i in s[2:]] for s in dense]
    got = regenerate_external(world.regenerator(), with_unknown, "dom2", unknown_items="drop")
    expected = world.regenerator().regenerate(dense, "dom2")
    for g, e in zip(got, expected, strict=True):
        assert g.sequence == e.sequence
        ghost = g.decisions[2]
        assert (ghost.item, ghost.domain, ghost.action, ghost.reason) == ("ghost", None, "discard", "unknown_item")
        moved = [(d.position + (d.position >= 2), d.action, d.replacement) for d in e.decisions]
        assert [(d.position, d.action, d.replacement) for d in g.decisions if d.domain is not None] == moved
        assert g.stats["discarded"] == e.stats["discarded"] + 1


def test_external_streaming_matches_list_form(world: World, sequences) -> None:
    ext = [[world.catalogue.external(i) for i in s] for s in sequences]
    streamed = list(iter_regenerate_external(world.regenerator(batch_size=6), iter(ext), "dom3"))
    assert decision_view(streamed) == decision_view(regenerate_external(world.regenerator(), ext, "dom3"))
