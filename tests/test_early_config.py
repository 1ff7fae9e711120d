"""Bad run config refused before Flower starts (`mas-flower run`, `./run.sh`, `mas-flower bench`), read
with Flower's own `--run-config` parser; the bench output folder; `mas-flower config`."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
import tomllib

from mas_flower.defaults import RUN_CONFIG_DEFAULTS, RUN_CONFIG_HELP
from mas_flower.tools.cli import main
from mas_flower.tools.launch import APP_DIR, check_run_config, parse_run_config_args, run_config_args
from mas_flower.tools.processes import pids_with_arg
from tests.bench_suite import write_suite

CLI = str(APP_DIR / ".venv" / "bin" / "mas-flower")
#: Seconds from the command to its error (Python, torch via the settings' imports, validation): no Flower.
REFUSED_WITHIN = 30.0


def _refused(cmd: list[str], env: dict[str, str], marker: Path) -> subprocess.CompletedProcess:
    """Run `cmd`; check it exits 2 without a traceback, in time, and started no process naming `marker`."""
    t0 = time.monotonic()
    done = subprocess.run(cmd, env=env, cwd=APP_DIR, capture_output=True, text=True, timeout=120)
    seconds = time.monotonic() - t0
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Traceback" not in done.stdout + done.stderr
    assert seconds < REFUSED_WITHIN, f"refused only after {seconds:.1f} s"
    assert not marker.exists(), f"{marker} was created: a SuperLink was started"
    assert not pids_with_arg(str(marker))
    return done


@pytest.mark.parametrize(("run_config", "message"), [
    (["--run-config", "num_rounds=3"], "unknown key 'num_rounds' (did you mean 'num-rounds'?)"),
    (["-c", "num-rounds=-1 merge-rounds=1"], "num-rounds=-1 must be at least 1"),
    (["--run-config=method='mass'"], "method='mass' is not one of fedavg, fedprox"),
    (["--run-config", "lr='fast'"], "run-config key 'lr': expected float, got 'fast'"),
    (["--run-config", "clients-per-round=3"], "clients-per-round=3 is more than the 2 simulated nodes"),
])
def test_run_refuses_bad_run_config_before_flower(tmp_path: Path, run_config: list[str], message: str) -> None:
    flwr_home = tmp_path / "flwr"
    done = _refused([CLI, "run", "--nodes", "2", "--flwr-home", str(flwr_home), "--", *run_config],
                    {**os.environ, "MAS_FLOWER_HOME": str(tmp_path / "home")}, flwr_home)
    error = done.stderr.strip()
    assert error.startswith("mas-flower run: error: ") and message in error and "\n" not in error, error
    assert done.stdout == ""


def test_run_sh_refuses_a_misspelt_key(tmp_path: Path) -> None:
    """./run.sh execs `mas-flower run`: the same refusal, and no FLWR_HOME under MAS_FLOWER_HOME."""
    home = tmp_path / "home"
    done = _refused([str(APP_DIR / "run.sh"), "--run-config", "num-round=3 lr=0.1"],
                    {**os.environ, "MAS_FLOWER_HOME": str(home)}, home / "flwr")
    assert "unknown key 'num-round' (did you mean 'num-rounds'?)" in done.stderr


def test_bench_refuses_a_bad_suite_before_starting_anything(tmp_path: Path) -> None:
    """A real (not --dry-run) bench: the suite's run_config key is refused with no output folder made."""
    suite = write_suite(tmp_path / "suite.yaml", run_config={"num_rounds": 2})
    out = tmp_path / "out"
    done = _refused([CLI, "bench", str(suite), "--output", str(out)], dict(os.environ), out)
    assert f"{suite}: run_config.num_rounds: not a run-config key of the app (did you mean 'num-rounds'?)" \
        in done.stderr


# Flower's own parser, our checks ---------------------------------------------------------------------------

def test_run_config_options_are_found_in_every_click_spelling() -> None:
    args = ["--federation", "x", "--run-config", "a=1", "-c", "b=2", "--run-config=c=3", "-cd=4", "--stream"]
    assert run_config_args(args) == ["a=1", "b=2", "c=3", "d=4"]
    assert run_config_args(["--stream"]) == []
    with pytest.raises(ValueError, match="`--run-config` needs a value"):
        run_config_args(["--run-config"])


def test_values_are_read_as_flwr_reads_them(tmp_path: Path) -> None:
    """TOML values: 1e-3 is a float, quoted text a string; later options win; a .toml file alone."""
    assert parse_run_config_args(["lr=1e-3 method='fedavg'", "seed=7 lr=0.5"]) == \
        {"lr": 0.5, "method": "fedavg", "seed": 7}
    assert parse_run_config_args(['run-name="a b"']) == {"run-name": "a b"}
    file = tmp_path / "rc.toml"
    file.write_text('num-rounds = 4\ntask-set = "sd"\n')
    assert parse_run_config_args([str(file)]) == {"num-rounds": 4, "task-set": "sd"}
    with pytest.raises(ValueError, match="invalid format"):
        parse_run_config_args(["lr=fast"])  # not TOML: flwr refuses it too
    with pytest.raises(ValueError, match="no such TOML file"):
        parse_run_config_args([str(tmp_path / "none.toml")])
    with pytest.raises(ValueError, match="cannot be passed alongside"):
        parse_run_config_args([str(file), "seed=1"])


