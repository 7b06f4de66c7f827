"""Sweep files: the one-line errors fr-sweep gives before any trial (no Ray started), and the search space."""

import os
import textwrap

import pytest

from fr.cli.sweep import main
from fr.sweep.runner import DRIVER_CPU, check_cluster
from fr.sweep.space import SweepError
from fr.sweep.spec import Resources, load_sweep
from tests.helpers import ROOT

RECIPE = os.path.join(ROOT, "configs", "synthetic.py")
GOOD = {
    "base": RECIPE,
    "overrides": "{train.max_steps: 600, eval.every: 100}",
    "space": "\n  optim.lr: {loguniform: [0.01, 0.3]}\n  loss.name: {choice: [arcface, cosface, elastic_arc]}",
    "metric": "synthetic_val/accuracy",
    "mode": "max",
    "scheduler": "{name: asha, grace_period: 100, reduction_factor: 2}",
    "num_samples": "8",
    "max_concurrent_trials": "2",
    "resources": "{cpu: 1, gpu: 0, workers: 1}",
    "output": "work_dirs/sweeps/lr_loss",
}


def write_sweep(tmp_path, **changes):
    """The issue's example sweep file with `changes` (None drops a key); returns its path."""
    items = {**GOOD, **changes}
    text = "".join(f"{key}: {value}\n" for key, value in items.items() if value is not None)
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    return str(path)


def test_the_issues_example_is_accepted(tmp_path):
    spec = load_sweep(write_sweep(tmp_path))
    assert [(d.key, d.kind, d.args) for d in spec.dims] == [
        ("optim.lr", "loguniform", (0.01, 0.3)),
        ("loss.name", "choice", ("arcface", "cosface", "elastic_arc")),
    ]
    assert spec.config.train.max_steps == 600 and spec.config.eval.every == 100
    assert (spec.metric, spec.mode, spec.num_samples, spec.max_concurrent_trials) == (
        "synthetic_val/accuracy",
        "max",
        8,
        2,
    )
    assert spec.resources == Resources(cpu=1, gpu=0, workers=1)
    assert spec.scheduler == {"name": "asha", "grace_period": 100, "reduction_factor": 2}


