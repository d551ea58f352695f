"""The optional extra ``pretrained`` (``pip install -e ".[pretrained]"``): timm and transformers.

They are optional because most runs never use them (every audio-visual, feature and medical benchmark
trains from scratch) and together they bring a dozen packages (transformers, tokenizers, safetensors,
huggingface_hub, regex, ...). Asking for one that is missing is one ``UserError`` that names the setting
that asked and the install command. Both are imported with the Hugging Face hub offline
(``HF_HUB_OFFLINE=1``): bogc reads pretrained models from local files only and never downloads.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

from bogc_cli.errors import UserError

EXTRA = "pretrained"
INSTALL = 'pip install -e ".[pretrained]"'


def require(module: str, why: str) -> ModuleType:
    """Import ``module`` (``timm``, ``transformers``) for ``why`` (the setting that needs it), hub offline.

    Raises ``UserError`` naming ``why`` and the install command when it is not installed."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # local files only: never a download at run time
    try:
        loaded = importlib.import_module(module)
    except ImportError:
        raise UserError(f"{why} needs the Python package {module!r}, which is not installed: install bogc's "
                        f"optional extra with `{INSTALL}` (or `pip install {module}`)") from None
    if module == "transformers":
        loaded.utils.logging.set_verbosity_error()  # its load reports and progress bars: bogc reports itself
        loaded.utils.logging.disable_progress_bar()
    return loaded


__all__ = ["EXTRA", "INSTALL", "require"]
