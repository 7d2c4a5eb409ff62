"""Write ``configs/algo/<name>.yaml`` for every algorithm in ALGOS: every config field with its default
(so each can be overridden as ``algo.<field>=...``). Run after adding an algorithm or a config field:

    .venv/bin/python -m robot_rl.algo_configs [NAME ...]

``tests/test_pretrain.py`` checks every file lists exactly its dataclass fields.
"""

from __future__ import annotations

import sys

import yaml

from robot_rl.algos import ALGOS
from robot_rl.hydra_utils import CONFIG_DIR, dataclass_defaults

OVERRIDES = {"cql": {"backup_entropy": False, "alpha_init": 0.1}}
NOTES = {
    "cql": "backup_entropy false, alpha_init 0.1: with sparse 0/1 rewards an entropy bonus in the backup dominates Q"
}


def main(names: list[str]) -> None:
    only = set(names)
    for name, cls in ALGOS.items():
        if only and name not in only:
            continue
        d = {k: v for k, v in dataclass_defaults(cls.config_class).items() if k != "seed"}
        d.update(OVERRIDES.get(name, {}))
        doc = ((cls.__module__ and sys.modules[cls.__module__].__doc__) or "").strip().splitlines()[0]
        source = cls.__module__.replace(".", "/") + ".py"
        head = f"# @package algo\n# {doc}\n# Every field of {cls.config_class.__name__} ({source}); seed: top level\n"
        if name in NOTES:
            head += f"# Differs from the dataclass defaults: {NOTES[name]}.\n"
        (CONFIG_DIR / "algo" / f"{name}.yaml").write_text(head + yaml.safe_dump({"name": name, **d}, sort_keys=False))
        print("wrote", name)


if __name__ == "__main__":
    main(sys.argv[1:])
