"""HTTP endpoints of products and orders."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from opsline.orders import service
from opsline.orders._state import OrderStatus
from opsline.orders.permissions import (
    ORDERS_CREATE,
    ORDERS_READ,
    PRODUCTS_READ,
    PRODUCTS_WRITE,
    STOCK_ADJUST,
)
from opsline.orders.schemas import (
    CancelIn,
    OrderIn,
    OrderOut,
    ProductIn,
    ProductOut,
    ProductPatch,
    StockAdjustmentIn,
)
from opsline.platform.context import Context
from opsline.platform.http.db_work import run_write
from opsline.platform.http.deps import PendingContext, PendingPermission, RequirePermission
from opsline.platform.http.inputs import OneLine, UtcDatetime, check_window
from opsline.platform.http.pagination import Page, PageDep
from opsline.platform.http.routing import Route
from opsline.platform.idempotency.http import key_header, outcome_response
from opsline.platform.idempotency.service import check_key

router = APIRouter(route_class=Route)

ProductsRead = Annotated[Context, RequirePermission(PRODUCTS_READ.name)]
ProductsWrite = Annotated[Context, RequirePermission(PRODUCTS_WRITE.name)]
OrdersRead = Annotated[Context, RequirePermission(ORDERS_READ.name)]
IdempotencyKeyHeader = Annotated[
    str | None,
    key_header("Unique per intended order; the same key and body replay the first answer"),
]


@router.post(
    "/products",
    status_code=status.HTTP_201_CREATED,
    response_model=ProductOut,
    tags=["products"],
    summary="Create a product",
)
def create_product(body: ProductIn, ctx: ProductsWrite) -> ProductOut:
    return ProductOut.model_validate(service.create_product(ctx, body))


@router.get("/products", response_model=Page[ProductOut], tags=["products"])
def list_products(
    ctx: ProductsRead,
    page: PageDep,
    include_archived: bool = False,
    sku: Annotated[OneLine | None, Query(max_length=64)] = None,
) -> Page[ProductOut]:
    result = service.list_products(
        ctx, cursor=page.cursor, limit=page.limit, include_archived=include_archived, sku=sku
    )
    return Page(
        items=[ProductOut.model_validate(p) for p in result.items], next_cursor=result.next_cursor
    )


@router.get("/products/{product_id}", response_model=ProductOut, tags=["products"])
def get_product(product_id: uuid.UUID, ctx: ProductsRead) -> ProductOut:
    return ProductOut.model_validate(service.get_product(ctx, product_id))


@router.patch(
    "/products/{product_id}",
    response_model=ProductOut,
    tags=["products"],
    summary="Change name, price or currency (stock changes go through stock adjustments)",
)
def update_product(product_id: uuid.UUID, body: ProductPatch, ctx: ProductsWrite) -> ProductOut:
    return ProductOut.model_validate(service.update_product(ctx, product_id, body))


@router.delete("/products/{product_id}", response_model=ProductOut, tags=["products"])
def archive_product(product_id: uuid.UUID, ctx: ProductsWrite) -> ProductOut:
    """Archive: the product can no longer be ordered; past orders keep their lines."""
    return ProductOut.model_validate(service.archive_product(ctx, product_id))


@router.post(
    "/products/{product_id}/stock-adjustments",
    response_model=ProductOut,
    tags=["products"],
    summary="Add or remove stock with a reason (publishes StockAdjusted)",
)
def adjust_stock(
    product_id: uuid.UUID,
    body: StockAdjustmentIn,
    ctx: Annotated[Context, RequirePermission(STOCK_ADJUST.name)],
) -> ProductOut:
    product = service.adjust_stock(ctx, product_id, delta=body.delta, reason=body.reason)
    return ProductOut.model_validate(product)


@router.post(
    "/orders",
    status_code=status.HTTP_201_CREATED,
    response_model=OrderOut,
    tags=["orders"],
    summary="Place an order: stock is taken at once, payment runs in the background",
    responses={
        400: {"description": "Idempotency-Key missing or malformed"},
        409: {"description": "Not enough stock (each short product named), or key in flight"},
        422: {"description": "Invalid items, or the key was used with another body"},
    },
)
async def place_order(
    body: OrderIn,
    who: Annotated[PendingContext, PendingPermission(ORDERS_CREATE.name)],
    response: Response,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    key = check_key(idempotency_key, required=who.settings.idempotency_required)
    # Placed on the event loop when it waits on nothing but the database (db_work);
    # the session is checked there, by the order's first read.
    placement = service.OrderPlacement(who, body, idempotency_key=key)
    outcome = await run_write(who.db, placement.attempt)
    return outcome_response(outcome, response)


@router.get("/orders", response_model=Page[OrderOut], tags=["orders"])
def list_orders(
    ctx: OrdersRead,
    page: PageDep,
    status_: Annotated[OrderStatus | None, Query(alias="status")] = None,
    created_by: Annotated[
        OneLine | None, Query(max_length=80, description="user:<id> or apikey:<id>")
    ] = None,
    created_from: Annotated[
        UtcDatetime | None, Query(description="From this time on (with an offset, e.g. Z)")
    ] = None,
    created_to: Annotated[
        UtcDatetime | None, Query(description="Before this time (exclusive; with an offset)")
    ] = None,
) -> Page[OrderOut]:
    """Members see their own orders; managers and above see the tenant's."""
    check_window(created_from, created_to, names=("created_from", "created_to"))
    return service.list_orders(
        ctx,
        cursor=page.cursor,
        limit=page.limit,
        status=status_,
        created_by=created_by,
        created_from=created_from,
        created_to=created_to,
    )


@router.get("/orders/{order_id}", response_model=OrderOut, tags=["orders"])
def get_order(order_id: uuid.UUID, ctx: OrdersRead) -> OrderOut:
    return service.get_order(ctx, order_id)


@router.post(
    "/orders/{order_id}/cancel",
    response_model=OrderOut,
    tags=["orders"],
    summary="Cancel a pending order (its stock is restored once)",
    responses={409: {"description": "The order is past PENDING; the body names its state"}},
)
def cancel_order(
    order_id: uuid.UUID,
    ctx: Annotated[Context, RequirePermission(ORDERS_CREATE.name)],
    body: CancelIn | None = None,
) -> OrderOut:
    order, _changed = service.cancel_order(ctx, order_id, reason=body.reason if body else None)
    return order
