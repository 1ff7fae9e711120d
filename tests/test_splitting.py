"""Task grouping (mas_flower.splitting): every search against brute force, hand-made answers, the
affinity file and the `mas-flower split` command."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mas_flower.splitting import (
    SplitResult,
    cover_score,
    hoa_split,
    hoa_total,
    hosts,
    mas_split,
    partition_score,
    singleton_scores,
    split_from_file,
    subsets,
    tag,
    tag_split,
    task_scores,
)
from mas_flower.splitting.cover import select_cover
from mas_flower.splitting.mas import _best_bipartition, _dp_partition
from mas_flower.splitting.mas_search import branch_and_bound

CLI = Path(sys.executable).with_name("mas-flower")
TASKS = "sdnkt"
#: Built by hand so that MAS gives Table 1's row for sdnkt: s and d help each other and both help n
#: a lot (n helps them less); k and t help each other a little; nothing else.
TABLE1 = [[0.0, 1.0, 1.2, 0.0, 0.0],
          [1.0, 0.0, 1.2, 0.0, 0.0],
          [0.6, 0.6, 0.0, 0.0, 0.0],
          [0.0, 0.0, 0.0, 0.0, 0.1],
          [0.0, 0.0, 0.0, 0.1, 0.0]]


def set_partitions(items: list[int], k: int):
    """Every partition of items into exactly k non-empty blocks."""
    if not items:
        if k == 0:
            yield []
        return
    if k == 0:
        return
    first, rest = items[0], items[1:]
    for p in set_partitions(rest, k - 1):
        yield [(first,), *p]
    for p in set_partitions(rest, k):
        for i in range(len(p)):
            yield [*p[:i], (first, *p[i]), *p[i + 1:]]


def best_family(values: np.ndarray, x: int, maximise: bool = True) -> float:
    """Brute force over all families of at most x rows of `values` (candidates x tasks, -inf/+inf
    where absent) that cover every task: the best sum of each task's best value."""
    sign = 1 if maximise else -1
    v = sign * values
    best = -np.inf
    for k in range(1, x + 1):
        for combo in itertools.combinations(range(len(v)), k):
            per_task = v[list(combo)].max(axis=0)
            if np.isfinite(per_task).all():
                best = max(best, per_task.sum())
    return sign * best


def groups_of(n: int, min_size: int) -> list[tuple[int, ...]]:
    return [tuple(i for i in range(n) if m >> i & 1) for m in range(1, 1 << n) if bin(m).count("1") >= min_size]


# ----------------------------------------------------------------------------- scores

def test_scores_follow_the_definitions():
    a = np.arange(16, dtype=float).reshape(4, 4)  # diagonal must be ignored everywhere
    assert task_scores(a, (0, 1, 2)) == {0: (4 + 8) / 2, 1: (1 + 9) / 2, 2: (2 + 6) / 2}
    off = a - np.diag(np.diag(a))
    np.testing.assert_allclose(singleton_scores(a), (off.sum(0) + off.sum(1)) / 6)
    expected = (sum(task_scores(a, (0, 2)).values()) + singleton_scores(a)[1] + singleton_scores(a)[3]) / 4
    assert partition_score(a, [(2, 0), (1,), (3,)]) == pytest.approx(expected)
    assert cover_score(a, [(0, 1), (0, 1, 2, 3)]) == pytest.approx(
        np.mean([max(task_scores(a, (0, 1))[0], task_scores(a, range(4))[0]),
                 max(task_scores(a, (0, 1))[1], task_scores(a, range(4))[1]),
                 task_scores(a, range(4))[2], task_scores(a, range(4))[3]]))
    with pytest.raises(ValueError, match="not a partition"):
        partition_score(a, [(0, 1), (1, 2, 3)])
    with pytest.raises(ValueError, match="do not cover"):
        cover_score(a, [(0, 1), (1, 2)])


# ----------------------------------------------------------------------------- MAS

@pytest.mark.parametrize("n", range(1, 8))
def test_mas_matches_brute_force(n):
    rng = np.random.default_rng(n)
    for _ in range(2):
        a = rng.normal(size=(n, n))
        for x in range(1, n + 1):
            best = max(partition_score(a, p) for p in set_partitions(list(range(n)), x))
            result = mas_split(a, x)
            assert result.optimal and len(result.groups) == x
            assert result.score == pytest.approx(best, abs=1e-12)
            assert partition_score(a, result.groups) == pytest.approx(result.score, abs=1e-12)


