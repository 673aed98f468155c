"""`mlkit sweep` with Optuna's reach, end to end: other samplers and their options, several metrics, conditional spaces and
list choices, per-trial and per-sweep time budgets, and the spec's YAML and checks at the command line."""
import json
import os
import re
from pathlib import Path

import nbformat
import pytest
import test_sweep
from optuna.trial import TrialState
from test_sweep import notebook, runs, spec, study, sweep

COVERS = ("07_cli", "12_sweep", "12a_sweep_spec")  # the notebooks these tests cover: `make test NB=...` runs them

project = test_sweep.project  # the fixture: a project folder with its runs folder in MLKIT_RUNS_DIR

XY = ("x = 0.5\ny = 0.5", "from mlkit.run import record\nrecord('score', -(x - 0.3) ** 2 - (y - 0.6) ** 2)")


def given(run) -> dict:
    "The parameters the sweep passed to the run's kernel (papermill's record in the run's notebook), not its defaults."
    nb = next(p for p in run.path.glob("*.ipynb"))
    return dict(nbformat.read(nb, as_version=4).metadata["papermill"]["parameters"])


def test_a_cmaes_sweep_runs_with_the_sampler_s_own_options(project):
    "Separable CMA-ES in generations of two: its trials after the first (drawn independently) carry its generation."
    notebook(project, "toy.ipynb", *XY)
    path = spec(project, method={"name": "cmaes", "use_separable_cma": True, "popsize": 2}, n_trials=5,
                params={"x": {"type": "float", "low": 0.0, "high": 1.0}, "y": {"type": "float", "low": 0.0, "high": 1.0}})
    r = sweep(path)
    assert r.returncode == 0, r.stderr
    trials = study().trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 5
    # CmaEsSampler's own samples, separable (the option reached it), two to a generation (so did popsize)
    assert [t.system_attrs.get("sepcma:generation") for t in trials] == [None, 0, 0, 1, 1]
    assert "Warning" not in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_an_unknown_sampler_option_is_one_line_naming_the_sampler_s_options(project):
    notebook(project, "toy.ipynb", *XY)
    r = sweep(spec(project, method={"name": "cmaes", "sigma": 0.1}))
    assert r.returncode == 1 and len(r.stderr.splitlines()) == 1, r.stderr
    assert "method cmaes has no option 'sigma' (Optuna's CmaEsSampler takes: x0, sigma0," in r.stderr, r.stderr
    assert r.stdout == "" and not Path(os.environ["MLKIT_RUNS_DIR"]).exists()  # nothing made


TWO = ("x = 0.5", "from mlkit.run import record\nrecord('score', x)\nrecord('cost', (x - 0.2) ** 2)")


def _front(trials) -> set:
    "The numbers of the trials no other trial beats in both: score up, cost down."
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    beaten = {t.number for t in done for o in done if o.values[0] >= t.values[0] and o.values[1] <= t.values[1]
              and o.values != t.values}
    return {t.number for t in done} - beaten


@pytest.mark.slow
def test_a_multi_objective_nsgaii_sweep_shows_its_pareto_front(project):
    notebook(project, "toy.ipynb", *TWO)
    metric = [{"name": "score", "goal": "maximize"}, {"name": "cost", "goal": "minimize"}]
    path = spec(project, method={"name": "nsgaii", "population_size": 2}, metric=metric, n_trials=6)
    r = sweep(path, "--workers", "2", timeout=200)
    assert r.returncode == 0, r.stderr
    s = study()
    assert [d.name for d in s.directions] == ["MAXIMIZE", "MINIMIZE"] and len(s.trials) == 6
    for t in s.trials:  # each trial's two values are the run's two records
        run = next(x for x in runs("s") if x.id == t.user_attrs["mlkit.run"])
        assert t.values == [run.records["score"], run.records["cost"]]
    front = _front(s.trials)
    assert {t.number for t in s.best_trials} == front
    b = sweep("best", "s")
    assert b.returncode == 0 and b.stdout.startswith(f"pareto front of sweep s: {len(front)} trial(s)"), b.stdout
    commands = [line for line in b.stdout.splitlines() if re.match(r"trial \d+: mlkit run ", line)]
    assert sorted(int(c.split(":")[0].split()[1]) for c in commands) == sorted(front), b.stdout
    for c in commands:  # each with the command that repeats it
        t = s.trials[int(c.split(":")[0].split()[1])]
        assert c.endswith(f"mlkit run toy.ipynb -p x {t.params['x']!r}"), c
    assert r.stdout.count("trial ") >= 6 and all(  # one line per trial, with both values
        "score " in line and "cost " in line for line in r.stdout.splitlines() if " finished:" in line), r.stdout
    st = sweep("status", "s")
    assert st.returncode == 0 and st.stdout.splitlines()[1].split()[:4] == ["trial", "state", "score", "cost"], st.stdout
    p = sweep("plot", "s", "-o", project/"plots")
    assert p.returncode == 0 and "s-pareto.png" in p.stdout and "s-history-cost.png" in p.stdout, p.stdout + p.stderr
    # resumed with one metric, or with them swapped: not the same search
    for other in ([metric[0]], metric[::-1]):
        again = sweep(spec(project, method={"name": "nsgaii", "population_size": 2}, metric=other, n_trials=6))
        assert again.returncode == 1 and "exists with a different metric, goal" in again.stderr, again.stderr
    again = sweep(spec(project, method={"name": "nsgaii", "population_size": 2}, metric=metric, n_trials=6))
    assert again.returncode == 0 and "pareto front of sweep s" in again.stdout, again.stderr  # the same spec: done


