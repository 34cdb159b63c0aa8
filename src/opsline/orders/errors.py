"""Problems of the orders capability."""

from opsline.platform.http.problems import Conflict, NotFound, Unprocessable


class ProductNotFound(NotFound):
    type_slug = "product-not-found"
    title = "Product not found"


class OrderNotFound(NotFound):
    type_slug = "order-not-found"
    title = "Order not found"


class InsufficientStock(Conflict):
    type_slug = "insufficient-stock"
    title = "Insufficient stock"


class InvalidTransition(Conflict):
    type_slug = "invalid-order-transition"
    title = "Order is not in a state that allows this"


class SkuTaken(Conflict):
    type_slug = "sku-taken"
    title = "SKU already used"


class InvalidOrder(Unprocessable):
    type_slug = "invalid-order"
    title = "Order cannot be placed"


class StockWouldGoNegative(Conflict):
    type_slug = "stock-negative"
    title = "Stock cannot go below zero"


class StockAboveMaximum(Conflict):
    type_slug = "stock-maximum"
    title = "Stock cannot go above its maximum"
