"""The fsspec store: memory:// in process, and s3:// against a moto S3 server on 127.0.0.1."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import uuid

import fsspec
import numpy as np
import pandas as pd
import pytest

from cave._errors import CheckpointTampered
from cave.checkpoint import SessionStore

SECRET = b"m" * 32


@pytest.fixture
def memory_url():
    url = f"memory://cave-test-{uuid.uuid4().hex}"
    yield url
    fs = fsspec.filesystem("memory")
    if fs.exists(url):
        fs.rm(url, recursive=True)


def test_memory_round_trip_incremental_and_gc(memory_url):
    store = SessionStore(memory_url, secret=SECRET)
    ns = {"arr": np.arange(200_000.0), "frame": pd.DataFrame({"a": [1, 2]}), "x": [1, 2]}
    ns["same"] = ns["arr"]
    first = store.save("one", ns, {"messages": ["hi"]})
    assert first.blobs_written == 4
    again = store.save("two", ns, {"messages": ["hi"]})
    assert again.blobs_written == 0 and again.written == 0
    ns["arr"][0] = -1.0
    third = store.save("three", ns, {"messages": ["hi", "again"]})
    assert third.blobs_written == 2 and third.changes.changed == ("arr", "same")

    other = SessionStore(memory_url, secret=SECRET)  # a second client of the same prefix
    assert [i.name for i in other.list()] == ["one", "two", "three"]
    r = other.load("three")
    assert r.problems == [] and r.state == {"messages": ["hi", "again"]}
    assert r.namespace["arr"][0] == -1.0 and r.namespace["same"] is r.namespace["arr"]
    pd.testing.assert_frame_equal(r.namespace["frame"], ns["frame"])
    assert other.diff("one", "three").changes.changed == ("arr", "same")

    store.remove("one")
    store.remove("two")
    assert store.gc().removed_blobs == 0  # grace period: blobs this young may be in flight
    report = store.gc(grace=0)
    assert report.removed_blobs == 2  # the old arr and the old state
    assert store.verify().ok and store.verify().orphan_blobs == 0


def test_memory_tampered_manifest_is_refused(memory_url):
    store = SessionStore(memory_url, secret=SECRET)
    store.save("cp", {"x": [1, 2, 3]}, {})
    fs = fsspec.filesystem("memory")
    path = f"{memory_url}/manifests/cp.json"
    doc = json.loads(fs.cat_file(path))
    doc["manifest"] = doc["manifest"].replace('"x"', '"y"')
    fs.pipe_file(path, json.dumps(doc).encode())
    with pytest.raises(CheckpointTampered, match="signature"):
        store.load("cp")
    with pytest.raises(CheckpointTampered, match="signature"):
        SessionStore(memory_url, secret=b"q" * 32).load("cp")
    assert not store.verify().ok


# --- S3 (moto server) ---------------------------------------------------------------------------


def _options(endpoint: str) -> dict:
    return {
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
    }


CLIENT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import pandas as pd
    from cave.checkpoint import SessionStore

    url, endpoint, secret, action = sys.argv[1:5]
    options = {"key": "testing", "secret": "testing",
               "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"}}
    store = SessionStore(url, secret=bytes.fromhex(secret), storage_options=options)
    if action == "save":
        ns = {"frame": pd.DataFrame({"a": np.arange(300_000.0)}), "note": "from machine A"}
        info = store.save("handoff", ns, {"messages": [{"role": "user", "content": "hi"}]})
        print(json.dumps({"written": info.written, "blobs": info.blobs_written}))
    else:
        r = store.load("handoff")
        more = store.save("continued", r.namespace, r.state)
        print(json.dumps({"sum": float(r.namespace["frame"].a.sum()), "note": r.namespace["note"],
                          "state": r.state, "problems": len(r.problems),
                          "rewritten": more.blobs_written, "ok": store.verify().ok}))
    """
)


def _client(*args: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CLIENT, *args], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_s3_save_in_one_process_resume_in_another(s3_endpoint):
    fs = fsspec.filesystem("s3", **_options(s3_endpoint))
    bucket = f"cave-{uuid.uuid4().hex[:12]}"
    import boto3

    boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    ).create_bucket(Bucket=bucket)
    url = f"s3://{bucket}/sessions/one"
    saved = _client(url, s3_endpoint, SECRET.hex(), "save")
    assert saved["blobs"] == 3 and saved["written"] > 2_400_000
    assert fs.exists(f"{bucket}/sessions/one/manifests/handoff.json")
    resumed = _client(url, s3_endpoint, SECRET.hex(), "load")
    assert resumed == {
        "sum": float(np.arange(300_000.0).sum()),
        "note": "from machine A",
        "state": {"messages": [{"role": "user", "content": "hi"}]},
        "problems": 0,
        "rewritten": 0,
        "ok": True,
    }
    # A reader without the user's key is refused.
    intruder = SessionStore(url, secret=b"x" * 32, storage_options=_options(s3_endpoint))
    with pytest.raises(CheckpointTampered):
        intruder.load("handoff")
