"""Streaming export of records to CSV, XLSX and PDF, safe to open in a spreadsheet.

Rows are read in keyset pages of ``PAGE`` and written as they come, so memory
stays flat for any number of records. Text cells starting with ``= + - @``,
tab or carriage return get a leading apostrophe (formula-injection guard).
XLSX uses XlsxWriter in constant-memory mode (a temporary file, streamed out).
PDF is written by a minimal PDF 1.4 writer here (Courier, one table row per
line): no dependency, output streamed page by page.
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

DANGEROUS = ("=", "+", "-", "@", "\t", "\r")
PAGE = 1000


def safe(value: Any) -> Any:
    """A cell value that no spreadsheet will run as a formula."""
    if isinstance(value, str) and value.startswith(DANGEROUS):
        return "'" + value
    return value


def text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat()
    return str(safe(value)) if isinstance(value, str) else str(value)


def csv_stream(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Iterator[bytes]:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    count = 0
    for row in rows:
        writer.writerow([text(v) for v in row])
        count += 1
        if count % PAGE == 0:
            yield buffer.getvalue().encode()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue().encode()


def xlsx_stream(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Iterator[bytes]:
    import xlsxwriter  # type: ignore[import-untyped]

    fd, path = tempfile.mkstemp(suffix=".xlsx")
    os.close(fd)
    try:
        book = xlsxwriter.Workbook(path, {"constant_memory": True, "strings_to_formulas": False})
        sheet = book.add_worksheet("export")
        sheet.write_row(0, 0, list(header))
        for index, row in enumerate(rows, start=1):
            for col, value in enumerate(row):
                _xlsx_cell(sheet, index, col, value)
        book.close()
        with open(path, "rb") as handle:
            while block := handle.read(65536):
                yield block
    finally:
        os.unlink(path)


def _xlsx_cell(sheet: Any, row: int, col: int, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool):
        sheet.write_boolean(row, col, value)
    elif isinstance(value, int | float | Decimal):
        sheet.write_number(row, col, float(value))
    else:
        sheet.write_string(row, col, text(value))


def _pdf_escape(value: str) -> bytes:
    raw = value.encode("latin-1", "replace")
    return raw.replace(b"\\", b"\\\\").replace(b"(", b"\\(").replace(b")", b"\\)")


class _Pdf:
    """Objects numbered as written; the xref is built from their byte offsets."""

    LINES = 60

    def __init__(self) -> None:
        self.offsets: dict[int, int] = {}
        self.position = 0
        self.pages: list[int] = []
        self.next_id = 4  # 1 catalog, 2 pages, 3 font

    def emit(self, data: bytes) -> bytes:
        self.position += len(data)
        return data

    def obj(self, number: int, body: bytes) -> bytes:
        self.offsets[number] = self.position
        return self.emit(b"%d 0 obj\n" % number + body + b"\nendobj\n")

    def page(self, lines: list[str]) -> bytes:
        content = [b"BT /F1 7 Tf 9 TL 24 570 Td"]
        content += [b"(" + _pdf_escape(line[:180]) + b") '" for line in lines]
        content.append(b"ET")
        stream = b"\n".join(content)
        page_id, content_id = self.next_id, self.next_id + 1
        self.next_id += 2
        self.pages.append(page_id)
        out = self.obj(
            content_id, b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream"
        )
        return out + self.obj(
            page_id,
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 842 595] "
            b"/Resources << /Font << /F1 3 0 R >> >> /Contents %d 0 R >>" % content_id,
        )

    def trailer(self) -> bytes:
        kids = b" ".join(b"%d 0 R" % p for p in self.pages)
        out = self.obj(2, b"<< /Type /Pages /Kids [%s] /Count %d >>" % (kids, len(self.pages)))
        out += self.obj(1, b"<< /Type /Catalog /Pages 2 0 R >>")
        xref_at = self.position
        size = self.next_id
        xref = [b"xref\n0 %d\n" % size, b"0000000000 65535 f \n"]
        xref += [b"%010d 00000 n \n" % self.offsets[n] for n in range(1, size)]
        tail = b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (size, xref_at)
        return out + self.emit(b"".join(xref) + tail)


def pdf_stream(title: str, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Iterator[bytes]:
    pdf = _Pdf()
    yield pdf.emit(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    yield pdf.obj(3, b"<< /Type /Font /Subtype /Type1 /BaseFont /Courier >>")
    lines = [title, " | ".join(header)]
    for row in rows:
        lines.append(" | ".join(text(v) for v in row))
        if len(lines) >= _Pdf.LINES:
            yield pdf.page(lines)
            lines = []
    if lines or not pdf.pages:
        yield pdf.page(lines)
    yield pdf.trailer()


def stream(
    fmt: str, title: str, header: Sequence[str], rows: Iterable[Sequence[Any]]
) -> Iterator[bytes]:
    """``rows`` as a ``csv``, ``xlsx`` or ``pdf`` byte stream (``title`` heads the PDF)."""
    if fmt == "csv":
        return csv_stream(header, rows)
    if fmt == "xlsx":
        return xlsx_stream(header, rows)
    return pdf_stream(title, header, rows)
