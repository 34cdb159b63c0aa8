"""Permissions of the orders capability, registered with the platform."""

from opsline.platform.auth.roles import Role, register_permission

PRODUCTS_READ = register_permission("products.read", "See products and stock", min_role=Role.VIEWER)
PRODUCTS_WRITE = register_permission(
    "products.write", "Create, edit and archive products", min_role=Role.MANAGER
)
STOCK_ADJUST = register_permission(
    "stock.adjust", "Adjust stock with a reason", min_role=Role.MANAGER
)
ORDERS_CREATE = register_permission("orders.create", "Place orders", min_role=Role.MEMBER)
ORDERS_READ = register_permission("orders.read", "See one's own orders", min_role=Role.VIEWER)
ORDERS_READ_ALL = register_permission(
    "orders.read_all", "See every order of the tenant", min_role=Role.MANAGER
)
ORDERS_CANCEL_ANY = register_permission(
    "orders.cancel_any", "Cancel any pending order of the tenant", min_role=Role.MANAGER
)