def test_a_good_run_config_gives_the_settings_the_server_app_will_use() -> None:
    settings = check_run_config(["--run-config", "method='fedavg' task-set='sd' num-rounds=3 merge-rounds=1 "
                                 "clients-per-round=2 lr=0.05"], nodes=2)
    assert (settings.method, settings.task_set, settings.num_rounds, settings.clients_per_round, settings.lr,
            settings.batch_size) == ("fedavg", "sd", 3, 2, 0.05, RUN_CONFIG_DEFAULTS["batch-size"])


def test_resume_folder_is_checked_before_starting(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    args = ["--run-config", f"resume='{run_dir}'"]
    with pytest.raises(ValueError, match=r"checkpoint\.pt does not exist \(nothing to resume\)"):
        check_run_config(args, nodes=2)
    (run_dir / "checkpoint.pt").write_bytes(b"")
    assert check_run_config(args, nodes=2).resume == str(run_dir)  # clients-per-round=4 > 2: the checkpoint's
    (run_dir / "results.json").write_text("{}")
    with pytest.raises(ValueError, match="already finished"):
        check_run_config(args, nodes=2)
    with pytest.raises(ValueError, match="--nodes=0 must be at least 1"):
        check_run_config([], nodes=0)


# bench's output folder ------------------------------------------------------------------------------------

def test_bench_output_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """--output wins, then the suite's output key, then $MAS_FLOWER_HOME/bench/<suite file name>."""
    home = tmp_path / "home"
    monkeypatch.setenv("MAS_FLOWER_HOME", str(home))
    keyed = write_suite(tmp_path / "keyed.yaml")  # output: <tmp>/out
    unkeyed = write_suite(tmp_path / "my-suite.yaml", output=None)
    monkeypatch.chdir(tmp_path)
    for args, runs_dir in ([[str(keyed)], tmp_path / "out" / "runs"],
                           [[str(keyed), "--output", "elsewhere"], tmp_path / "elsewhere" / "runs"],
                           [[str(unkeyed)], home / "bench" / "my-suite" / "runs"]):
        assert main(["bench", "--dry-run", *args]) == 0
        assert f": 2 runs into {runs_dir} (3 nodes" in capsys.readouterr().out
    assert not home.exists() and not (tmp_path / "elsewhere").exists()  # a dry run writes nothing


def test_shipped_quick_suites_write_under_mas_flower_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("MAS_FLOWER_HOME", str(tmp_path))
    for name in ("quick-sdnkt", "quick-erckt", "quick-sdnkterca", "strategies-sdnkt", "strategies-sdnkt-server-lr"):
        assert main(["bench", "--dry-run", str(APP_DIR / "conf" / f"{name}.yaml")]) == 0
        assert f"runs into {tmp_path / 'bench' / name / 'runs'} (" in capsys.readouterr().out


# mas-flower config ----------------------------------------------------------------------------------------

def test_every_key_has_one_line_of_meaning() -> None:
    pyproject = tomllib.loads((APP_DIR / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert list(RUN_CONFIG_HELP) == list(RUN_CONFIG_DEFAULTS)
    assert set(RUN_CONFIG_HELP) == set(pyproject)
    for key, text in RUN_CONFIG_HELP.items():
        assert text.strip() and "\n" not in text and "|" not in text, key


def test_config_prints_each_key_default_and_meaning(capsys: pytest.CaptureFixture) -> None:
    assert main(["config"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == list(RUN_CONFIG_DEFAULTS)
    by_key = {line.split()[0]: line.split(None, 2)[1:] for line in lines}
    # Defaults as --run-config writes them (TOML): text quoted, booleans lower-case, numbers plain.
    assert by_key["lr"] == [repr(RUN_CONFIG_DEFAULTS["lr"]), RUN_CONFIG_HELP["lr"]]
    assert by_key["method"] == [f"'{RUN_CONFIG_DEFAULTS['method']}'", RUN_CONFIG_HELP["method"]]
    assert by_key["affinity-first-epoch-only"] == ["false", RUN_CONFIG_HELP["affinity-first-epoch-only"]]
    assert by_key["data-root"][0] == "''"
    assert len({line.index(RUN_CONFIG_HELP[line.split()[0]]) for line in lines}) == 1  # one column


def test_config_markdown_table(capsys: pytest.CaptureFixture) -> None:
    """One table per group of keys, under a `###` heading, the groups in declaration order."""
    assert main(["config", "--format", "markdown"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:4] == ["### Training", "", "| key | default | meaning |", "|---|---|---|"]
    headings = [line for line in lines if line.startswith("### ")]
    assert headings == ["### Training", "### Affinity", "### Server strategy", "### Evaluation",
                        "### Faults and membership", "### Energy", "### Synthetic data", "### Data and outputs"]
    rows = [line for line in lines if line.startswith("| `")]
    assert [row.split("`")[1] for row in rows] == list(RUN_CONFIG_DEFAULTS)
    assert f"| `num-rounds` | `{RUN_CONFIG_DEFAULTS['num-rounds']}` | {RUN_CONFIG_HELP['num-rounds']} |" in rows
    assert f"| `output-dir` | `''` | {RUN_CONFIG_HELP['output-dir']} |" in rows
    assert all(line.count("|") == 4 for line in lines if line.startswith("|"))
    assert len(lines) == len(rows) + 5 * len(headings) - 1  # heading, blank, header, rule; blank between
    assert main(["config", "--format", "html"]) == 2


def test_the_docs_key_table_is_the_config_table(capsys: pytest.CaptureFixture) -> None:
    assert main(["config", "--format", "markdown"]) == 0
    table = capsys.readouterr().out.strip()
    page = (Path(__file__).resolve().parents[1] / "docs" / "configuration.md").read_text()
    assert table in page, "docs/configuration.md's run-config table differs from `mas-flower config --format markdown`"
