"""Trial run names: short, and distinct in the 20 characters the MLflow UI shows."""

from pathlib import Path

from vaebench.record.naming import abbreviations, level_text, run_name
from vaebench.study.spec import expand, load_study

STUDIES = Path(__file__).parent.parent / "studies"


def test_collapse_names_are_short_and_distinct_in_20_characters():
    st = load_study(STUDIES / "collapse.yaml")
    specs = expand(st)
    names = [run_name(s, st.space) for s in specs]
    assert len(specs) == 108 and all(len(n) <= 20 for n in names)
    assert len({n[:20] for n in names}) == 108
    first = next(
        s
        for s in specs
        if s.point["model.latent_dim"] == 32
        and s.point["objective.beta"] == 0.5
        and s.point["objective.free_bits"] == 0.25
        and s.seed == 2
        and s.point["objective.anneal"] == {"kind": "cyclical", "cycles": 4, "ratio": 0.5}
    )
    assert run_name(first, st.space) == "s2 l32 b.5 cyc f.25"
    assert run_name(first) == "#" + first.point_key[:4] + " s2 l32 b.5 cyc4,.5 f.25"  # without the space: in full


def test_every_shipped_grid_study_is_distinct_in_20_characters():
    for path in STUDIES.glob("*.yaml"):
        st = load_study(path)
        if st.search.kind != "grid":
            continue
        names = [run_name(s, st.space)[:20] for s in expand(st)]
        assert len(set(names)) == len(names), path.name


def test_long_names_start_with_the_point_key():
    class Spec:
        point = {
            "model.latent_dim": 32,
            "objective.beta": 0.25,
            "objective.free_bits": 0.5,
            "train.lr": 0.001,
            "model.hidden": [512, 256],
            "train.optimizer": "adamw",
        }
        seed = 11
        point_key = "3f2a9c0d1e2b"

    name = run_name(Spec)
    assert name.startswith("#3f2a s11 ") and len(name) > 20


def test_abbreviations_and_levels():
    assert abbreviations(["model.latent_dim", "train.lr", "objective.beta"]) == {
        "model.latent_dim": "ld",
        "train.lr": "lr",
        "objective.beta": "b",
    }
    assert abbreviations(["model.kind", "data.kind"]) == {"model.kind": "model.kind", "data.kind": "data.kind"}
    assert level_text({"kind": "cyclical", "cycles": 2, "ratio": 0.5}, {"cyclical": 2}) == "cyc2,.5"
    assert level_text(0.25) == ".25" and level_text(1e-5) == "1e-05" and level_text(8.0) == "8"
    assert level_text("linear") == "lin" and level_text("none") == "none" and level_text([256, 128]) == "256-128"
