"""An example vaebench plugin package: see pyproject.toml's entry points and docs/plugins.md."""
