"""Sub-agent authority: the intersection of what it is given and what its parent holds.

Runs real agent code under the real guard (no kernel): primitives and raw ``open`` alike.
"""

from __future__ import annotations

from pathlib import Path

from security_helpers import ScriptedChannel, Session, make_session

from cave.approvals._protocol import Decision
from cave.security import Effect, Policy, Rule
from cave.security._policy import python_dirs


def child_of(s: Session, name: str, given: object) -> Session:
    return Session(s.workspace, s.security.spawn(name, given), s.channel, s.log)


def only(ws: Path, *allowed: str) -> Policy:
    rules = [Rule(c, Effect.ALLOW) for c in allowed]
    rules += [Rule(f"fs.read:{p}/**", Effect.ALLOW) for p in python_dirs()]
    return Policy(ws, tuple(rules), Effect.DENY)


def test_a_child_given_more_than_its_parent_gets_only_the_intersection(tmp_path: Path) -> None:
    ws = Path(tmp_path).resolve() / "ws"
    ws.mkdir(parents=True)
    s = make_session(tmp_path, policy=only(ws, "fs.write:out/a/**", "fs.read:**"))
    (ws / "out" / "a").mkdir(parents=True)
    (ws / "out" / "b").mkdir(parents=True)
    try:
        kid = child_of(s, "kid", ["fs.write:out/**"])
        code = "fs.write('out/a/x.txt', 'fine')\nopen(f'{ws}/out/a/y.txt', 'w').write('r')"
        ok = kid.run(code, ws=ws)
        assert ok.error is None, ok.trace
        assert (ws / "out/a/x.txt").read_text() == "fine"
        for code in ("fs.write('out/b/x.txt', 'no')", "open(f'{ws}/out/b/y.txt', 'w')"):
            out = kid.run(code, ws=ws)
            assert out.denied, code
        assert "its parent cannot" in str(kid.run("fs.write('out/b/x.txt', 'no')").error)
        assert not (ws / "out/b/x.txt").exists() and not (ws / "out/b/y.txt").exists()
        # A grandchild given everything is bounded by the child, hence by the parent too.
        grand = Session(ws, kid.security.spawn("grand", ["fs.write:**"]), s.channel, s.log)
        assert grand.run("fs.write('out/a/g.txt', 'g')").error is None
        assert grand.run("fs.write('out/b/g.txt', 'g')").denied
        assert grand.run("fs.write('elsewhere.txt', 'g')").denied
        assert s.channel.requests == []  # nothing was put to a person: all of it was decided
        denials = [r for r in s.records() if r["kind"] == "denied"]
        assert any("[kid]" in r["summary"] for r in denials)
    finally:
        s.security.close()
        s.log.close()


def test_the_childs_asks_carry_its_name_and_a_person_still_decides(tmp_path: Path) -> None:
    s = make_session(tmp_path, channel=ScriptedChannel(Decision.DENY))
    outside = Path(tmp_path).resolve() / "outside"
    outside.mkdir()
    try:
        kid = child_of(s, "cleaner", [f"fs.write:{outside}/**"])
        out = kid.run(f"fs.write({str(outside / 'x.txt')!r}, 'no')")
        assert out.denied and "a person denied it" in str(out.error)
        (request,) = s.channel.requests
        assert request.summary.startswith("[cleaner] ")
        assert request.details["agent"] == "cleaner"
    finally:
        s.security.close()
        s.log.close()


def test_the_parents_session_grants_are_part_of_its_authority(tmp_path: Path) -> None:
    s = make_session(tmp_path, channel=ScriptedChannel(Decision.APPROVE_SESSION))
    outside = Path(tmp_path).resolve() / "outside"
    outside.mkdir()
    target = outside / "x.txt"
    try:
        kid = child_of(s, "kid", [f"fs.write:{outside}/**"])
        assert s.run(f"fs.write({str(target)!r}, 'parent')").error is None
        assert len(s.channel.requests) == 1
        assert kid.run(f"fs.write({str(target)!r}, 'kid')").error is None
        assert len(s.channel.requests) == 1  # held by the parent (session grant) and given
        assert target.read_text() == "kid"
    finally:
        s.security.close()
        s.log.close()


def test_a_child_cannot_widen_its_policy_or_reach_the_session(tmp_path: Path) -> None:
    s = make_session(tmp_path)
    try:
        kid = child_of(s, "kid", ["fs.read:**"])
        attempts = {
            "set_policy": "sec.with_policy(sec.policy.with_fallback('allow'))",
            "spawn": "sec.spawn('wider', ['fs.write:**'])",
            "approvals": "open(str(approvals), 'rb')",
        }
        approvals = s.workspace / ".cave" / "approvals.db"
        for what, code in attempts.items():
            out = kid.run(code, sec=kid.security, approvals=approvals)
            assert out.denied, (what, out.trace)
        assert kid.run("fs.write('w.txt', 'x')").denied  # given no writes at all
        assert kid.security.policy.fallback is Effect.DENY
    finally:
        s.security.close()
        s.log.close()


def test_parent_code_can_enter_a_childs_narrower_authority_not_another(tmp_path: Path) -> None:
    s = make_session(tmp_path)
    other = make_session(tmp_path / "other")
    try:
        kid = s.security.spawn("kid", ["fs.read:**"])
        code = (
            "fs.write('before.txt', 'parent may')\n"
            "with kid.agent_code():\n"
            "    try:\n"
            "        open(f'{ws}/inside.txt', 'w')\n"
            "    except PermissionError as e:\n"
            "        inside = str(e)\n"
            "fs.write('after.txt', 'parent again')\n"
        )
        out = s.run(code, kid=kid, ws=s.workspace)
        assert out.error is None, out.trace
        assert "inside" in out.namespace and not (s.workspace / "inside.txt").exists()
        assert (s.workspace / "after.txt").exists()
        stranger = s.run("with o.agent_code():\n    pass", o=other.security)
        assert stranger.denied and "another session" in str(stranger.error)
    finally:
        for x in (s, other):
            x.security.close()
            x.log.close()
