"""robot-rl: from robot logs to goal-reaching skills (a versioned episode lake, offline
pretraining, online finetuning)."""

from data_lake.version import __version__

__all__ = ["__version__"]
