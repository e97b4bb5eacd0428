"""The Dask policy's address parsing, and the unattended-run guess (pure functions)."""

from __future__ import annotations

import pytest

from cave._data_grants import scheduler_capability
from cave.approvals._unattended import DEFAULT_WAIT, is_unattended, unattended_wait


@pytest.mark.parametrize(
    ("address", "capability"),
    [
        ("tcp://127.0.0.1:8786", "net:127.0.0.1:8786"),
        ("tls://Sched.Example.org:8786", "net:sched.example.org:8786"),
        ("tcp://[::1]:8786", "net:[::1]:8786"),
        ("inproc://10.0.0.1/123/1", None),  # in-process: no network to grant
        ("ucx://10.0.0.1:13337", None),  # not a socket the guard maps to net:
    ],
)
def test_scheduler_capability(address: str, capability: str | None) -> None:
    assert scheduler_capability(address) == capability


def _request(*, stdin: bool, cell_id: bool) -> dict:
    return {"content": {"allow_stdin": stdin}, "metadata": {"cellId": "c1"} if cell_id else {}}


def test_unattended_is_no_stdin_and_no_notebook_cell(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CAVE_UNATTENDED", raising=False)
    assert is_unattended(_request(stdin=False, cell_id=False))  # nbclient: papermill, nbconvert
    assert not is_unattended(_request(stdin=False, cell_id=True))  # JupyterLab
    assert not is_unattended(_request(stdin=True, cell_id=False))  # a console
    assert not is_unattended(None)  # outside a cell: the CLI can answer
    monkeypatch.setenv("CAVE_UNATTENDED", "0")
    assert not is_unattended(_request(stdin=False, cell_id=False))
    monkeypatch.setenv("CAVE_UNATTENDED", "1")
    assert is_unattended(_request(stdin=False, cell_id=True))


def test_unattended_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CAVE_UNATTENDED", raising=False)
    monkeypatch.delenv("CAVE_UNATTENDED_WAIT", raising=False)
    assert unattended_wait(_request(stdin=False, cell_id=True)) is None  # someone is there
    assert unattended_wait(_request(stdin=False, cell_id=False)) == DEFAULT_WAIT
    monkeypatch.setenv("CAVE_UNATTENDED_WAIT", "2.5")
    assert unattended_wait(_request(stdin=False, cell_id=False)) == 2.5
    monkeypatch.setenv("CAVE_UNATTENDED", "1")
    assert unattended_wait(_request(stdin=False, cell_id=True)) == 0.0  # nobody, say so at once


def test_an_injected_client_grants_its_scheduler_only_once_and_deny_wins(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    distributed = pytest.importorskip("distributed")
    from cave._data_grants import grant_injected_schedulers
    from cave._session import Session
    from cave.security._capabilities import Capability

    monkeypatch.setenv("CAVE_SESSION_DIR", str(tmp_path / "session"))
    with distributed.LocalCluster(n_workers=0, processes=False, protocol="tcp",
                                  dashboard_address=None) as cluster:
        with distributed.Client(cluster) as client:
            cap = scheduler_capability(client.scheduler.address)
            assert cap is not None
            host_port = cap.removeprefix("net:")
            host, port = host_port.rsplit(":", 1)
            elsewhere = Capability("net", f"{host}:{int(port) + 1}")

            s = Session(workspace=tmp_path)
            s.runtime.inject("client", client)
            security = s.ensure_security()
            grant_injected_schedulers(s)
            grant_injected_schedulers(s)  # the next turn: nothing new
            assert security.policy.decide(Capability("net", host_port)).effect.value == "allow"
            assert security.policy.decide(elsewhere).effect.value != "allow"
            audit = (tmp_path / "session" / "audit.jsonl").read_text()
            assert audit.count("injected Dask client 'client'") == 1

            d = Session(workspace=tmp_path / "denied")
            d.runtime.inject("client", client)
            denied = d.ensure_security()
            denied.with_policy(denied.policy.with_rules(("net:*", "deny")), by="test")
            grant_injected_schedulers(d)
            assert denied.policy.decide(Capability("net", host_port)).effect.value == "deny"
            assert not any(r.capability == cap for r in denied.policy.rules)
            security.close()
            denied.close()
