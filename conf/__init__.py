"""Installed as the package ``runner.conf`` (see pyproject.toml), so Hydra finds these configs by import."""
