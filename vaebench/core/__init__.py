"""The trial's math: models, objectives, the training loop and the metrics. Pure compute:
nothing here imports Ray, MLflow or Optuna, so a trial runs where only torch is installed.
"""
