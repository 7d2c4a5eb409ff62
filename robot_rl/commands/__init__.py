"""The commands layer: one module per ``robot-rl`` subcommand that has no home in the layers below
(``lake``). Commands sit on top of every layer and nothing imports them (tests/test_layers.py)."""
