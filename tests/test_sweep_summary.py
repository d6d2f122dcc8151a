"""The small things a sweep says: the end-of-sweep line with model-steps/s (steps counted from
the trials' train/steps, checked against the data's size), a TTY counter of whole finished
trials, `vaebench --version`, and a Ray authentication failure named as such."""

import io
import math
from collections import Counter

from rich.console import Console
from typer.testing import CliRunner

from vaebench import __version__
from vaebench.cli import app
from vaebench.data import load_data
from vaebench.study.spec import expand, load_study
from vaebench.sweep.driver import SweepOptions, run_sweep
from vaebench.sweep.executors import connect_message
from vaebench.sweep.progress import Progress

STUDY = """\
name: steps
data: {kind: ppca, n_samples: 400}
model: {kind: mlp, latent_dim: 2, hidden: [8], likelihood: gaussian}
train: {epochs: 3, batch_size: 64}
metrics: {iw_samples: 2, iw_examples: 50}
space:
  objective.beta: [0.5, 2.0]
seeds: [0, 1]
"""


def test_end_of_sweep_counts_model_steps(tmp_path):
    path = tmp_path / "steps.yaml"
    path.write_text(STUDY)
    study = load_study(path)
    cfg = expand(study)[0].config
    n_train = len(load_data(cfg.data, cfg.data_seed).train)
    per_trial = study.train.epochs * math.ceil(n_train / study.train.batch_size)
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    s = run_sweep(study, STUDY, SweepOptions(tracking_uri=uri, inline=True))
    assert s.counts["completed"] == 4 and s.model_steps == 4 * per_trial
    assert s.seconds > 0 and f"{4 * per_trial:,} model-steps in" in s.throughput
    assert f"{s.model_steps / s.seconds:,.0f} model-steps/s" in s.throughput
    again = run_sweep(study, STUDY, SweepOptions(tracking_uri=uri, inline=True))  # nothing left to train
    assert again.model_steps == 0 and again.throughput == ""
    res = CliRunner().invoke(app, ["sweep", str(path), "--inline", "--tracking-uri", f"sqlite:///{tmp_path / 'n.db'}"])
    assert res.exit_code == 0, res.output
    assert f"{4 * per_trial:,} model-steps in" in res.output and "model-steps/s" in res.output


def test_tty_counter_counts_whole_trials():
    buf = io.StringIO()
    p = Progress(console=Console(file=buf, force_terminal=True, width=200))
    p.start("s", 10, Counter())
    p.update(Counter(completed=3), running=2, partial=1.6)  # two trials 80% through their epochs
    p.live.refresh()
    p.stop(Counter(completed=3))
    text = buf.getvalue()
    assert "3/10" in text and "4/10" not in text and "4.6" not in text  # the bar moves, the counter waits


def test_version():
    res = CliRunner().invoke(app, ["--version"])
    assert res.exit_code == 0 and res.output.strip() == f"vaebench {__version__}"


def test_auth_failure_is_named():
    """Ray 2.60 raises 'Failed to connect' and logs the reason from its core (the lines below are
    the ones a client without the token gets from a vaebench-started cluster)."""
    log = (
        "[2026-12-07 23:41:31,667 W 10540 10540] gcs_client.cc:210: Failed to get cluster ID from GCS server: "
        "Unauthenticated: RPC error: InvalidAuthToken: Authentication token is missing or incorrect\n"
    ) * 3
    failed = ConnectionError("Failed to connect to Ray cluster at 10.0.0.5:6379")
    auth = connect_message("10.0.0.5:6379", failed, log)
    assert "refused this client's authentication" in auth and "RAY_AUTH_MODE=token" in auth
    assert "InvalidAuthToken: Authentication token is missing or incorrect" in auth
    assert "at 10.0.0.5:6379" in auth
    other = connect_message("10.0.0.5:6379", ConnectionError("Connection refused"))
    assert other.startswith("cannot start or reach Ray at 10.0.0.5:6379") and "authentication" not in other