@pytest.mark.parametrize("n", [3, 5, 7])
def test_branch_and_bound_matches_brute_force(n):
    rng = np.random.default_rng(10 + n)
    a = rng.normal(size=(n, n))
    for x in range(2, n + 1):
        best = max(partition_score(a, p) for p in set_partitions(list(range(n)), x))
        result = branch_and_bound(a, x, time_limit=30)
        assert result.optimal and result.score == pytest.approx(best, abs=1e-12)


def test_branch_and_bound_and_bipartition_match_the_dp():
    rng = np.random.default_rng(3)
    for n in (9, 10, 11):
        a = rng.normal(size=(n, n))
        assert partition_score(a, _best_bipartition(a)) == pytest.approx(partition_score(a, _dp_partition(a, 2)))
        for x in (3, 4, n - 3, n - 2):
            result = branch_and_bound(a, x, time_limit=30)
            assert result.optimal
            assert result.score == pytest.approx(partition_score(a, _dp_partition(a, x)), abs=1e-12)


def test_stopped_branch_and_bound_brackets_the_optimum():
    rng = np.random.default_rng(9)
    a = rng.normal(size=(14, 14))
    for x in (3, 5):
        best = partition_score(a, _dp_partition(a, x))
        stopped = branch_and_bound(a, x, time_limit=0.02, restarts=1)
        assert stopped.score <= best + 1e-12
        if not stopped.optimal:
            assert stopped.upper_bound >= best - 1e-12


def test_dp_recursion_on_big_blocks_matches_direct(monkeypatch):
    rng = np.random.default_rng(4)
    a = rng.normal(size=(9, 9))
    direct = [partition_score(a, _dp_partition(a, x)) for x in (3, 4, 5)]
    monkeypatch.setattr(subsets, "BASE_BITS", 2)
    assert [partition_score(a, _dp_partition(a, x)) for x in (3, 4, 5)] == pytest.approx(direct, abs=1e-12)


def test_mas_large_task_sets():
    rng = np.random.default_rng(5)
    a = rng.normal(size=(24, 24))
    two = mas_split(a, 2)  # every bipartition, in blocks
    assert two.optimal and len(two.groups) == 2
    assert two.score >= max(partition_score(a, [g, tuple(set(range(24)) - set(g))])
                            for g in [(0,), tuple(range(12)), (0, 5, 7)]) - 1e-12
    stopped = mas_split(a, 4, time_limit=0.0)  # branch and bound stopped at once: local search only
    assert not stopped.optimal and stopped.upper_bound >= stopped.score
    assert len(stopped.groups) == 4 and sorted(sum(stopped.groups, ())) == list(range(24))
    assert partition_score(a, stopped.groups) == pytest.approx(stopped.score)
    # planted clusters: branch and bound proves the answer
    labels = np.repeat([0, 1, 2], 8)
    planted = np.where(labels[:, None] == labels[None, :], 1.0, -0.5) + 0.3 * rng.normal(size=(24, 24))
    proven = mas_split(planted, 3, time_limit=20)
    assert proven.optimal and proven.groups == [tuple(range(0, 8)), tuple(range(8, 16)), tuple(range(16, 24))]
    assert mas_split(a, 4, time_limit=0.0) == stopped  # deterministic


def test_table1_row_for_sdnkt():
    expected = {1: ["sdnkt"], 2: ["kt", "sdn"], 3: ["k", "sdn", "t"], 4: ["k", "n", "sd", "t"],
                5: ["d", "k", "n", "s", "t"]}
    for x, groups in expected.items():
        assert sorted(mas_split(TABLE1, x).labels(TASKS)) == groups
    assert ",".join(mas_split(TABLE1, 2).labels(TASKS)) == "sdn,kt"
    assert tag_split(TABLE1, 2).labels(TASKS) == ["sdn", "kt"]


