"""The study: what a user asks for, validated before anything runs.

- ``config``: one trial's settings (pydantic, unknown keys refused);
- ``spec``: the study file's schema, its factors and the trials it implies (``load_study``, ``expand``);
- ``yaml_input``: bounded YAML reading (size, aliases, duplicate keys).
"""
