"""Hub references: the one rule telling a Hugging Face hub repo id from a local path.

Every weight a job names (base model, ControlNet, HED, LCM-LoRA) may be either; the loaders, the
driver's up-front check and the HED resolver all ask `looks_local`, so a name is judged the same
way everywhere.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

# `org/name`, as hub repo ids of SD weights are written (single-segment legacy ids are not used for
# any model difaug loads); characters as the hub allows them.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# A name ending like a weights file is a file the user means, never a repo id.
_FILE_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt")


def looks_local(ref: str) -> bool:
    """A path rather than a hub id: it exists, or it cannot be a hub id (absolute, ./, ~, no or
    several slashes, a weights-file suffix)."""
    if Path(ref).expanduser().exists():
        return True
    return not _HUB_ID.match(ref) or ref.lower().endswith(_FILE_SUFFIXES)


def hub_offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub reads it, but at call time (its constant is read at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
