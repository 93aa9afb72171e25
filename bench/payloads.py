"""The one record shape every benchmark writes: an order of ~200 bytes of JSON,
mapped to seven typed columns (bigint, text, text, numeric, timestamptz, int, text)."""

from __future__ import annotations

import json
from typing import Any

STATUSES = ("paid", "refunded", "pending", "shipped")

COLUMNS: dict[str, str] = {
    "order_id": "data.order_id",
    "customer": "data.customer",
    "status": "data.status",
    "amount": "data.amount",
    "created_at": "data.created_at",
    "items": "data.items",
    "note": "data.note",
}
KEY = ["order_id"]

_NOTE = "deliver to the side door; call ahead; fragile glassware inside"  # 62 chars


def order(i: int) -> dict[str, Any]:
    return {
        "order_id": i,
        "customer": f"customer-{i % 50_000:05d}",
        "status": STATUSES[i % 4],
        "amount": round((i * 37 % 1_000_000) / 100, 2),
        "created_at": f"2024-05-{1 + i % 28:02d}T{i % 24:02d}:{i % 60:02d}:{(i * 7) % 60:02d}"
        f".{i % 1_000_000:06d}Z",
        "items": 1 + i % 9,
        "note": _NOTE,
    }


def order_json(i: int) -> bytes:
    return json.dumps(order(i), separators=(",", ":")).encode()


def pg_table_sql(table: str) -> list[str]:
    return [
        f"DROP TABLE IF EXISTS {table}",
        f"CREATE TABLE {table} (order_id bigint PRIMARY KEY, customer text NOT NULL, status text, "
        f"amount numeric(12,2), created_at timestamptz, items int, note text)",
    ]


def mysql_table_sql(table: str) -> list[str]:
    return [
        f"DROP TABLE IF EXISTS {table}",
        f"CREATE TABLE {table} (order_id BIGINT PRIMARY KEY, customer VARCHAR(64) NOT NULL, "
        f"status VARCHAR(16), amount DECIMAL(12,2), created_at DATETIME(6), items INT, note TEXT) "
        f"ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
    ]
