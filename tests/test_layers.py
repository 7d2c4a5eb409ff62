"""The layers only point down: storage (data_lake) -> worlds (sim) -> tasks -> learning (robot_rl)
-> commands (robot_rl.cli, robot_rl.commands). A module imports only from its own layer or lower
ones, anywhere in the file (function-level and TYPE_CHECKING imports included)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("storage", "worlds", "tasks", "learning", "commands")
PACKAGES = {"data_lake": "storage", "sim": "worlds", "tasks": "tasks", "robot_rl": "learning"}
COMMANDS = ("robot_rl.cli", "robot_rl.commands", "robot_rl.__main__")


def layer_of(module: str) -> str | None:
    """The layer of a dotted module name of ours (None for third-party modules)."""
    if any(module == c or module.startswith(c + ".") for c in COMMANDS):
        return "commands"
    return PACKAGES.get(module.split(".")[0])


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in the file; relative imports resolved."""
    out: list[tuple[int, str]] = []
    package = module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else module_name(path)
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            out += [(node.lineno, f"{base}.{a.name}" if layer_of(f"{base}.{a.name}") else base) for a in node.names]
    return out


def violations() -> list[str]:
    found = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            own = layer_of(module_name(path))
            assert own is not None
            for line, target in imports(path):
                theirs = layer_of(target)
                if theirs is not None and LAYERS.index(theirs) > LAYERS.index(own):
                    found.append(f"{path.relative_to(ROOT)}:{line} ({own}) imports {target} ({theirs})")
    return found


def test_no_module_imports_a_higher_layer() -> None:
    bad = violations()
    assert not bad, "imports that climb a layer:\n" + "\n".join(bad)


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    """The checker itself: a function-level import of a higher layer in a lower one is caught."""
    probe = ROOT / "data_lake" / "_layer_probe_test.py"
    probe.write_text("def f():\n    from tasks import get\n    import robot_rl.cli\n    from . import lake\n")
    try:
        bad = [v for v in violations() if "_layer_probe_test" in v]
    finally:
        probe.unlink()
    assert bad == [
        "data_lake/_layer_probe_test.py:2 (storage) imports tasks.get (tasks)",
        "data_lake/_layer_probe_test.py:3 (storage) imports robot_rl.cli (commands)",
    ]
