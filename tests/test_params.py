"""TrialConfig.params(): the params a run logs hold only the settings that apply to its model."""

from vaebench.config import TrialConfig


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
    assert set(mlp.flat()) - set(mlp.params()) == {"model.channels", "model.sigma"}
    assert cfg(kind="mlp", channels=[8]).config_hash() != mlp.config_hash()
    assert mlp.config_hash() == TrialConfig.model_validate({"model": {"kind": "mlp"}}).config_hash()
