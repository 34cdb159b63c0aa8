"""One-line and free-text inputs refuse what would show other than it was stored:
controls (C0, DEL, C1), line and paragraph separators, bidirectional embeddings,
overrides and isolates. Every other character is kept. Checked on the types and
through an endpoint that uses each (products and stock adjustments)."""

from __future__ import annotations

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import TypeAdapter, ValidationError

from opsline.platform.http.inputs import FreeText, OneLine
from tests.helpers import Account, assert_problem, signup

ONE_LINE = TypeAdapter(OneLine)
FREE_TEXT = TypeAdapter(FreeText)

# NUL, ESC, DEL, C1 (PAD, NEL, CSI, APC), separators, embeddings, overrides, isolates.
REFUSED_EVERYWHERE = [
    "\x00",
    "\x1b",
    "\x7f",
    "\x80",
    "\x85",
    "\x9b",
    "\x9f",
    "\u2028",
    "\u2029",
    "\u202a",
    "\u202b",
    "\u202c",
    "\u202d",
    "\u202e",
    "\u2066",
    "\u2067",
    "\u2068",
    "\u2069",
]
LINE_BREAKS = ["\t", "\n", "\r"]
KEPT = [
    "Crème brûlée à l'œuf",
    "東京タワー 모자 ผ้าไหม",
    "Family 👨\u200d👩\u200d👧 and flags 🇫🇷",
    "שלום\u200f (Hebrew with a right-to-left mark)",
    "non\u00a0breaking, soft\u00adhyphen, zero\u200bwidth",
    "\u00a0\u00ff\u0100",  # just past C1
]


def _message(adapter: TypeAdapter[str], value: str) -> str:
    with pytest.raises(ValidationError) as caught:
        adapter.validate_python(value)
    return str(caught.value.errors()[0]["msg"])


@pytest.mark.parametrize("char", REFUSED_EVERYWHERE + LINE_BREAKS)
def test_one_line_refuses_naming_the_code_point_and_where(char: str) -> None:
    assert f"U+{ord(char):04X} at position 3" in _message(ONE_LINE, f"Mug{char}X")


@pytest.mark.parametrize("char", REFUSED_EVERYWHERE)
def test_free_text_refuses_the_same_characters(char: str) -> None:
    assert f"U+{ord(char):04X} at position 3" in _message(FREE_TEXT, f"Mug{char}X")


def test_free_text_keeps_tab_and_line_breaks() -> None:
    assert FREE_TEXT.validate_python("two\r\nlines\tand a tab") == "two\r\nlines\tand a tab"


@pytest.mark.parametrize(
    ("char", "kind"),
    [
        ("\x00", "control characters"),
        ("\x9b", "control characters"),
        ("\u2028", "line or paragraph separators"),
        ("\u202e", "bidirectional formatting characters"),
        ("\u2066", "bidirectional formatting characters"),
    ],
)
def test_the_message_says_what_kind_of_character_it_is(char: str, kind: str) -> None:
    assert kind in _message(ONE_LINE, char)
    assert kind in _message(FREE_TEXT, char)


@pytest.mark.parametrize("text", KEPT)
def test_ordinary_text_in_any_script_is_kept(text: str) -> None:
    assert ONE_LINE.validate_python(text) == text
    assert FREE_TEXT.validate_python(text) == text


# -- through the API -------------------------------------------------------------------


@pytest.fixture
def owner(app_client: TestClient) -> Account:
    return signup(app_client, tenant="Inputs")


def _create(client: TestClient, owner: Account, name: str) -> httpx.Response:
    return client.post(
        "/api/v1/products",
        json={"sku": "S-1", "name": name, "price": "1.00"},
        headers=owner.headers,
    )


@pytest.mark.parametrize("char", ["\x9b", "\x85", "\u2028", "\u202e", "\u2067"])
def test_a_product_name_with_a_refused_character_is_422_naming_it(
    app_client: TestClient, owner: Account, char: str
) -> None:
    body = assert_problem(_create(app_client, owner, f"Mug{char}gnp.exe"), 422)
    assert [error["loc"] for error in body["errors"]] == [["body", "name"]]
    assert f"U+{ord(char):04X}" in body["errors"][0]["msg"]
    listed = app_client.get("/api/v1/products", headers=owner.headers).json()
    assert listed["items"] == []


def test_a_product_name_in_any_script_is_stored_as_typed(
    app_client: TestClient, owner: Account
) -> None:
    name = "Crème 東京 👨\u200d👩\u200d👧"
    created = _create(app_client, owner, name)
    assert created.status_code == 201, created.text
    assert created.json()["name"] == name


def test_a_stock_adjustment_reason_keeps_line_breaks_but_not_overrides(
    app_client: TestClient, owner: Account
) -> None:
    product = _create(app_client, owner, "Mug").json()
    url = f"/api/v1/products/{product['id']}/stock-adjustments"
    refused = app_client.post(
        url, json={"delta": 1, "reason": "recount\n\u202eby hand"}, headers=owner.headers
    )
    body = assert_problem(refused, 422)
    assert [error["loc"] for error in body["errors"]] == [["body", "reason"]]
    assert "U+202E" in body["errors"][0]["msg"]
    kept = app_client.post(
        url, json={"delta": 1, "reason": "recount\nby hand"}, headers=owner.headers
    )
    assert kept.status_code == 200, kept.text
    assert kept.json()["stock"] == 1