@pytest.mark.parametrize(
    "changes, expected",
    [
        (
            {"space": "\n  optim.lrr: {uniform: [0.1, 0.2]}"},
            "space.optim.lrr: unknown config key 'optim.lrr'; did you mean optim.lr ",
        ),
        ({"space": "\n  loss.name: {choice: []}"}, "space.loss.name: choice is empty"),
        ({"space": "\n  optim.lr: {loguniform: [0.3, 0.01]}"}, "low bound 0.3 is above the high bound 0.01"),
        ({"space": "\n  optim.lr: {uniform: [0.2, 0.1]}"}, "low bound 0.2 is above the high bound 0.1"),
        ({"space": "\n  loss.name: {choice: [arcface, cosfase]}"}, "did you mean cosface"),
        ({"space": "\n  model.embedding_size: {uniform: [16, 32]}"}, "uniform draws fractional numbers"),
        ({"space": "\n  optim.lr: {logunifrom: [0.1, 0.2]}"}, "did you mean 'loguniform'"),
        ({"space": "\n  output.dir: {choice: [a, b]}"}, "fr-sweep sets output.dir for each trial"),
        ({"metric": "lfw/accuracy"}, "metric 'lfw/accuracy' is produced by no configured evaluation"),
        ({"metric": "synthetic_val/acuracy"}, "did you mean synthetic_val/accuracy"),
        ({"overrides": "{eval.bins: []}"}, "no eval.bins configured"),
        ({"scheduler": "{name: ashaa}"}, "did you mean 'asha'"),
        ({"scheduler": "{name: asha, grace: 100}"}, "asha has no parameter 'grace'"),
        ({"overrides": "{eval.every: 0}"}, "set eval.every > 0"),
        ({"resources": "{cpu: 1, workers: 0}"}, "resources.workers must be an integer >= 1"),
        ({"resources": "{cpus: 1}"}, "resources.cpus: unknown (did you mean 'cpu'?)"),
        ({"mode": "maximum"}, "mode must be max or min"),
        ({"metric": None}, "metric is missing"),
        ({"searchspace": "{}"}, "unknown sweep key 'searchspace'"),
        ({"base": "configs/nope.py"}, "config file not found"),
        ({"search": "{name: hyperopt}"}, "needs the hyperopt package"),
        ({"search": "{name: random}", "space": "\n  optim.lr: {grid: [0.1]}", "num_samples": "0"}, "num_samples"),
    ],
)
def test_a_bad_sweep_file_is_one_line_naming_the_key(tmp_path, capsys, changes, expected):
    path = write_sweep(tmp_path, **changes)
    with pytest.raises(SweepError) as caught:
        load_sweep(path)
    assert expected in str(caught.value) and "\n" not in str(caught.value)
    assert str(caught.value).startswith(path) or "config file not found" in str(caught.value)
    # The command line prints it as one line and exits with 2, before Ray is imported.
    assert main([path]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fr-sweep: error: ") and err.count("\n") == 1 and expected in err


def test_invalid_yaml_names_the_line(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text("base: x\nspace: {optim.lr: [\n")
    with pytest.raises(SweepError, match=r"sweep.yaml:\d+: not valid YAML"):
        load_sweep(str(path))


def test_resources_the_cluster_cannot_provide():
    two_nodes = [{"CPU": 2.0}, {"CPU": 2.0}]
    check_cluster("s.yaml", Resources(cpu=1, workers=3), {"CPU": 4.0}, two_nodes)  # spread over both nodes
    with pytest.raises(SweepError, match=r"needs 4\.01 CPU \(4 worker\(s\) x 1 \+ the driver\) but the cluster has 4"):
        check_cluster("s.yaml", Resources(cpu=1, workers=4), {"CPU": 4.0}, two_nodes)
    with pytest.raises(SweepError, match="needs 2 GPU"):
        check_cluster("s.yaml", Resources(cpu=1, gpu=1, workers=2), {"CPU": 8.0, "GPU": 1.0}, [{"CPU": 8.0, "GPU": 1}])
    with pytest.raises(SweepError, match="no node has 3 CPU"):
        check_cluster("s.yaml", Resources(cpu=3, workers=1), {"CPU": 4.0}, two_nodes)
    assert DRIVER_CPU < 0.1


def test_space_kinds_become_the_tune_domains(tmp_path):
    """Each kind's Tune domain draws within the sweep file's bounds (randint's high bound included)."""
    from ray import tune

    path = write_sweep(
        tmp_path,
        space=textwrap.indent(
            "\nmodel.embedding_size: {randint: [1, 2]}\noptim.lr: {loguniform: [0.01, 0.3]}\n"
            "optim.momentum: {uniform: [0.5, 0.9]}\nloss.name: {choice: [arcface, cosface]}\n"
            "partial_fc.sample_rate: {grid: [0.5, 1.0]}",
            "  ",
        ),
    )
    domains = {dim.key: dim.to_tune() for dim in load_sweep(path).dims}
    draws = {
        key: [domain.sample() for _ in range(200)] for key, domain in domains.items() if key != "partial_fc.sample_rate"
    }
    assert set(draws["model.embedding_size"]) == {1, 2}
    assert all(0.01 <= v <= 0.3 for v in draws["optim.lr"]) and min(draws["optim.lr"]) < 0.05
    assert all(0.5 <= v <= 0.9 for v in draws["optim.momentum"])
    assert set(draws["loss.name"]) == {"arcface", "cosface"}
    assert domains["partial_fc.sample_rate"] == tune.grid_search([0.5, 1.0])


@pytest.mark.parametrize(
    "space, samples",
    [
        ("\n  optim.lr: {loguniform: [0.01, 0.3]}", 3),
        ("\n  optim.lr: {grid: [0.01, 0.1, 0.3]}\n  loss.name: {grid: [arcface, cosface]}", 2),
        ("\n  optim.lr: {grid: [0.01, 0.1]}\n  loss.name: {choice: [arcface, cosface]}", 4),
    ],
)
def test_total_trials_is_what_tunes_grid_resolution_makes(tmp_path, space, samples):
    from ray.tune.search.variant_generator import generate_variants

    from fr.sweep.space import tune_space

    spec = load_sweep(write_sweep(tmp_path, space=space, num_samples=str(samples), scheduler="{name: fifo}"))
    # Tune resolves the grid into variants, each run num_samples times (BasicVariantGenerator).
    assert spec.total_trials == len(list(generate_variants(tune_space(spec.dims)))) * samples
