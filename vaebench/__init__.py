"""vaebench: hyperparameter sweeps and ablation studies of Variational Autoencoders.

Public API (small and typed, in the manner of Optuna):

- ``TrialConfig`` and its sections (``vaebench.study.config``): one trial's settings.
- ``train(cfg)``: the training loop, yielding an ``EpochReport`` per epoch.
- ``load_study(path)``: a validated ``Study`` from a YAML file.
- ``trials_frame(study)`` / ``histories_frame(study)``: a study's MLflow record as pandas.
"""

from vaebench.study.config import TrialConfig

__version__ = "0.1.0"

__all__ = ["TrialConfig", "__version__"]
