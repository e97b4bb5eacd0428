"""The hash-chained audit log and ``verify``: every kind of tampering is found, at its line."""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path

import pytest

from cave._errors import AuditChainBroken
from cave.security import AuditLog, AuditSink, format_records, verify


def make_log(path: Path, n: int = 6) -> Path:
    with AuditLog(path) as log:
        for i in range(n):
            log.record("primitive", op="fs.read", path=f"/w/f{i}.csv", n=i)
    return path


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


def test_records_chain_and_verify(tmp_path: Path) -> None:
    path = make_log(tmp_path / "audit.jsonl")
    report = verify(path)
    assert report.ok and report.records == 6 and report.head_checked, str(report)
    assert report.kinds == {"primitive": 6}
    records = [json.loads(x) for x in lines(path)]
    assert [r["seq"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert records[0]["prev"] == "0" * 64
    for a, b in zip(records, records[1:], strict=False):
        assert b["prev"] == a["hash"]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert "OK, 6 records" in str(report)


def test_audit_log_is_an_audit_sink(tmp_path: Path) -> None:
    with AuditLog(tmp_path / "a.jsonl") as log:
        assert isinstance(log, AuditSink)


def test_reopening_continues_the_chain(tmp_path: Path) -> None:
    path = make_log(tmp_path / "audit.jsonl", 3)
    with AuditLog(path) as log:
        assert log.head[0] == 3
        log.record("code.run", code="print(1)")
    assert verify(path).ok and verify(path).records == 4


def test_non_json_values_are_recorded_as_text(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    with AuditLog(path) as log:
        log.record("x", where=Path("/tmp/x"), nested={"a": (1, 2)}, obj=object())
    assert verify(path).ok
    rec = json.loads(lines(path)[0])
    assert rec["where"] == "/tmp/x" and rec["nested"] == {"a": [1, 2]}


def test_concurrent_appends_keep_one_chain(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    with AuditLog(path) as log:

        def burst(k: int) -> None:
            for i in range(50):
                log.record("t", k=k, i=i)

        threads = [threading.Thread(target=burst, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    report = verify(path)
    assert report.ok and report.records == 200


# -- tampering -----------------------------------------------------------------------------
def test_edit_a_field_is_found_at_that_line(tmp_path: Path) -> None:
    path = make_log(tmp_path / "audit.jsonl")
    text = lines(path)
    text[2] = text[2].replace("/w/f2.csv", "/w/innocent.csv")
    path.write_text("".join(text))
    report = verify(path)
    assert not report.ok and report.line == 3 and "edited" in (report.problem or "")
    assert report.records == 2
    err = report.error()
    assert isinstance(err, AuditChainBroken) and err.line == 3 and str(path) in str(err)


def test_edit_with_recomputed_hash_is_found_at_the_next_line(tmp_path: Path) -> None:
    from cave.security._audit import _canonical, _digest

    path = make_log(tmp_path / "audit.jsonl")
    text = lines(path)
    rec = json.loads(text[2])
    rec["path"] = "/w/innocent.csv"
    rec.pop("hash")
    rec["hash"] = _digest(_canonical(rec))
    text[2] = _canonical(rec) + "\n"
    path.write_text("".join(text))
    report = verify(path)
    assert not report.ok and report.line == 4 and "chain broken" in (report.problem or "")


def test_delete_a_line(tmp_path: Path) -> None:
    path = make_log(tmp_path / "audit.jsonl")
    text = lines(path)
    del text[3]
    path.write_text("".join(text))
    report = verify(path)
    assert not report.ok and report.line == 4
    assert "expected record 4 but found 5" in (report.problem or "")


def test_swap_two_lines(tmp_path: Path) -> None:
    path = make_log(tmp_path / "audit.jsonl")
    text = lines(path)
    text[1], text[4] = text[4], text[1]
    path.write_text("".join(text))
    report = verify(path)
    assert not report.ok and report.line == 2 and "expected record 2" in (report.problem or "")


def test_truncate_the_tail_by_whole_records(tmp_path: Path) -> None:
    path = make_log(tmp_path / "audit.jsonl")
    path.write_text("".join(lines(path)[:4]))
    report = verify(path)
    assert not report.ok and report.line == 5
    assert "truncated" in (report.problem or "") and report.records == 4


def test_truncate_the_tail_mid_record(tmp_path: Path) -> None:
    path = make_log(tmp_path / "audit.jsonl")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 40])
    report = verify(path)
    assert not report.ok and report.line == 6 and "incomplete" in (report.problem or "")
    with pytest.raises(AuditChainBroken) as info:
        AuditLog(path)  # refuses to chain onto a torn record
    assert info.value.line == 6


def test_truncation_without_a_head_file_is_reported_as_unchecked(tmp_path: Path) -> None:
    path = make_log(tmp_path / "audit.jsonl")
    path.write_text("".join(lines(path)[:4]))
    Path(str(path) + ".head").unlink()
    report = verify(path)
    assert report.ok and not report.head_checked and "truncated tail goes unnoticed" in str(report)
    # ...but an expected head kept elsewhere (a checkpoint) still catches it
    assert not verify(path, expected_head=(6, "x")).ok


def test_appended_forged_records_are_found(tmp_path: Path) -> None:
    from cave.security._audit import _canonical, _digest

    path = make_log(tmp_path / "audit.jsonl")
    last = json.loads(lines(path)[-1])
    forged = {"kind": "approval", "seq": 7, "prev": last["hash"], "ts": 1.0, "decision": "ok"}
    forged["hash"] = _digest(_canonical(forged))
    with open(path, "a") as f:
        f.write(_canonical(forged) + "\n")
    report = verify(path)
    assert not report.ok and report.line == 7 and "after the head" in (report.problem or "")


def test_an_empty_log_verifies_and_an_emptied_head_is_caught(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    AuditLog(path).close()
    assert verify(path).ok and verify(path).records == 0
    make_log(path, 3)
    Path(str(path) + ".head").write_text("")
    report = verify(path)
    assert not report.ok and "after the head" in (report.problem or "")


def test_garbage_line_and_missing_file(tmp_path: Path) -> None:
    path = make_log(tmp_path / "audit.jsonl")
    text = lines(path)
    text.insert(2, "hello\n")
    path.write_text("".join(text))
    report = verify(path)
    assert not report.ok and report.line == 3 and "not a JSON record" in (report.problem or "")
    assert not verify(tmp_path / "nope.jsonl").ok


def test_format_records_for_the_cli(tmp_path: Path) -> None:
    path = make_log(tmp_path / "audit.jsonl", 3)
    out = list(format_records(path))
    assert len(out) == 3 and "primitive" in out[0] and "path=/w/f0.csv" in out[0]
    assert "hash" not in out[0]
    assert len(list(format_records(path, tail=1))) == 1
