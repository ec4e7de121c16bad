"""`evalterm txn import`'s reading of the file: encodings Excel writes, naive times in the hall's
zone, every problem of every row (pure: no collector, no broker)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from collector.cli.txn import csv_to_feed
from collector.errors import InputFileError

HEADER = ("id,window,txn,staff_id,staff_name,staff_badge,service_code,service_name,started,"
          "completed,outcome\n")
ROW = "e1,w1,OLD-1,s1,王芳,0001,sfz,身份证,{started},{completed},completed\n"


def _write(tmp_path: Path, text: str, encoding: str) -> Path:
    path = tmp_path / f"backfill-{encoding}.csv"
    path.write_bytes(text.encode(encoding))
    return path


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "gb18030", "gbk"])
def test_encodings_excel_writes(tmp_path: Path, encoding: str) -> None:
    text = HEADER + ROW.format(started="1763600000000", completed="1763600300000")
    [(line, payload)] = csv_to_feed(_write(tmp_path, text, encoding))
    assert line == 2
    assert isinstance(payload, bytes)
    msg = json.loads(payload)
    assert (msg["staff"]["name"], msg["service"]["name"]) == ("王芳", "身份证")


def test_not_text_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_bytes(b"\xff\xfe\x00\x81\x30\xff" * 10)
    with pytest.raises(InputFileError, match="neither UTF-8 nor GB18030"):
        csv_to_feed(path)


@pytest.mark.parametrize("offset, hour_utc", [("+08:00", 1), ("+05:30", 3), ("-03:00", 12)])
def test_naive_times_are_in_the_halls_zone(tmp_path: Path, offset: str, hour_utc: int) -> None:
    text = HEADER + ROW.format(started="2026-11-20 09:00:00", completed="2026-11-20T09:10:00")
    [(_, payload)] = csv_to_feed(_write(tmp_path, text, "utf-8"), offset)
    assert isinstance(payload, bytes)
    minutes = {"+05:30": 30}.get(offset, 0)
    want = datetime(2026, 11, 20, hour_utc, 10 + minutes, tzinfo=UTC)
    assert json.loads(payload)["completed"] == int(want.timestamp() * 1000)


def test_every_problem_of_every_row_with_its_line(tmp_path: Path) -> None:
    text = (HEADER
            + ROW.format(started="yesterday", completed="٣٤٥")           # line 2: two bad times
            + "e2,w1,OLD-2,s1\n"                                         # line 3: short row
            + ROW.format(started="1763600000000", completed="1763600300000")  # line 4: good
            + ROW.replace("s1", "s 1").format(started="1", completed="2"))    # line 5: bad id
    rows = dict(csv_to_feed(_write(tmp_path, text, "utf-8")))
    assert sorted(rows) == [2, 3, 4, 5]
    assert isinstance(rows[4], bytes)
    assert [p.split(" ")[0] for p in rows[2]] == ["started", "completed"]  # type: ignore[union-attr]
    assert "'٣٤٥'" in rows[2][1]  # type: ignore[index]  # Arabic-Indic digits are not epoch ms
    assert "columns missing" in rows[3][0]  # type: ignore[index]
    assert rows[5][0].startswith("invalid")  # type: ignore[index]


def test_missing_columns_name_them(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="missing columns outcome"):
        csv_to_feed(_write(tmp_path, HEADER.replace(",outcome", "") + "x\n", "utf-8"))
