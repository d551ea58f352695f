"""What a run records about itself besides its results: where it ran (environment.json) and what data it
was trained on (stored in every checkpoint)."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

import torch

from bogc_cli import __version__
from bogc_cli.engine.setup import RunParts


def _git_commit() -> str | None:
    """The commit of the bogc checkout running, when it is one."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: torch.device) -> dict:
    """environment.json: versions of bogc (and its git commit), torch and Python, the platform, the device
    (its name on CUDA) and torch's thread count."""
    env = {"bogc": __version__, "git_commit": _git_commit(), "torch": torch.__version__,
           "python": platform.python_version(), "platform": platform.platform(), "device": str(device),
           "threads": torch.get_num_threads()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def data_info(parts: RunParts) -> dict:
    """The data's class names and modality specs, as every checkpoint stores them (to rebuild the model)."""
    return {"classes": parts.data.classes,
            "modalities": {m: vars(s) for m, s in parts.data.modalities.items()}}
