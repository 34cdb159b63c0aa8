"""The HTTP floor of shared/PEERS.md: a bare FastAPI endpoint doing one database insert.

Same server settings as Opsline's (uvicorn, one process, httptools when installed,
the event loop ``opsline serve`` would run: ``Settings.server_event_loop``) and the
same database engine set-up (``opsline.db.Database``: WAL, synchronous,
BEGIN IMMEDIATE on SQLite). Two endpoints, as Opsline runs its own: ``/insert`` is
a sync endpoint (the thread pool), ``/insert-inline`` an async one that inserts on
the event loop as Opsline places orders: inline on SQLite, its statement awaited
on PostgreSQL (``Database.on_loop``).
Run: ``python -m bench._floor_app PORT`` with the OPSLINE_* database variables; with
``OPSLINE_SERVER_PROCESSES`` above one in as many processes, as ``opsline serve --processes``.
"""

from __future__ import annotations

import sys
import uuid

import uvicorn
from fastapi import FastAPI
from sqlalchemy import Column, MetaData, String, Table, Uuid, insert

from opsline.db import Database
from opsline.settings import Settings, load_settings

metadata = MetaData()
rows = Table(
    "bench_floor_rows", metadata, Column("id", Uuid, primary_key=True), Column("body", String(200))
)


def build(settings: Settings) -> FastAPI:
    db = Database(settings)
    metadata.create_all(db.engine)
    app = FastAPI()

    @app.get("/health/ready")
    def ready() -> dict[str, str]:
        return {"status": "ok"}

    def write(body: dict[str, object]) -> dict[str, str]:
        row_id = uuid.uuid4()
        with db.unit_of_work() as uow:
            uow.session.execute(insert(rows).values(id=row_id, body=str(body)[:200]))
        return {"id": str(row_id)}

    @app.post("/insert", status_code=201)
    def insert_one(body: dict[str, object]) -> dict[str, str]:
        return write(body)

    @app.post("/insert-inline", status_code=201)
    async def insert_inline(body: dict[str, object]) -> dict[str, str]:
        if not db.is_sqlite:
            return await db.on_loop(write, body)
        return write(body)

    return app


def from_env() -> FastAPI:
    """The app of one of several processes (``OPSLINE_SERVER_PROCESSES``), as uvicorn's factory."""
    return build(load_settings())


if __name__ == "__main__":
    settings = load_settings()
    several = settings.server_processes > 1
    if several:  # the table made once, before the processes look for it at once
        made = Database(settings)
        metadata.create_all(made.engine)
        made.dispose()
    uvicorn.run(
        "bench._floor_app:from_env" if several else build(settings),
        factory=several,
        workers=settings.server_processes,
        timeout_worker_healthcheck=60,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        loop=settings.server_event_loop,
        log_level="warning",
        access_log=False,
    )