def test_singleton_rule_a_pair_forms_only_when_it_beats_the_tasks_averages():
    # x = n - 1 merges exactly one pair: the one whose mutual help most exceeds the two tasks' own
    # averages (their singleton scores), which here is not the pair with the largest mutual help.
    rng = np.random.default_rng(0)
    for _ in range(50):
        a = rng.normal(size=(5, 5))
        np.fill_diagonal(a, 0)
        single = singleton_scores(a)
        pairs = list(itertools.combinations(range(5), 2))
        gain = {p: a[p] + a[p[::-1]] - single[p[0]] - single[p[1]] for p in pairs}
        mutual = {p: a[p] + a[p[::-1]] for p in pairs}
        if max(gain, key=gain.get) != max(mutual, key=mutual.get):
            break
    groups = mas_split(a, 4).groups
    assert [g for g in groups if len(g) == 2] == [max(gain, key=gain.get)]
    # a task helped less than its own average stays alone: n gains nothing from s, d below
    a = np.array(TABLE1)
    a[0, 2] = a[1, 2] = 0.2
    assert sorted(mas_split(a, 3).labels(TASKS)) == ["kt", "n", "sd"]


# ----------------------------------------------------------------------------- TAG

@pytest.mark.parametrize("n", range(2, 7))
def test_tag_matches_brute_force(n):
    rng = np.random.default_rng(20 + n)
    candidates = groups_of(n, 2)
    for _ in range(2):
        a = rng.normal(size=(n, n))
        values = tag.candidate_values(a - np.diag(np.diag(a)), candidates)
        for x in range(1, min(n, 4 if n < 6 else 3) + 1):
            result = tag_split(a, x)
            assert result.optimal and 1 <= len(result.groups) <= x
            assert all(len(g) >= 2 for g in result.groups)
            assert result.score == pytest.approx(best_family(values, x) / n, abs=1e-12)
            assert cover_score(a, result.groups) == pytest.approx(result.score, abs=1e-12)


def test_host_recursion_matches_direct(monkeypatch):
    rng = np.random.default_rng(6)
    m = rng.normal(size=(8, 8))
    direct = hosts.host_values(m)
    monkeypatch.setattr(hosts, "BASE_BITS", 3)
    np.testing.assert_allclose(hosts.host_values(m)[1:], direct[1:])


def test_cover_search_matches_brute_force():
    rng = np.random.default_rng(7)
    a = rng.normal(size=(5, 5))
    np.fill_diagonal(a, 0)
    pool = groups_of(5, 2)
    values = tag.candidate_values(a, pool)
    for x in (1, 2, 3):
        chosen, total, proven, bound = select_cover(values, x, time_limit=30)
        assert proven and total == pytest.approx(best_family(values, x)) and bound == pytest.approx(total)


def test_tag_fallback_above_exact_limit(monkeypatch):
    rng = np.random.default_rng(8)
    a = rng.normal(size=(9, 9))
    exact = tag_split(a, 3)
    monkeypatch.setattr(tag, "EXACT_MAX_N", 4)
    heuristic = tag_split(a, 3, time_limit=5)
    assert not heuristic.optimal and 1 <= len(heuristic.groups) <= 3
    assert cover_score(a, heuristic.groups) == pytest.approx(heuristic.score)
    assert heuristic.score <= exact.score + 1e-12


# ----------------------------------------------------------------------------- HOA

@pytest.mark.parametrize("n", range(1, 6))
def test_hoa_matches_brute_force(n):
    rng = np.random.default_rng(30 + n)
    subsets_ = groups_of(n, 1)
    for _ in range(2):
        single, pair = rng.uniform(0.5, 1.5, n), rng.uniform(0.3, 1.7, (n, n))
        losses = np.full((len(subsets_), n), np.inf)
        for row, g in enumerate(subsets_):
            for j in g:
                losses[row, j] = single[j] if len(g) == 1 else np.mean([pair[i, j] for i in g if i != j])
        for x in range(1, min(n, 4) + 1):
            result = hoa_split(single, pair, x)
            assert result.optimal and len(result.groups) <= x
            assert result.score == pytest.approx(best_family(losses, x, maximise=False), abs=1e-12)
            assert hoa_total(single, pair, result.groups) == pytest.approx(result.score)


def test_hoa_with_named_losses():
    single = {"s": 1.0, "d": 1.0, "n": 1.0}
    pair = {("s", "d"): (0.5, 0.6), ("s", "n"): (2.0, 0.9), ("d", "n"): (2.0, 2.0)}
    one = hoa_split(single, pair, 1)  # s: (0.5 + 2.0) / 2, d: (0.6 + 2.0) / 2, n: (0.9 + 2.0) / 2
    assert one.labels("sdn") == ["sdn"] and one.score == pytest.approx(4.0)
    two = hoa_split(single, pair, 2)  # n is served better by the pair with s (0.9) than alone (1.0)
    assert two.labels("sdn") == ["sd", "sn"] and two.score == pytest.approx(2.0)
    alone = hoa_split(single, {**pair, ("s", "n"): (2.0, 1.2)}, 2)
    assert alone.labels("sdn") == ["sd", "n"] and alone.score == pytest.approx(2.1)
    with pytest.raises(ValueError, match="missing"):
        hoa_split(single, {("s", "d"): (0.5, 0.6)}, 2)
    with pytest.raises(ValueError, match="twice"):
        hoa_split(single, {**pair, ("d", "s"): (0.5, 0.6)}, 2)
    with pytest.raises(ValueError, match="supports 1 to 18 tasks"):
        hoa_split(np.ones(19), np.ones((19, 19)), 2)