def test_pruning_a_multi_objective_sweep_is_refused_in_one_line(project):
    notebook(project, "toy.ipynb", *TWO)
    r = sweep(spec(project, metric=["score", {"name": "cost", "goal": "minimize"}], pruner={"type": "median"},
                   params={"x": {"type": "float", "low": 0.0, "high": 1.0}}))
    assert r.returncode == 1 and len(r.stderr.splitlines()) == 1, r.stderr
    assert "pruner: Optuna cannot prune a search of 2 metrics; leave pruner out" in r.stderr


COND = ("opt = 'adam'\nmomentum = -1.0\nlayers = [4]",
        "from mlkit.run import record\nrecord('score', (momentum if opt == 'sgd' else 0.5) + len(layers))")


@pytest.mark.slow
def test_a_conditional_parameter_reaches_the_notebook_only_when_its_condition_holds(project):
    notebook(project, "toy.ipynb", *COND)
    params = {"opt": {"type": "categorical", "choices": ["sgd", "adam"]},
              "momentum": {"type": "float", "low": 0.5, "high": 0.9, "when": {"opt": "sgd"}},
              "layers": {"type": "categorical", "choices": [[8], [16, 8]]}}
    r = sweep(spec(project, params=params, n_trials=8, seed=3))
    assert r.returncode == 0, r.stderr
    s = study()
    by_trial = {x.meta["trial"]: x for x in runs("s")}
    assert {t.params["opt"] for t in s.trials} == {"sgd", "adam"}  # both branches ran
    assert {json.dumps(by_trial[t.number].params["layers"]) for t in s.trials} == {"[8]", "[16, 8]"}
    for t in s.trials:
        run, sgd = by_trial[t.number], t.params["opt"] == "sgd"
        assert ("momentum" in given(run)) == sgd == ("momentum" in t.params), (t.params, given(run))
        assert run.params["momentum"] == (t.params["momentum"] if sgd else -1.0)  # else the notebook's default stands
        assert run.params["layers"] in ([8], [16, 8]) and isinstance(run.params["layers"], list)  # the list, not its text
        assert run.records["score"] == t.value
    best = sweep("best", "s").stdout
    t = s.best_trial
    assert f"-p layers '{json.dumps(by_trial[t.number].params['layers'])}'" in best, best
    assert ("-p momentum" in best) == (t.params["opt"] == "sgd"), best
    st = sweep("status", "s").stdout
    assert "[16, 8]" in st and '"[16, 8]"' not in st, st  # the real value, not Optuna's JSON text


def test_a_grid_over_a_conditional_space_is_refused_and_without_n_trials_a_grid_runs_all_its_points(project):
    notebook(project, "toy.ipynb", *COND)
    params = {"opt": {"type": "categorical", "choices": ["sgd", "adam"]},
              "layers": {"type": "categorical", "choices": [[8], [16, 8]]}}
    path = project/"s.yaml"
    text = json.loads(spec(project, method="grid", params=params).read_text())
    del text["n_trials"]
    path.write_text(json.dumps(text))
    r = sweep(path)
    assert r.returncode == 0, r.stderr
    assert sorted((t.params["opt"], t.params["layers"]) for t in study().trials) == [
        ("adam", "[16, 8]"), ("adam", "[8]"), ("sgd", "[16, 8]"), ("sgd", "[8]")]  # every point, lists as their JSON
    assert "sweep s: 4 trials done" in r.stdout
    over = sweep(path, "--n-trials", "5")
    assert over.returncode == 1 and "--n-trials is 5, and the grid has 4 points" in over.stderr, over.stderr
    params["momentum"] = {"type": "float", "low": 0.5, "high": 0.9, "step": 0.2, "when": {"opt": "sgd"}}
    r = sweep(spec(project, name="c", method="grid", params=params))
    assert r.returncode == 1 and "a grid cannot search a conditional space (momentum has when:)" in r.stderr, r.stderr


