"""The record: a study's MLflow experiment and Optuna storage.

- ``writer``: the only code that writes MLflow (``Record``);
- ``vocab``: the record's names (tags, states) shared by the writer and its readers;
- ``store``: where the record lives; ``definition``: one study definition per record;
- ``results``: the record read back as pandas; ``naming``: trial run names;
- ``mlflow_view``: how the MLflow UI opens a study's experiment.
"""
