"""The meta-RL experiments run end to end from the CLI; an interrupted run resumes exactly."""

import dataclasses
import json

import pytest

from metajax import cli

NAV = ["seeds=0", "meta_iterations=4", "meta_batch=2", "num_episodes=3", "hidden=8",
       "horizon=10", "val_every=2", "log_every=2", "steps_per_call=2", "test_goals=3",
       "eval_episodes=3", "val_goals=2", "plot_goals=2"]
BANDIT = ["outer_steps=4,4", "arms=3,2", "pulls=5,12", "meta_batch=8", "hidden=8",
          "val_tasks=20", "test_tasks=30", "log_every=2", "steps_per_call=2", "epsilons=0.1",
          "ucb_cs=0.2,1.0"]


def _run(name, out, overrides, *extra):
    return cli.main(["run", name, "--out", str(out), "--no-progress", *extra,
                     *sum((["--set", s] for s in overrides), [])])


@pytest.mark.slow
def test_navigation_runs_with_every_baseline_and_the_papers_numbers(tmp_path, capsys):
    out = tmp_path / "nav"
    assert _run("rl_navigation_maml", out, NAV) == 0
    s = json.loads((out / "summary.json").read_text())
    assert list(s["results"]) == ["maml", "pretrained", "scratch", "oracle"]
    assert list(s["results"]["maml"]) == ["0", "1", "2", "3"]
    assert list(s["results"]["oracle"]) == ["0"]
    assert all(c["n"] == 3 for row in s["results"].values() for c in row.values())
    assert s["paper"]["maml"] == [-40.4, -11.7, -3.3, -3.2]
    assert all((out / f).stat().st_size > 0 for f in ("returns.png", "trajectories.png",
                                                       "learning_curve.png"))
    assert "Held-out goals" in capsys.readouterr().out


@pytest.mark.slow
def test_bandit_run_continued_from_its_checkpoints_equals_an_uninterrupted_one(tmp_path):
    module = cli.load_experiment("rl_bandit_rl2")
    config = cli.apply_overrides(module.Config(), BANDIT)
    whole = module.main(config, tmp_path / "whole", progress=False)
    module.main(dataclasses.replace(config, outer_steps=(2, 2)), tmp_path / "part",
                progress=False)
    part = module.main(config, tmp_path / "part", progress=False)
    assert part["results"] == whole["results"]
    assert set(whole["results"]) == {"rl2", "random", "greedy", "epsilon_greedy", "ucb1",
                                     "thompson", "bayes_optimal"}
    assert list(whole["results"]["bayes_optimal"]) == ["k=3,n=5"]  # exact for short trials
    regret = whole["regret"]
    assert list(regret) == ["k=3,n=5", "k=2,n=12"]
    assert [len(c) for c in regret["k=2,n=12"].values()] == [12] * 6
    assert set(regret["k=3,n=5"]) == set(whole["results"]) - {"bayes_optimal"}
    assert (tmp_path / "whole" / "regret.png").stat().st_size > 0


GRID = ["meta_iterations=4", "rl2_steps=4", "test_tasks=6", "log_every=2", "steps_per_call=2",
        "hidden=8", "rl2_hidden=8", "size=3", "meta_batch=2", "rl2_meta_batch=4",
        "num_episodes=3", "eval_episodes=3", "episodes_per_trial=3", "eval_lrs=0.5,0.5"]


@pytest.mark.slow
def test_gridworld_runs_rl2_and_maml_on_the_same_mazes(tmp_path, capsys):
    out = tmp_path / "grid"
    assert _run("rl_gridworld", out, GRID) == 0
    s = json.loads((out / "summary.json").read_text())
    assert list(s["results"]) == ["rl2", "maml", "pretrained", "scratch"]
    assert list(s["results"]["rl2"]) == ["0", "1", "2"]  # the episodes of a trial
    assert list(s["results"]["maml"]) == ["0", "1", "2"]  # 0, 1, 2 VPG steps
    assert all(c["n"] == 6 for row in s["results"].values() for c in row.values())
    # a step costs 0.01 and the goal pays 1: every episode's return lies in between
    horizon = 2 * 3 * 3
    for row in s["results"].values():
        for cell in row.values():
            assert -0.51 * horizon - 1e-6 <= cell["mean"] <= 1.0
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert {r["method"] for r in records} == {"maml", "pretrained", "rl2"}
    assert (out / "returns.png").stat().st_size > 0
    assert "Held-out mazes" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["rl_navigation_maml", "rl_bandit_rl2", "rl_gridworld"])
def test_processes_are_refused_with_the_sweep_to_use_instead(name, tmp_path, capsys):
    out = tmp_path / "run"
    assert _run(name, out, [], "--processes", "2") == 2
    err = capsys.readouterr().err
    assert err.startswith(f"metajax run {name}: --processes 2: this experiment runs in one "
                          "process")
    assert f"metajax sweep {name} --grid ... --processes 2" in err
    assert not out.exists()


@pytest.mark.slow
def test_a_bandit_sweep_tabulates_the_experiments_own_columns(tmp_path, capsys):
    assert cli.main(["sweep", "rl_bandit_rl2", "--grid", "lr=0.001,0.003", "--out",
                     str(tmp_path / "s"), "--no-progress",
                     *sum((["--set", s] for s in BANDIT), [])]) == 0
    rows = json.loads((tmp_path / "s" / "sweep.json").read_text())["rows"]
    assert [r["lr"] for r in rows] == [0.001, 0.003]
    for row in rows:
        assert row["k=3,n=5"]["n"] == 30 and row["k=2,n=12"]["n"] == 30
    assert "| lr | seeds | k=3,n=5 | k=2,n=12 |" in capsys.readouterr().out
