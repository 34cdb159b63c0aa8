"""Resources that bulk actions may target, declared by each capability (see ``_registry``)."""

from opsline.platform.resources._fields import Field, FieldKind
from opsline.platform.resources._registry import (
    BUILTIN_ACTIONS,
    CustomAction,
    PolicyCheck,
    RecordPolicy,
    Resource,
    all_resources,
    find_resource,
    register_resource,
    unregister_resource,
)

__all__ = [
    "BUILTIN_ACTIONS",
    "CustomAction",
    "Field",
    "FieldKind",
    "PolicyCheck",
    "RecordPolicy",
    "Resource",
    "all_resources",
    "find_resource",
    "register_resource",
    "unregister_resource",
]