# ----------------------------------------------------------------------------- file and CLI

def write(tmp_path: Path, data: object, name: str = "affinity.json") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_cli_split_letters_and_names(tmp_path):
    path = write(tmp_path, {"tasks": TASKS, "matrix": TABLE1})
    out = subprocess.run([str(CLI), "split", str(path), "--splits", "2"], capture_output=True, text=True,
                         check=True)
    answer = json.loads(out.stdout)
    assert answer["splits"] == ["sdn", "kt"] and answer["optimal"] is True
    assert answer["score"] == pytest.approx(mas_split(TABLE1, 2).score)
    names = ["segment", "depth", "normal", "keypoints", "texture"]
    path = write(tmp_path, {"tasks": names, "matrix": TABLE1}, "named.json")
    out = subprocess.run([str(CLI), "split", str(path), "--splits", "2", "--method", "tag"],
                         capture_output=True, text=True, check=True)
    assert json.loads(out.stdout)["splits"] == [["segment", "depth", "normal"], ["keypoints", "texture"]]


def test_cli_reports_bad_input(tmp_path):
    path = write(tmp_path, {"tasks": "sdn", "matrix": [[0, 1], [1, 0]]})
    out = subprocess.run([str(CLI), "split", str(path), "--splits", "2"], capture_output=True, text=True)
    assert out.returncode == 2 and str(path) in out.stderr and "'matrix'" in out.stderr
    out = subprocess.run([str(CLI), "split", str(tmp_path / "absent.json"), "--splits", "2"],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "absent.json" in out.stderr


@pytest.mark.parametrize("data, splits, message", [
    ("{not json", 2, "not valid JSON"),
    ([1, 2], 2, "JSON object"),
    ({"matrix": [[0]]}, 1, "missing key 'tasks'"),
    ({"tasks": "sd"}, 1, "missing key 'matrix'"),
    ({"tasks": 5, "matrix": [[0]]}, 1, "'tasks' must be"),
    ({"tasks": ["s", ""], "matrix": [[0, 1], [1, 0]]}, 1, "'tasks' must be"),
    ({"tasks": "", "matrix": []}, 1, "'tasks' is empty"),
    ({"tasks": "ss", "matrix": [[0, 1], [1, 0]]}, 1, "duplicate labels \\['s'\\]"),
    ({"tasks": ["a", "b", "a"], "matrix": [[0] * 3] * 3}, 1, "duplicate labels \\['a'\\]"),
    ({"tasks": "sd", "matrix": "none"}, 1, "'matrix' must be a list of rows"),
    ({"tasks": "sd", "matrix": [[0, 1], [1]]}, 1, "'matrix' must be 2x2"),
    ({"tasks": "sdn", "matrix": [[0, 1], [1, 0]]}, 1, "'matrix' must be 3x3"),
    ({"tasks": "sd", "matrix": [[0, "x"], [1, 0]]}, 1, "'matrix'\\[0\\]\\[1\\] is not a number"),
    ({"tasks": "sd", "matrix": [[0, True], [1, 0]]}, 1, "is not a number"),
    ('{"tasks": "sd", "matrix": [[0, NaN], [1, 0]]}', 1, "'matrix'\\[0\\]\\[1\\] is not finite"),
    ('{"tasks": "sd", "matrix": [[0, 1], [-Infinity, 0]]}', 1, "'matrix'\\[1\\]\\[0\\] is not finite"),
    ({"tasks": "sd", "matrix": [[0, 1], [1, 0]]}, 0, "--splits must be between 1 and .* got 0"),
    ({"tasks": "sd", "matrix": [[0, 1], [1, 0]]}, 3, "--splits must be between 1 and .* got 3"),
])
def test_file_validation_errors(tmp_path, data, splits, message):
    path = write(tmp_path, data)
    with pytest.raises(ValueError, match=message) as err:
        split_from_file(path, splits, "mas")
    assert str(path) in str(err.value)


def test_file_method_and_missing_file(tmp_path):
    path = write(tmp_path, {"tasks": "sd", "matrix": [[0, 1], [1, 0]]})
    with pytest.raises(ValueError, match="unknown split method 'hoa'"):
        split_from_file(path, 1, "hoa")
    with pytest.raises(FileNotFoundError, match="absent.json"):
        split_from_file(tmp_path / "absent.json", 1, "mas")
    one = write(tmp_path, {"tasks": "s", "matrix": [[0]]}, "one.json")
    assert split_from_file(one, 1, "mas") == {"splits": ["s"], "score": 0.0, "optimal": True, "method": "mas"}
    with pytest.raises(ValueError, match="TAG needs at least 2 tasks"):
        split_from_file(one, 1, "tag")


def test_result_rendering():
    result = SplitResult([(3, 4), (0, 1, 2)], 1.0, True)
    assert result.labels(TASKS) == ["sdn", "kt"]
    assert result.labels(["a", "b", "c", "d", "e"]) == [["a", "b", "c"], ["d", "e"]]


@pytest.mark.parametrize("n", range(1, 5))
def test_hoa_with_half_priced_singles_matches_brute_force(n):
    from mas_flower.splitting.hoa import _priced_split, pair_matrix

    rng = np.random.default_rng(50 + n)
    subsets_ = groups_of(n, 1)
    single, pair = rng.uniform(0.5, 1.5, n), rng.uniform(0.3, 1.7, (n, n))
    losses = np.full((len(subsets_), n), np.inf)
    for row, g in enumerate(subsets_):
        for j in g:
            losses[row, j] = single[j] if len(g) == 1 else np.mean([pair[i, j] for i in g if i != j])
    cost = [0.5 if len(g) == 1 else 1.0 for g in subsets_]
    for x in range(1, min(n, 2) + 1):
        best = min(losses[list(rows)].min(axis=0).sum() for k in range(1, 2 * x + 1)
                   for rows in itertools.combinations(range(len(subsets_)), k) if sum(cost[r] for r in rows) <= x)
        result = hoa_split(single, pair, x, single_cost=0.5)
        assert result.score == pytest.approx(best, abs=1e-12)
        assert sum(0.5 if len(g) == 1 else 1 for g in result.groups) <= x
        # the priced search at price 1 is the default search
        assert _priced_split(single, pair_matrix(pair, [str(i) for i in range(n)]), x, 1.0).score == \
            pytest.approx(hoa_split(single, pair, x).score, abs=1e-12)


def test_hoa_single_cost_by_hand():
    # Pairing hurts every task (1.2 against 1.0 alone). Budget x = 2: at price 1, at most two networks
    # ({a}, {b, c}: 1 + 1.2 + 1.2 = 3.4); at Standley's 0.5, three single-task networks (3.0).
    pair = np.full((3, 3), 1.2)
    assert hoa_split([1, 1, 1], pair, 2, tasks="abc").labels("abc") == ["a", "bc"]
    half = hoa_split([1, 1, 1], pair, 2, tasks="abc", single_cost=0.5)
    assert half.labels("abc") == ["a", "b", "c"] and half.score == pytest.approx(3.0)
    with pytest.raises(ValueError, match="single_cost"):
        hoa_split([1, 1, 1], pair, 2, single_cost=0)


def test_exact_ties_go_to_the_fewest_blocks():
    v = subsets.subset_sums(np.array([1.0, 2.0, 4.0]))  # v[block] = its tasks' weights: every partition sums to 7
    assert subsets.best_partition(v, 3, 3, at_most=True) == ([0b111], 7.0)
    v[0b111] = 6.0  # the whole set loses 1: two blocks (7) tie with three (1 + 2 + 4 = 7)
    blocks, total = subsets.best_partition(v, 3, 3, at_most=True)
    assert len(blocks) == 2 and total == 7.0 and sorted(blocks) in ([0b001, 0b110], [0b010, 0b101], [0b011, 0b100])
    # HOA: task j's loss is j + 1 alone, in either pair and in the trio (P[i][j] = j + 1): one network is enough
    assert hoa_split([1.0, 2.0, 3.0], [[0, 2, 3], [1, 0, 3], [1, 2, 0]], 3).groups == [(0, 1, 2)]
