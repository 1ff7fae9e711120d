"""`mas-flower bench`: suite validation, dry runs, a real tiny suite through Flower, resuming, summaries."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from mas_flower.results import RESULTS_FILE
from mas_flower.tools.cli import main
from mas_flower.tools.suite import SuiteError, load_suite
from mas_flower.tools.summary import load_runs, summarise, write_summary
from tests.bench_suite import TINY_RUNS, tiny_suite, write_suite
from tests.flower_processes import pids_with_arg

CONF = Path(__file__).resolve().parents[1] / "conf"


# Validation ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("changes", "key", "words"), [
    ({"colour": "red"}, "colour", "unknown key"),
    ({"seeds": None}, "seeds", "missing"),
    ({"methods": ["fedavg", "foo"]}, "methods[1]", "unknown method 'foo'"),
    ({"methods": ["mas"]}, "methods[0]", "needs a number of groups"),
    ({"methods": ["fedavg-2"]}, "methods[0]", "takes no number of groups"),
    ({"methods": ["mas-4"]}, "methods[0]", "only 3 tasks"),
    ({"methods": ["fedavg", "fedavg"]}, "methods", "repeated: fedavg"),
    ({"task_sets": ["sdq"]}, "task_sets[0]", "'q'"),
    ({"seeds": [0, "one"]}, "seeds[1]", "int"),
    ({"output": "relative/out"}, "output", "absolute path"),
    ({"data": {"root": "data/taskonomy"}}, "data.root", "absolute path"),
    ({"data": {"synthetic": {"buildings": 3, "views": 8, "size": 32}}}, "data.synthetic.seed", "integer"),
    ({"data": {"synthetic": {"buildings": 3, "views": 8, "size": 32, "seed": 0, "rooms": 2}}},
     "data.synthetic.rooms", "unknown key"),
    ({"run_config": {"num-round": 3}}, "run_config.num-round", "not a run-config key"),
    ({"run_config": {"lr": "fast"}}, "run_config.lr", "expected float"),
    ({"run_config": {"seed": 3}}, "run_config.seed", "set per run by the suite"),
    ({"run_config": {"num-rounds": 2, "merge-rounds": 5}}, "run_config", "merge-rounds=5"),
    ({"run_config": {"clients-per-round": 4}}, "nodes", "clients-per-round=4"),
    ({"nodes": 5}, "nodes", "buildings=3"),
    ({"gpus_per_node": -1}, "gpus_per_node", "non-negative"),
])
def test_each_problem_names_file_and_key(tmp_path: Path, changes: dict, key: str, words: str) -> None:
    path = write_suite(tmp_path / "suite.yaml", **changes)
    with pytest.raises(SuiteError) as err:
        load_suite(path)
    lines = str(err.value).splitlines()
    assert any(line.startswith(f"{path}: {key}: ") and words in line for line in lines), lines


def test_all_problems_reported_at_once_and_cli_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = write_suite(tmp_path / "suite.yaml", methods=["foo", "mas"], output="out", colour=1)
    assert main(["bench", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    for key in ("methods[0]", "methods[1]", "output", "colour"):
        assert f"{path}: {key}: " in err
    assert not (tmp_path / "out").exists()


def test_not_yaml_or_not_a_mapping(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("task_sets: [sdk\n")
    with pytest.raises(SuiteError, match=f"{bad}: not valid YAML"):
        load_suite(bad)
    bad.write_text("- just a list\n")
    with pytest.raises(SuiteError, match="a suite is a YAML mapping"):
        load_suite(bad)


def test_missing_data_root_only_refused_when_running(tmp_path: Path) -> None:
    path = write_suite(tmp_path / "suite.yaml", data={"root": str(tmp_path / "nowhere")})
    assert len(load_suite(path, check_data=False).runs()) == 2
    with pytest.raises(SuiteError, match=r"data\.root: dataset root .*nowhere does not exist"):
        load_suite(path)


def test_dry_run_lists_every_run_and_runs_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = write_suite(tmp_path / "suite.yaml", task_sets=["sdk", "erckt"], methods=["one-by-one", "tag-2", "mas-3"],
                       seeds=[0, 1])
    assert main(["bench", str(path), "--dry-run"]) == 0
    listed = [line.split()[1] for line in capsys.readouterr().out.splitlines() if line.startswith("  ")]
    assert len(listed) == 2 * 3 * 2 == len(set(listed))
    assert listed[:3] == ["one-by-one-sdk-seed0", "tag-x2-sdk-seed0", "mas-x3-sdk-seed0"]
    assert "mas-x3-erckt-seed1" in listed
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["paper-sdnkt", "paper-erckt", "paper-sdnkterca",
                                  "quick-sdnkt", "quick-erckt", "quick-sdnkterca"])
def test_shipped_suites_are_valid(name: str) -> None:
    suite = load_suite(CONF / f"{name}.yaml", check_data=False)
    labels = [m.label for m in suite.methods]
    assert suite.seeds == [0, 1, 2]
    if name.startswith("paper"):
        assert labels == ["one-by-one", "fedavg", "fedprox", "gradnorm", "hoa-2", "hoa-3", "tag-2", "tag-3",
                          "mas-2", "mas-3"]
        rc = suite.run_config
        assert (suite.nodes, rc["clients-per-round"], rc["local-epochs"], rc["num-rounds"], rc["merge-rounds"],
                rc["affinity-rounds"], rc["affinity-every"], rc["batch-size"], rc["lr"], rc["image-size"],
                rc["model"]) == (32, 5, 5, 100, 70, 10, 5, 64, 0.1, 256, "xception")
        assert suite.data_root is not None and suite.gpus_per_node > 0
    else:
        if name == "quick-sdnkt":  # the evidence suite (docs/benchmarks.md): settings chosen by skill
            assert labels == ["one-by-one", "fedavg", "hoa-2", "tag-2", "mas-2", "mas-3", "oracle-2"]
            assert suite.synthetic["views"] >= 96 and suite.run_config["local-epochs"] >= 3
        else:
            assert labels == ["one-by-one", "fedavg", "fedprox", "gradnorm", "hoa-2", "tag-2", "mas-2", "mas-3"]
            assert suite.synthetic["views"] >= 192  # compute dominates
        assert suite.synthetic is not None and suite.gpus_per_node == 0
        assert suite.run_config["batch-size"] >= 16
        r, r0 = suite.run_config["num-rounds"], suite.run_config["merge-rounds"]
        assert abs(r0 / r - 0.7) <= 0.05 and suite.run_config["affinity-rounds"] <= r0
    assert suite.task_sets == [name.split("-")[1]]


# Summaries from run folders (no Flower) -----------------------------------------------------------

def _fake_run(root: Path, method: str, splits: int | None, seed: int, total: float, groups: list[str] | None) -> None:
    run = root / "runs" / f"{method}-seed{seed}"
    run.mkdir(parents=True)
    losses = {"s": total / 2, "d": total / 4, "k": total / 4}
    (run / RESULTS_FILE).write_text(json.dumps({
        "method": method, "task_set": "sdk", "seed": seed, "splits": groups, "test_loss": losses,
        "total_test_loss": total, "client_train_seconds": 3600.0 * (seed + 1), "wall_seconds": 1800.0,
        "energy_kwh": 0.5 * (seed + 1), "co2_g": 100.0, "energy_estimated": True, "energy_method": "estimate",
        "history": [], "affinity": None, "config": {"splits": splits or 2}}))


def test_summary_means_std_and_order_from_run_folders(tmp_path: Path) -> None:
    for seed, total in ((0, 1.0), (1, 3.0)):
        _fake_run(tmp_path, "mas", 2, seed, total, ["sd", "k"] if seed == 0 else ["s", "dk"])
        _fake_run(tmp_path, "fedavg", None, seed, total + 1, None)
    runs = load_runs([tmp_path])
    rows = summarise(runs)
    assert [r.method for r in rows] == ["fedavg", "mas-2"]  # the paper's order without a suite order
    assert [r.method for r in summarise(runs, ["mas-2", "fedavg"])] == ["mas-2", "fedavg"]
    mas = rows[1]
    assert mas.runs == 2 and mas.total == pytest.approx((2.0, 1.0)) and mas.tasks["s"] == pytest.approx((1.0, 0.5))
    assert mas.client_hours == pytest.approx((1.5, 0.5)) and mas.energy_kwh == pytest.approx((0.75, 0.25))
    csv_path, md_path = write_summary(tmp_path, runs)
    table = list(csv.DictReader(csv_path.open()))
    assert [(r["method"], r["task_set"], r["runs"]) for r in table] == [("fedavg", "sdk", "2"), ("mas-2", "sdk", "2")]
    assert float(table[1]["total_loss_mean"]) == 2.0 and float(table[1]["total_loss_std"]) == 1.0
    assert float(table[0]["test_loss_s_mean"]) == 1.5 and float(table[1]["client_hours_mean"]) == 1.5
    md = md_path.read_text()
    assert "| FedAvg\\* | 2 | 3.00 ± 1.00 |" in md and "| MAS-2 | 2 | 2.00 ± 1.00 |" in md
    assert "| MAS-2 | `sd,k` | `s,dk` |" in md  # the splits per seed, like Table 1


def test_no_runs_is_an_error_naming_the_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        load_runs([tmp_path])


# A real suite through Flower -----------------------------------------------------------------------

def test_tiny_suite_runs_and_summarises(private_homes, tmp_path_factory: pytest.TempPathFactory) -> None:
    out = tiny_suite(tmp_path_factory)
    results = {name: json.loads((out / "runs" / name / RESULTS_FILE).read_text()) for name in TINY_RUNS}
    assert results["mas-x2-sdk-seed0"]["method"] == "mas" and len(results["mas-x2-sdk-seed0"]["splits"]) == 2
    status = json.loads((out / "bench-status.json").read_text())
    assert {n: s["status"] for n, s in status.items()} == dict.fromkeys(TINY_RUNS, "finished:completed")
    table = list(csv.DictReader((out / "summary.csv").open()))
    assert [(r["method"], r["task_set"], r["runs"]) for r in table] == [("fedavg", "sdk", "1"), ("mas-2", "sdk", "1")]
    for row, name in zip(table, TINY_RUNS, strict=True):
        assert float(row["total_loss_mean"]) == pytest.approx(results[name]["total_test_loss"], rel=1e-5)
        assert float(row["total_loss_std"]) == 0.0
        assert float(row["test_loss_k_mean"]) == pytest.approx(results[name]["test_loss"]["k"], rel=1e-5)
        assert float(row["client_hours_mean"]) == pytest.approx(results[name]["client_train_seconds"] / 3600, rel=1e-5)
        # the per-round client seconds add up to the run's, and the compute share comes from them
        rounds = [h["client_train_seconds"] for h in results[name]["history"]]
        assert sum(rounds) == pytest.approx(results[name]["client_train_seconds"])
        everything = results[name]["client_train_seconds"] + results[name]["client_setup_seconds"]
        assert float(row["compute_share_mean"]) == pytest.approx(sum(rounds[1:]) / everything, rel=1e-5)
    md = (out / "summary.md").read_text()
    assert md.index("| FedAvg\\* | 1 |") < md.index("| MAS-2 | 1 |")
    assert f"| MAS-2 | `{','.join(results['mas-x2-sdk-seed0']['splits'])}` |" in md
    rebuilt = out.parent / "rebuilt"  # the same summary from the run folders alone
    write_summary(rebuilt, load_runs([out]))
    assert (rebuilt / "summary.csv").read_text() == (out / "summary.csv").read_text()


def test_resume_redoes_only_the_unfinished_run(private_homes, tmp_path_factory: pytest.TempPathFactory,
                                               capsys: pytest.CaptureFixture) -> None:
    from mas_flower.tools.bench import run_suite

    out = tiny_suite(tmp_path_factory)
    kept, redo = (out / "runs" / name for name in ("mas-x2-sdk-seed0", "fedavg-sdk-seed0"))
    kept_mtimes = {p: p.stat().st_mtime_ns for p in kept.rglob("*")}
    (redo / RESULTS_FILE).unlink()  # now a half-written run folder
    (redo / "marker").write_text("from the interrupted run")
    assert run_suite(out.parent / "suite.yaml") == 0
    printed = capsys.readouterr().out
    assert "[2/2] mas-x2-sdk-seed0: done earlier, kept" in printed and printed.count(": running") == 1
    assert (redo / RESULTS_FILE).is_file() and not (redo / "marker").exists()
    assert (out / "incomplete" / "fedavg-sdk-seed0.1" / "marker").is_file()
    assert {p: p.stat().st_mtime_ns for p in kept.rglob("*")} == kept_mtimes
    assert len(list(csv.DictReader((out / "summary.csv").open()))) == 2
    assert not pids_with_arg(str(out / ".flwr" / "local-superlink"))


def test_second_bench_on_the_same_output_is_refused(tmp_path: Path) -> None:
    """The lock is an OS file lock held by another process: refused while held, free once it is gone."""
    import subprocess
    import sys

    from mas_flower.tools.bench import _lock

    out = tmp_path / "out"
    out.mkdir()
    hold = (f"import time; from filelock import FileLock; lock = FileLock({str(out / '.bench.lock')!r}); "
            "lock.acquire(); print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", hold], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(ValueError, match="another `mas-flower bench` is running this suite"), _lock(out):
            pass
    finally:
        holder.kill()
        holder.wait()
    with _lock(out):  # a killed bench holds nothing
        pass
