"""Run-directory plumbing shared by ``pretrain`` and ``finetune``: the device, the run directory and
its resume check, git provenance, TensorBoard/JSONL/CSV logging, bf16 autocast, and the throughput
meter behind the progress bar."""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import torch


class RunConfig(Protocol):
    """What the run-directory helpers read from a pretrain or finetune config."""

    @property
    def algo(self) -> str: ...
    @property
    def run_dir(self) -> str | None: ...
    @property
    def resume(self) -> bool: ...
    @property
    def amp(self) -> bool: ...


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device={name} but CUDA is not available here (torch {torch.__version__}); use device=cpu")
    return torch.device(name)


def git_commit() -> dict[str, Any]:
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, check=True)
        return {"commit": sha.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}


# settings a resumed run may change: they do not shape training
RESUMABLE = {"steps", "online_steps", "resume", "progress", "run_dir", "log_every", "save_every", "eval_every"}
RESUMABLE |= {"eval_episodes"}
RESUMABLE |= {"ope_every", "ope_sigma", "ope_estimators", "ope_episodes", "ope_fqe_steps"}  # OPE forks the RNGs


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    """The settings a resumed run must share with the original (everything that shapes training)."""
    return {k: v for k, v in config.items() if k not in RESUMABLE}


def prepare_run_dir(cfg: RunConfig, resolved: dict[str, Any], kind: str = "pretrain") -> Path:
    """Create the run directory and write ``config.yaml``; with ``resume``, check that the saved
    config matches in every setting that shapes training."""
    import yaml

    run = Path(cfg.run_dir or f"runs/{kind}/{cfg.algo}-{dt.datetime.now():%Y%m%d-%H%M%S}")
    saved = run / "config.yaml"
    if cfg.resume:
        if not (run / "checkpoints" / "latest" / "state.json").exists():
            raise FileNotFoundError(f"resume=true but {run}/checkpoints/latest holds no checkpoint")
        before = yaml.safe_load(saved.read_text())
        if _comparable(before) != _comparable(resolved):
            diff = sorted(k for k in {*before, *resolved} if before.get(k) != resolved.get(k))
            raise ValueError(f"resume=true with settings that differ from {saved}: {diff}")
    elif saved.exists():
        raise FileExistsError(f"{run} already holds a run; pass resume=true to continue it or another run_dir")
    run.mkdir(parents=True, exist_ok=True)
    saved.write_text(yaml.safe_dump(resolved, sort_keys=False))
    return run


def autocast(cfg: RunConfig, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast when ``cfg.amp``; otherwise nothing."""
    if not cfg.amp:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


class Logger:
    """TensorBoard scalars and the evaluation curve (rank 0 only)."""

    def __init__(self, run: Path, enabled: bool):
        self.enabled, self.run = enabled, run
        self.tb = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run / "tb"))

    def scalars(self, values: dict[str, float], step: int) -> None:
        """TensorBoard, and one JSON line per call in ``scalars.jsonl`` (for plots without TensorBoard)."""
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(k, v, step)
            with (self.run / "scalars.jsonl").open("a") as f:
                f.write(json.dumps({"step": step, **{k: float(v) for k, v in values.items()}}) + "\n")

    def eval_row(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        path = self.run / "eval.csv"
        new = not path.exists()
        with path.open("a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(row))
            if new:
                w.writeheader()
            w.writerow(row)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


class Throughput:
    """Seconds per phase and updates per second over the current logging window, and the progress bar."""

    def __init__(self, total: int, initial: int, desc: str, progress: bool):
        from tqdm import tqdm

        self.bar = tqdm(total=total, initial=initial, desc=desc, unit="upd", disable=not progress)
        self.timings: dict[str, float] = {}
        self.start, self.steps = time.perf_counter(), 0

    @contextlib.contextmanager
    def phase(self, key: str) -> Iterator[None]:
        """Time the block into ``key`` (e.g. ``time/sample_s``)."""
        t0 = time.perf_counter()
        yield
        self.timings[key] = self.timings.get(key, 0.0) + time.perf_counter() - t0

    def tick(self) -> None:
        """One update done."""
        self.steps += 1
        self.bar.update(1)

    def window(self, metrics: dict[str, float]) -> dict[str, float]:
        """Mean seconds per phase and updates/s since the last call (shown on the bar); starts a new window."""
        rate = self.steps / max(time.perf_counter() - self.start, 1e-9)
        out = {k: v / max(self.steps, 1) for k, v in self.timings.items()} | {"time/updates_per_s": rate}
        self.bar.set_postfix({"upd/s": f"{rate:.1f}", **{k: f"{v:.3g}" for k, v in list(metrics.items())[:2]}})
        self.restart()
        return out

    def restart(self) -> None:
        """Start a new window (after an evaluation, which is not training time)."""
        self.timings, self.start, self.steps = {}, time.perf_counter(), 0

    def close(self) -> None:
        self.bar.close()
