"""Moved to `difaug.core.names` (file names are needed below the adapters too); kept as an alias."""

from difaug.core.names import (
    MAX_COMPONENT_BYTES,
    UnsafePathError,
    is_safe_component,
    safe_component,
    safe_join,
)

__all__ = ["MAX_COMPONENT_BYTES", "UnsafePathError", "is_safe_component", "safe_component", "safe_join"]
