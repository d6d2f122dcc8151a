"""Study files: validation errors (exit 2, the file, the field, nothing written), expansion."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from vaebench.cli import app
from vaebench.study.spec import expand, load_study

STUDIES = Path(__file__).resolve().parent.parent / "studies"

GOOD = """\
name: tiny
data: {kind: digits}
model: {kind: mlp, latent_dim: 4, hidden: [16]}
train: {epochs: 1}
space:
  objective.beta: [0.5, 2.0]
seeds: [0, 1]
"""

# (case, study text, fragments the message must contain)
BAD = [
    ("syntax", "name: x\nspace: {objective.beta: [1, 2\n", ["not valid YAML", "line"]),
    ("unknown_top_key", GOOD + "epochz: 3\n", ["epochz", "unknown key", "(line 8)"]),
    (
        "unknown_nested_key",
        GOOD.replace("latent_dim: 4", "latnt_dim: 4"),
        ["model.latnt_dim", "unknown key", "(line 3)"],
    ),
    ("wrong_type", GOOD.replace("epochs: 1", "epochs: many"), ["train.epochs", "integer", "(line 4)"]),
    ("empty_space", GOOD.replace("space:\n  objective.beta: [0.5, 2.0]\n", "space: {}\n"), ["space", "empty"]),
    ("empty_levels", GOOD.replace("[0.5, 2.0]", "[]"), ["space.objective.beta", "no levels"]),
    (
        "bad_dotted_path",
        GOOD.replace("objective.beta:", "model.latnt_dim:"),
        ["space.model.latnt_dim", "names no setting", "model.latent_dim"],
    ),
    ("negative_beta", GOOD + "objective: {beta: -1.0}\n", ["objective.beta", "greater than or equal to 0"]),
    (
        "negative_beta_level",
        GOOD.replace("[0.5, 2.0]", "[0.5, -2.0]"),
        ["space.objective.beta", "-2.0", "greater than or equal to 0"],
    ),
    (
        "negative_free_bits",
        GOOD + "objective: {free_bits: -0.1}\n",
        ["objective.free_bits", "greater than or equal to 0"],
    ),
    ("latent_zero", GOOD.replace("latent_dim: 4", "latent_dim: 0"), ["model.latent_dim", "greater than or equal to 1"]),
    (
        "unknown_likelihood",
        GOOD.replace("hidden: [16]", "hidden: [16], likelihood: poisson"),
        ["model.likelihood", "poisson", "bernoulli"],
    ),
    (
        "missing_data_file",
        GOOD.replace("{kind: digits}", "{kind: idx, train_images: /nonexistent/train-images.gz}"),
        ["data.train_images", "no such file", "/nonexistent/train-images.gz"],
    ),
    ("range_in_grid", GOOD.replace("[0.5, 2.0]", "{low: 0.5, high: 2.0}"), ["space.objective.beta", "range", "grid"]),
    ("pruner_on_grid", GOOD + "search: {kind: grid, pruner: median}\n", ["search", "pruner"]),
    ("search_without_budget", GOOD + "search: {kind: tpe}\n", ["search", "budget"]),
    ("nsga2_one_objective", GOOD + "search: {kind: nsga2, budget: 4}\n", ["nsga2", "two"]),
    (
        "unknown_objective",
        GOOD + "search: {kind: tpe, budget: 4, objectives: {val/elbow: max}}\n",
        ["val/elbow", "allowed"],
    ),
    (
        "bad_anneal",
        GOOD.replace("[0.5, 2.0]", "[0.5]") + "objective: {anneal: cosine}\n",
        ["objective.anneal", "cosine"],
    ),
    ("not_a_mapping", "- just\n- a list\n", ["mapping"]),
    (
        "bad_iw_every",
        GOOD + "metrics: {iw_every: first}\n",
        ["metrics.iw_every", "'first'", "last", "number of epochs"],
    ),
    (
        "pruner_without_iw_nll_during_training",
        GOOD
        + "metrics: {iw_every: last}\nsearch: {kind: tpe, budget: 4, objectives: {val/iw_nll: min}, pruner: median}\n",
        ["(line 8)", "metrics.iw_every", "pruner median", "val/iw_nll", "at the last epoch only"],
    ),
    (
        "pruner_without_dis_metric_during_training",
        GOOD.replace("{kind: digits}", "{kind: dsprites}")
        + "metrics: {disentanglement: [mig]}\nsearch: {kind: tpe, budget: 4, objectives: {val/dis/mig: max}, "
        "pruner: median}\n",
        ["metrics.disentanglement_every", "pruner median", "val/dis/mig", "a number of epochs"],
    ),
]


@pytest.mark.parametrize("case,text,fragments", BAD, ids=[b[0] for b in BAD])
@pytest.mark.parametrize("command", ["validate", "sweep"])
def test_bad_study_exits_2_and_writes_nothing(tmp_path, monkeypatch, case, text, fragments, command):
    monkeypatch.chdir(tmp_path)
    study = tmp_path / f"{case}.yaml"
    study.write_text(text)
    db = tmp_path / "store" / "mlflow.db"
    args = [command, str(study)] + (["--tracking-uri", f"sqlite:///{db}"] if command == "sweep" else [])
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())  # rich wraps long lines
    assert f"{case}.yaml" in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == [study.name]  # no sweeps/, no store


def test_missing_study_file(tmp_path):
    result = CliRunner().invoke(app, ["validate", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2 and "no such study file" in result.output


@pytest.mark.parametrize("name", ["quick", "collapse", "search", "pareto"])
def test_shipped_studies_validate(name):
    result = CliRunner().invoke(app, ["validate", str(STUDIES / f"{name}.yaml")])
    assert result.exit_code == 0, result.output


def test_collapse_grid_size():
    study = load_study(STUDIES / "collapse.yaml")
    specs = expand(study)
    assert len(specs) == 2 * 3 * 3 * 2 * 3
    assert len({s.config_hash for s in specs}) == len(specs)
    # every level of every factor appears in the expanded configs, with the seeds
    betas = {s.config.objective.beta for s in specs}
    assert betas == {0.5, 2.0, 8.0}
    assert {s.config.objective.anneal.kind for s in specs} == {"none", "linear", "cyclical"}
    assert {s.seed for s in specs} == {0, 1, 2}
    assert all(s.config.train.threads == 1 for s in specs)


def test_set_overrides(tmp_path):
    study = tmp_path / "s.yaml"
    study.write_text(GOOD)
    s = load_study(study, ["train.epochs=7", "model.hidden=[8, 8]", "seeds=[3]"])
    assert s.train.epochs == 7 and s.model.hidden == [8, 8] and s.seeds == [3]
    result = CliRunner().invoke(app, ["validate", str(study), "--set", "train.epochs=zero"])
    assert result.exit_code == 2 and "train.epochs" in result.output


def test_mapping_levels_and_shorthand(tmp_path):
    study = tmp_path / "s.yaml"
    study.write_text(
        GOOD.replace("objective.beta: [0.5, 2.0]", "objective.anneal: [none, {kind: cyclical, cycles: 2, ratio: 0.25}]")
    )
    specs = expand(load_study(study))
    anneals = [s.config.objective.anneal for s in specs]
    assert anneals[0].kind == "none" and anneals[-1].kind == "cyclical" and anneals[-1].cycles == 2
