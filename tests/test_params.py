"""TrialConfig.params(): the params a run logs hold only the settings that apply to its model."""

from vaebench.study.config import TrialConfig


def cfg(**model):
    return TrialConfig.model_validate({"model": model})


def test_params_drop_other_model_kinds_settings_and_keep_the_hash():
    mlp, conv = cfg(kind="mlp"), cfg(kind="conv")
    assert "model.hidden" in mlp.params() and "model.channels" not in mlp.params()
    assert "model.channels" in conv.params() and "model.hidden" not in conv.params()
    lin = cfg(kind="linear", likelihood="gaussian", sigma=0.7)
    assert "model.hidden" not in lin.params() and lin.params()["model.sigma"] == 0.7
    assert "model.sigma" not in mlp.params()  # bernoulli: sigma does not apply
    # everything else is flat()'s, and the hash still sees every setting
    dropped = {"model.channels", "model.sigma", "objective.alpha", "objective.gamma", "objective.tc_estimator"}
    assert set(mlp.flat()) - set(mlp.params()) == dropped | {k for k in mlp.flat() if "disentanglement_" in k}
    assert cfg(kind="mlp", channels=[8]).config_hash() != mlp.config_hash()
    assert mlp.config_hash() == TrialConfig.model_validate({"model": {"kind": "mlp"}}).config_hash()


def test_objective_and_disentanglement_settings_only_where_they_apply():
    tc = TrialConfig.model_validate({"objective": {"kind": "beta_tcvae", "gamma": 2.0}})
    assert tc.params()["objective.gamma"] == 2.0 and "objective.tc_estimator" in tc.params()
    dis = TrialConfig.model_validate(
        {"data": {"kind": "dsprites"}, "metrics": {"disentanglement": ["mig"], "disentanglement_preset": "publish"}}
    )
    assert dis.params()["metrics.disentanglement_preset"] == "publish"
    assert "metrics.disentanglement_preset" not in cfg(kind="mlp").params()
