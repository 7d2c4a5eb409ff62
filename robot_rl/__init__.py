"""robot-rl: from robot logs to goal-reaching skills (a versioned episode lake, offline
pretraining, online finetuning)."""

__version__ = "0.1.0"
