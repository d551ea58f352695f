"""Reading a pretrained weights file and loading it into a model, with one clear error for every way it can
fail: missing, not a file, a Git LFS pointer, not a state dict, or the weights of another architecture
(keys missing or unexpected, tensors of another shape).

A weights file is what ``torch.save(model.state_dict(), PATH)`` writes (``.pt``, ``.pth``, ``.bin``; read
with ``torch.load(weights_only=True)``, so a file cannot run code), or a ``.safetensors`` file. A state
dict wrapped in a training checkpoint (``{"state_dict": ...}``, ``{"model": ...}``) and keys prefixed by
``module.`` (``DataParallel``) are unwrapped, as timm's ``load_state_dict`` does.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from torch import nn

from bogc_cli.data.lfs import POINTER_REASON, is_lfs_pointer
from bogc_cli.engine.checkpoint import file_sha256  # sha256 (hex) of a file, for environment.json
from bogc_cli.errors import UserError

WRAPPERS = ("state_dict", "model_state_dict", "model", "module")


def _read_errors() -> tuple[type[BaseException], ...]:
    """What reading an unreadable weights file raises: torch.load's errors, and safetensors' own
    ``SafetensorError`` (no subclass of the others) when safetensors is installed."""
    errors: tuple[type[BaseException], ...] = (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError,
                                               AttributeError, KeyError, TypeError)
    try:
        from safetensors import SafetensorError
    except ImportError:
        return errors
    return (*errors, SafetensorError)


#: Every exception an unreadable (corrupt, truncated, empty, foreign) weights file raises when read.
READ_ERRORS = _read_errors()
SHOWN = 3  # keys quoted per kind of mismatch


def read_state_dict(path: str | Path, what: str, expected: str) -> dict[str, torch.Tensor]:
    """The tensors of the weights file ``path`` by name. ``what``: the setting that named it (for messages);
    ``expected``: what the file should hold, in words (``torchvision resnet18 weights``)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{what}: weights file {path} does not exist: give the path of a file with {expected} "
                        "(torch.save(model.state_dict(), PATH)); nothing is downloaded")
    if not path.is_file():
        raise UserError(f"{what}: {path} is a folder, not a weights file: give the file with {expected}")
    refuse_lfs_pointer(path, what)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except ImportError:
        raise UserError(f"{what}: reading {path} needs the package safetensors: pip install safetensors") from None
    except READ_ERRORS as exc:
        raise UserError(f"{what}: {path} is not a readable weights file ({type(exc).__name__}: "
                        f"{_first_line(exc)}); expected {expected}, saved with torch.save(model.state_dict(), PATH) "
                        "or as .safetensors") from None
    return _unwrap(obj, path, what, expected)


def refuse_lfs_pointer(path: Path, what: str) -> None:
    """``UserError`` naming the setting ``what`` and ``path`` when the file is a Git LFS pointer, not weights."""
    if is_lfs_pointer(path):
        raise UserError(f"{what}: {path} is a {POINTER_REASON}")


def _unwrap(obj, path: Path, what: str, expected: str) -> dict[str, torch.Tensor]:
    for key in WRAPPERS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict) and not isinstance(obj.get(key), torch.Tensor):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        held = type(obj).__name__ if not isinstance(obj, dict) else \
            f"a dict of {', '.join(sorted({type(v).__name__ for v in obj.values()})) or 'nothing'}"
        raise UserError(f"{what}: {path} holds {held}, not a state dict (parameter name -> tensor); expected "
                        f"{expected}, saved with torch.save(model.state_dict(), PATH)")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


def adapt_input_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """A first convolution's pretrained weight ``[O, I, kh, kw]`` for ``in_channels`` inputs, by timm's rule
    (``timm.models.adapt_input_conv``): one channel sums the I input channels; other counts repeat them
    and scale by I / in_channels, so a constant input gives the same response."""
    if weight.shape[1] == in_channels:
        return weight
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    repeat = -(-in_channels // weight.shape[1])
    return weight.repeat(1, repeat, 1, 1)[:, :in_channels] * (weight.shape[1] / in_channels)


def load_checked(model: nn.Module, state: dict[str, torch.Tensor], path: Path, what: str, expected: str,
                 ignore: tuple[str, ...] = (), first_conv: str | None = None) -> None:
    """Load ``state`` into ``model`` (strictly) after dropping the keys under the ``ignore`` prefixes (the
    classifier the encoder removes) and adapting ``first_conv``'s weight to the model's input channels.

    Raises ``UserError`` naming ``path``, ``expected`` and a few keys of each mismatch (missing from the file,
    unexpected in it, of another shape) when the file holds weights of another architecture."""
    state = {k: v for k, v in state.items() if not any(k == p or k.startswith(p + ".") for p in ignore)}
    own = model.state_dict()
    if first_conv is not None and first_conv in state and first_conv in own:
        w = state[first_conv]
        if w.dim() == 4 and w.shape[1] != own[first_conv].shape[1]:
            state[first_conv] = adapt_input_conv(w, own[first_conv].shape[1])
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {list(state[k].shape)} in the file, {list(own[k].shape)} in the model"
              for k in own if k in state and state[k].shape != own[k].shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s) ({_some(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s) ({_some(unexpected)})")
    if shapes:
        problems.append(f"{len(shapes)} tensor(s) of another shape ({_some(shapes)})")
    if problems:
        raise UserError(f"{what}: {path} does not hold {expected}: {'; '.join(problems)}. Give a state dict of that "
                        "architecture (torch.save(model.state_dict(), PATH)), or name the architecture the file "
                        "was saved from")
    model.load_state_dict(state, strict=True)


def load_weights_file(model: nn.Module, weights: str | None, load: bool, source: dict, what: str, expected: str,
                      ignore: tuple[str, ...] = (), first_conv: str | None = None) -> None:
    """Fill ``model`` from the file ``weights`` when one is given and ``load`` (``read_state_dict`` then
    ``load_checked``), and note the file in ``source`` (environment.json): its path, and its sha256 once read.
    ``load`` False (a checkpoint will fill the model) reads nothing."""
    if weights is None:
        return
    path = Path(weights)
    source["weights"] = str(path)
    if load:
        load_checked(model, read_state_dict(path, what, expected), path, what, expected, ignore=ignore,
                     first_conv=first_conv)
        source["sha256"] = file_sha256(path)


def _some(keys: list[str]) -> str:
    return ", ".join(keys[:SHOWN]) + (", ..." if len(keys) > SHOWN else "")


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:200]


__all__ = ["READ_ERRORS", "adapt_input_conv", "refuse_lfs_pointer", "file_sha256", "load_checked", "load_weights_file", "read_state_dict"]
