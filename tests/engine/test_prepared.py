"""Result files prepared on the read-ahead worker (engine/prepared.py) and their packed lines
as the state takes them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gptbatch.engine import usage
from gptbatch.engine.prepared import classify, prepare
from gptbatch.errors import StateError
from gptbatch.state.lines import pack_line, unpack_line
from gptbatch.state.store import Store

OK = {
    "custom_id": "a",
    "response": {
        "status_code": 200,
        "body": {"model": "gpt-4o-mini", "usage": {"prompt_tokens": 7, "completion_tokens": 3}},
    },
}
SERVER = {"custom_id": "b", "response": {"status_code": 500, "body": {"error": {"message": "x"}}}}
EXPIRED = {"custom_id": "c", "error": {"code": "batch_expired", "message": "late"}}
REFUSED = {"custom_id": "d", "response": {"status_code": 400, "body": {}}}


def test_prepare_reads_a_file_as_the_collector_does(tmp_path: Path) -> None:
    lines = [json.dumps(o) for o in (OK, SERVER, EXPIRED, REFUSED)]
    path = tmp_path / "out.jsonl"
    # blank lines are skipped, a CRLF ending is not part of the line
    path.write_bytes(("\n".join(lines[:2]) + "\r\n\n  \n" + "\n".join(lines[2:]) + "\n").encode())
    zdict = lines[0].encode()
    got = prepare(str(path), zdict, None)
    assert [g[0] for g in got] == ["a", "b", "c", "d"]
    assert [g[1:3] for g in got] == [classify(json.loads(t)) for t in lines]
    assert [g[1] for g in got] == ["ok", "retry", "retry", "failed"]
    assert got[0][3] == tuple(vars(usage.result_usage(OK)).values())
    assert [g[3] for g in got[1:]] == [None, None, None]  # usage is read for ok lines only
    assert [unpack_line(None, g[4], zdict) for g in got] == lines
    assert got[0][4] == pack_line(lines[0], zdict)


def test_a_line_packed_against_another_dictionary_is_refused(tmp_path: Path) -> None:
    store = Store(tmp_path)
    try:
        with store.transaction():
            store.write_results([("k1", "ok", 1, '{"first": 1}', None, "b1")])  # chooses it
        zdict = store.result_dictionary()
        assert zdict is not None
        good = pack_line('{"second": 2}', zdict)
        with store.transaction():
            store.write_results([("k2", "ok", 1, good, None, "b2")])
        assert store.result("k2") is not None
        other = pack_line('{"third": 3}', b"another dictionary")
        with pytest.raises(StateError), store.transaction():
            store.write_results([("k3", "ok", 1, other, None, "b3")])
        assert store.result("k3") is None  # nothing recorded
    finally:
        store.close()


def test_a_usage_s_fields_rebuild_it_in_dataclass_order() -> None:
    """prepare sends Usage.fields() across the process boundary; the collector rebuilds the
    Usage from them positionally, so every field must be there, in order."""
    import dataclasses

    samples = [
        usage.Usage(),
        usage.result_usage(OK),
        usage.Usage(3, 10, 2, 5, 1, None, ("gpt-x", "(no model)")),
    ]
    for used in samples:
        assert used.fields() == dataclasses.astuple(used)
        assert usage.Usage(*used.fields()) == used
    assert len(samples[0].fields()) == len(dataclasses.fields(usage.Usage))
