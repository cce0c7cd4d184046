"""The events/users contract: good input, each kind of bad input, quarantine accounting."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from clients.ingest import FileFormat, IngestError, read_events, read_users

HEADER = "user_id,ts,event_type,amount,item_id,price,quantity,channel\n"


def write(tmp_path: Path, text: str, name: str = "events.csv", encoding: str = "utf-8") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return path


def test_good_csv_is_read_into_canonical_types(tmp_path):
    path = write(tmp_path, HEADER
                 + "u1,2024-01-01T10:00:00Z,purchase,12.50,i1,6.25,2,web\n"
                 + "u1,2024-01-02 08:00:00+02:00,visit,,,,,app\n"
                 + "u2,2024-01-03,PURCHASE,3,i2,3,1,\n")
    result = read_events(path)
    frame = result.frame
    assert result.report.rows_read == 3 and result.report.rows_accepted == 3
    assert frame["ts"].dtype == "datetime64[ns]"
    # +02:00 is converted to UTC; naive values are taken as UTC
    assert frame["ts"].tolist() == [pd.Timestamp("2024-01-01 10:00"), pd.Timestamp("2024-01-02 06:00"),
                                   pd.Timestamp("2024-01-03")]
    assert frame["amount"].tolist() == [12.5, 0.0, 3.0]
    assert frame["event_type"].tolist() == ["purchase", "visit", "purchase"]
    assert frame["channel"].tolist() == ["web", "app", None]
    assert pd.isna(frame.loc[1, "price"])


def test_each_bad_row_is_reported_with_line_and_reason(tmp_path):
    path = write(tmp_path, HEADER
                 + "u1,2024-01-01,purchase,10,,,,\n"       # line 2 ok
                 + ",2024-01-01,purchase,10,,,,\n"         # line 3 missing user
                 + "u2,not-a-date,visit,,,,,\n"            # line 4 bad ts
                 + "u3,2024-01-01,purchase,-5,,,,\n"       # line 5 negative
                 + "u4,2024-01-01,purchase,abc,,,,\n"      # line 6 not a number
                 + "u5,2024-01-01,,1,,,,\n"                # line 7 missing type
                 + "u1,2024-01-01,purchase,10,,,,\n")      # line 8 duplicate of 2
    with pytest.raises(IngestError) as info:
        read_events(path)
    message = str(info.value)
    assert "6 of 7 rows are invalid" in message
    for expected in (":3: user_id: missing user_id", ":4: ts: unparsable timestamp 'not-a-date'",
                     ":5: amount: negative amount -5", ":6: amount: amount 'abc' is not a finite number",
                     ":7: event_type: missing event_type", ":8: duplicate event (every field equal to line 2)",
                     "--on-error quarantine"):
        assert expected in message, expected


def test_quarantine_keeps_every_rejected_row_untouched_and_counts_add_up(tmp_path):
    rows = ["u1,2024-01-01,purchase,10.00,,,,", "u2,yesterday,visit,,,,,", "u3,2024-01-01,purchase,-1,,,,",
            "u4,2024-01-02,login,,,,,", "u5,2024-01-01,purchase,1,x,y,z,w,EXTRA"]
    path = write(tmp_path, HEADER + "\n".join(rows) + "\n")
    result = read_events(path, on_error="quarantine", quarantine_path=tmp_path / "q.csv")
    report = result.report
    assert report.rows_read == 5
    assert report.rows_accepted == 2 and report.rows_rejected == 3
    assert report.rows_read == report.rows_accepted + report.rows_rejected
    quarantined = pd.read_csv(tmp_path / "q.csv", dtype=str, keep_default_na=False)
    assert quarantined["_line"].tolist() == ["3", "4", "6"]
    assert quarantined.loc[0, "ts"] == "yesterday"           # original text, untouched
    assert quarantined.loc[1, "amount"] == "-1"
    assert "expected 8 fields, found 9" in quarantined.loc[2, "_reason"]
    assert quarantined.loc[2, "user_id"] == rows[4]           # the whole raw line is kept
    assert set(result.frame["user_id"]) == {"u1", "u4"}


def test_event_id_duplicates_named(tmp_path):
    path = write(tmp_path, "user_id,ts,event_type,event_id\nu1,2024-01-01,visit,e1\nu2,2024-01-02,visit,e1\n")
    with pytest.raises(IngestError, match=r":3: event_id: duplicate event_id 'e1', first seen on line 2"):
        read_events(path)


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        ("", "the file is empty"),
        ("   \n", "the file is empty"),
        (HEADER, "has a header but no rows"),
        ("user_id,event_type\nu1,visit\n", r"missing required column\(s\) ts; found user_id, event_type"),
    ],
)
def test_whole_file_problems_have_their_own_message(tmp_path, content, pattern):
    path = write(tmp_path, content)
    with pytest.raises(IngestError, match=pattern):
        read_events(path, on_error="quarantine")


def test_wrong_encoding_is_named_with_a_fix(tmp_path):
    path = write(tmp_path, "user_id,ts,event_type\nJosé,2024-01-01,visit\n", encoding="latin-1")
    with pytest.raises(IngestError, match=r"cannot decode byte 0xe9 .* as utf-8; .*--encoding"):
        read_events(path)
    assert read_events(path, file_format=FileFormat(encoding="latin-1")).frame["user_id"].tolist() == ["José"]


def test_missing_file_and_unknown_type(tmp_path):
    with pytest.raises(IngestError, match="no such file"):
        read_events(tmp_path / "nope.csv")
    with pytest.raises(IngestError, match="unknown file type '.xlsx'"):
        read_events(write(tmp_path, "x", name="e.xlsx"))


def test_parquet_typed_columns_and_bad_column_type(tmp_path):
    good = pd.DataFrame({"user_id": ["a", "b"], "ts": pd.to_datetime(["2024-01-01", "2024-01-02"], utc=True),
                         "event_type": ["purchase", "visit"], "amount": [1.5, None]})
    good.to_parquet(tmp_path / "g.parquet")
    frame = read_events(tmp_path / "g.parquet").frame
    assert frame["amount"].tolist() == [1.5, 0.0]
    bad = good.assign(amount=[[1], [2]])
    bad.to_parquet(tmp_path / "b.parquet")
    with pytest.raises(IngestError, match="column 'amount' has type object; expected numbers|not a finite number"):
        read_events(tmp_path / "b.parquet")
    neg = good.assign(amount=[-1.0, 2.0])
    neg.to_parquet(tmp_path / "n.parquet")
    result = read_events(tmp_path / "n.parquet", on_error="quarantine", quarantine_path=tmp_path / "nq.csv")
    assert (result.report.rows_accepted, result.report.rows_rejected) == (1, 1)
    assert result.report.errors[0].line == 1


def test_unknown_columns_are_reported_not_silently_dropped(tmp_path):
    path = write(tmp_path, "user_id,ts,event_type,colour\nu1,2024-01-01,visit,red\n")
    result = read_events(path)
    assert any("colour" in w for w in result.report.warnings)


def test_users_file(tmp_path):
    path = write(tmp_path, "user_id,signup_ts,gender,region\nu1,2023-05-01,f,north\nu2,,m,\nu1,2023-01-01,f,x\n",
                 name="users.csv")
    with pytest.raises(IngestError, match=r":4: user_id: duplicate user_id 'u1'"):
        read_users(path)
    result = read_users(path, on_error="quarantine", quarantine_path=tmp_path / "uq.csv")
    assert result.frame["gender"].tolist() == ["f", "m"]
    assert result.frame["region"].tolist() == ["north", None]
    assert pd.isna(result.frame.loc[1, "signup_ts"])


def test_delimiter_date_format_and_epoch_times(tmp_path):
    """--sep, --date-format and integer epoch timestamps (issue 16, point 7)."""
    semi = write(tmp_path, "user_id;ts;event_type\nu1;31/12/2024 10:30;purchase\nu2;01/02/2024 08:00;visit\n",
                 name="semi.csv")
    with pytest.raises(IngestError, match=r"The header seems to be delimited by ';': pass --sep ';'"):
        read_events(semi)
    with pytest.raises(IngestError, match=r"most rows \(2 of 2 rows\) have timestamps like '31/12/2024 10:30' that "
                                          r"are not ISO-8601: pass --date-format '%d/%m/%Y %H:%M'"):
        read_events(semi, file_format=FileFormat(sep=";"))
    frame = read_events(semi, file_format=FileFormat(sep=";", date_format="%d/%m/%Y %H:%M")).frame
    assert frame["ts"].tolist() == [pd.Timestamp("2024-12-31 10:30"), pd.Timestamp("2024-02-01 08:00")]
    tabs = write(tmp_path, "user_id\tts\tevent_type\nu1\t1704067200\tpurchase\nu2\t1704067200123\tvisit\n",
                 name="tabs.tsv")
    frame = read_events(tabs, file_format=FileFormat(sep="\\t")).frame
    assert frame["ts"].tolist() == [pd.Timestamp("2024-01-01"), pd.Timestamp("2024-01-01 00:00:00.123")]
    pd.DataFrame({"user_id": ["a"], "ts": [1704067200], "event_type": ["visit"]}).to_parquet(tmp_path / "e.parquet")
    assert read_events(tmp_path / "e.parquet").frame["ts"].tolist() == [pd.Timestamp("2024-01-01")]
    with pytest.raises(ValueError, match="a delimiter is one character"):
        FileFormat(sep=";;")
    with pytest.raises(ValueError, match="not a known text encoding"):
        FileFormat(encoding="klingon")
