"""The package version, in the lowest layer so every layer can name it (commit metadata, collection
runs, ``robot-rl --version``). It equals ``[project] version`` in ``pyproject.toml`` (a test checks)."""

__version__ = "0.1.0"
