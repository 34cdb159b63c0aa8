"""Permissions of bulk actions; each action also needs its resource's own permission."""

from opsline.platform.auth.roles import Role, register_permission

BULK_RUN = register_permission(
    "bulk.run",
    "Preview, run, follow, cancel, undo and export bulk actions (plus the resource's permission)",
    min_role=Role.MEMBER,
)