HANG = ("x = 0.5", "import time\nfrom mlkit.run import record\nif x == 0.5: time.sleep(600)\nrecord('score', x)")


def test_a_trial_over_its_cell_timeout_fails_with_that_reason_and_the_sweep_goes_on(project):
    notebook(project, "toy.ipynb", *HANG)
    r = sweep(spec(project, n_trials=2, start_with=[{"x": 0.5}]), "--cell-timeout", "3", timeout=150)  # not 600 s
    assert r.returncode == 0, r.stderr
    trials = study().trials
    assert trials[0].state == TrialState.FAIL and [t.state for t in trials[-2:]] == [TrialState.COMPLETE] * 2
    why = trials[0].user_attrs["mlkit.error"]
    assert "cell 2 ran over the cell timeout of 3 s" in why and "\n" not in why, why
    assert f"trial 0 failed:  x=0.5  (run {trials[0].user_attrs['mlkit.run']})  {why}" in r.stdout, r.stdout
    hung = next(x for x in runs("s") if x.meta["trial"] == 0)
    assert hung.status == "failed" and "cell timeout" in hung.meta["error"]
    st = sweep("status", "s")
    assert "ran over the cell timeout of 3 s" in st.stdout, st.stdout


def test_a_sweep_s_timeout_starts_no_trial_after_it_and_the_same_command_continues(project):
    notebook(project, "toy.ipynb", *test_sweep.TOY)
    path = spec(project, n_trials=50, timeout=1, fixed={"nap": 1.0})
    r = sweep(path, timeout=150)  # fifty trials of a second or more, were the timeout ignored
    assert r.returncode == 0, r.stderr
    assert "reached its timeout with" in r.stderr and "the same command continues it" in r.stderr, r.stderr
    first = study().trials
    assert 1 <= len(first) < 50 and all(t.state == TrialState.COMPLETE for t in first)  # running ones finished
    assert f"sweep s: {len(first)} trials done" in r.stdout and "best trial" in r.stdout
    r = sweep(path, "--timeout", "1")
    assert r.returncode == 0 and len(study().trials) > len(first), r.stderr
    bad = sweep(path, "--timeout", "-1")
    assert bad.returncode == 1 and "--timeout takes a number of seconds above 0, got -1.0" in bad.stderr, bad.stderr


@pytest.mark.parametrize("text, message", [
    ("name: s\nnotebook: toy.ipynb\nmetric: score\nparams: {x: {type: float, low: 0, high: 1}}\nname: t\n",
     "duplicate key 'name' (lines 1 and 5)"),
    ("name: s\nnotebook: toy.ipynb\nmetric: {name: score, goal: maximize}\nparams:\n  x: {type: float, low: 0, high: 1}\n"
     "  x: {type: float, low: 0, high: 2}\n", "duplicate key 'x' (lines 5 and 6)"),
])
def test_a_key_given_twice_is_refused_with_its_lines(project, text, message):
    notebook(project, "toy.ipynb", *TWO)
    (project/"s.yaml").write_text(text)
    r = sweep(project/"s.yaml")
    assert r.returncode == 1 and r.stderr == f"mlkit sweep: error: {project/'s.yaml'}: {message}\n", r.stderr


def test_numbers_in_any_notation_are_numbers(project):
    notebook(project, "toy.ipynb", *XY)
    (project/"s.yaml").write_text("name: s\nnotebook: toy.ipynb\nmetric: {name: score, goal: maximize}\nmethod: random\n"
                                  "n_trials: 1\nparams:\n  x: {type: float, low: 1e-4, high: .5, log: true}\n"
                                  "  y: {type: float, low: -3e+2, high: 1E2}\n")
    r = sweep(project/"s.yaml")
    assert r.returncode == 0, r.stderr
    assert all(1e-4 <= t.params["x"] <= 0.5 and -300 <= t.params["y"] <= 100 for t in study().trials)
