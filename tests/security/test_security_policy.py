"""Policy engine: capability patterns, precedence, defaults, TOML loading and its errors."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from cave._errors import PolicyFileError
from cave.security import (
    Capability,
    Effect,
    Grant,
    Policy,
    Rule,
    format_policy,
    load_policy,
    parse_rule,
)
from cave.security._grants import GrantBook


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    w = tmp_path / "proj"
    w.mkdir()
    return Path(os.path.realpath(w))


def fs(kind: str, path: Path | str) -> Capability:
    return Capability(kind, str(path))


def effect(policy: Policy, cap: Capability) -> Effect:
    return policy.decide(cap).effect


# -- defaults ------------------------------------------------------------------------------
def test_default_policy_reads_and_writes_inside_the_workspace(ws: Path) -> None:
    p = Policy.default(ws)
    assert effect(p, fs("fs.read", ws / "data.csv")) is Effect.ALLOW
    assert effect(p, fs("fs.write", ws / "out" / "x.parquet")) is Effect.ALLOW
    assert effect(p, fs("fs.read", ws)) is Effect.ALLOW  # listing the workspace itself


@pytest.mark.parametrize(
    "rel", [".env", "sub/.env", ".env.local", ".git/config", ".ssh/id_rsa", "k.pem", "a/b/c.key"]
)
def test_default_policy_asks_for_secrets_inside_the_workspace(ws: Path, rel: str) -> None:
    p = Policy.default(ws)
    assert effect(p, fs("fs.read", ws / rel)) is Effect.ASK
    assert effect(p, fs("fs.write", ws / rel)) is Effect.ASK


def test_default_policy_asks_outside_and_for_deletes_shell_net_env(ws: Path) -> None:
    p = Policy.default(ws)
    assert effect(p, fs("fs.read", "/etc/passwd")) is Effect.ASK
    assert effect(p, fs("fs.write", ws.parent / "sibling.txt")) is Effect.ASK
    assert effect(p, fs("fs.read", str(ws) + "x/file")) is Effect.ASK  # prefix is not a parent
    assert effect(p, fs("fs.delete", ws / "data.csv")) is Effect.ASK
    assert effect(p, Capability("shell", "/usr/bin/git")) is Effect.ASK
    assert effect(p, Capability("net", "example.com:443")) is Effect.ASK
    assert effect(p, Capability("env", "GITHUB_TOKEN")) is Effect.ASK
    assert effect(p, Capability("env", "AWS_SECRET_ACCESS_KEY")) is Effect.ASK
    # a short list of harmless names is allowed (cave.security._environ.DEFAULT_ENV_ALLOW)
    for name in ("HOME", "PATH", "LANG", "LC_ALL", "TZ", "TERM", "PYTHONPATH"):
        assert effect(p, Capability("env", name)) is Effect.ALLOW, name
    assert effect(p, Capability("env", "PYTHON")) is Effect.ALLOW  # PYTHON* includes it
    assert effect(p, Capability("env", "LC")) is Effect.ASK  # LC_* does not
    assert effect(p, fs("fs.write", ws / "cave.toml")) is Effect.ASK


def test_default_policy_lets_imports_read_the_python_installation(ws: Path) -> None:
    import json

    p = Policy.default(ws)
    assert effect(p, fs("fs.read", os.path.realpath(json.__file__))) is Effect.ALLOW
    assert effect(p, fs("fs.write", os.path.realpath(json.__file__))) is Effect.ASK


# -- precedence ----------------------------------------------------------------------------
def test_deny_wins_over_a_more_specific_allow(ws: Path) -> None:
    p = Policy(ws, (Rule("fs.read:/**", Effect.DENY), Rule("fs.read:data/x.csv", Effect.ALLOW)))
    v = p.decide(fs("fs.read", ws / "data" / "x.csv"))
    assert v.effect is Effect.DENY and v.rule is not None and v.rule.capability == "fs.read:/**"


def test_most_specific_match_wins(ws: Path) -> None:
    p = Policy(
        ws,
        (
            Rule("fs.write:**", Effect.ASK),
            Rule("fs.write:out/**", Effect.ALLOW),
            Rule("fs.write:out/**/*.lock", Effect.ASK),
        ),
    )
    assert effect(p, fs("fs.write", ws / "a.txt")) is Effect.ASK
    assert effect(p, fs("fs.write", ws / "out" / "a.txt")) is Effect.ALLOW
    assert effect(p, fs("fs.write", ws / "out" / "deep" / "x.lock")) is Effect.ASK


def test_a_user_rule_can_outrank_a_default_secret_rule(ws: Path) -> None:
    p = Policy.default(ws).with_rules(Rule("fs.read:.git/**", Effect.ALLOW))
    assert effect(p, fs("fs.read", ws / ".git" / "HEAD")) is Effect.ALLOW
    assert effect(p, fs("fs.read", ws / "sub" / ".git" / "HEAD")) is Effect.ASK


def test_more_fixed_text_wins_at_equal_reach(ws: Path) -> None:
    p = Policy(ws, (Rule("net:example.com", Effect.ALLOW), Rule("net:example.co?", Effect.ASK)))
    # same reach, example.com has more fixed characters: allow
    assert effect(p, Capability("net", "example.com:443")) is Effect.ALLOW
    p3 = Policy(ws, (Rule("env:AB", Effect.ALLOW), Rule("fs.read:x", Effect.ALLOW)))
    assert effect(p3, Capability("env", "AC")) is Effect.ASK  # the fallback


def test_equal_specificity_ask_beats_allow(ws: Path) -> None:
    p = Policy(ws, (Rule("env:A?", Effect.ALLOW), Rule("env:A*", Effect.ASK)))
    assert effect(p, Capability("env", "AB")) is Effect.ASK
    p2 = Policy(ws, (Rule("env:A?", Effect.ASK), Rule("env:?B", Effect.ALLOW)))
    assert effect(p2, Capability("env", "AB")) is Effect.ALLOW  # ?B reaches further


def test_later_rule_for_same_capability_replaces_earlier(ws: Path) -> None:
    p = Policy(ws, (Rule("shell:git", Effect.ASK), Rule("shell:git", Effect.ALLOW)))
    assert len(p.rules) == 1 and p.rules[0].effect is Effect.ALLOW
    assert effect(p.without("shell:git"), Capability("shell", "/usr/bin/git")) is Effect.ASK


def test_fs_shorthand_covers_all_three_kinds(ws: Path) -> None:
    p = Policy(ws, (Rule("fs:/srv/**", Effect.DENY),), Effect.ALLOW)
    for kind in ("fs.read", "fs.write", "fs.delete"):
        assert effect(p, fs(kind, "/srv/x")) is Effect.DENY
    assert effect(p, fs("fs.read", "/srvx")) is Effect.ALLOW


def test_shell_names_match_only_programs_on_the_trusted_path(ws: Path) -> None:
    p = Policy(ws, (Rule("shell:git", Effect.ALLOW),), path_dirs=frozenset({"/usr/bin"}))
    assert effect(p, Capability("shell", "/usr/bin/git")) is Effect.ALLOW
    assert effect(p, Capability("shell", str(ws / "git"))) is Effect.ASK  # a planted "git"
    p2 = p.with_rules(Rule(f"shell:{ws}/tools/*", Effect.ALLOW))
    assert effect(p2, Capability("shell", str(ws / "tools" / "lint"))) is Effect.ALLOW


def test_net_patterns_with_and_without_ports(ws: Path) -> None:
    p = Policy(
        ws,
        (
            Rule("net:*.github.com:443", Effect.ALLOW),
            Rule("net:localhost", Effect.ALLOW),
            Rule("net:evil.github.com", Effect.DENY),
            Rule("net:[::1]:8080", Effect.ALLOW),
            Rule("net:unix:/run/*.sock", Effect.DENY),
        ),
    )
    assert effect(p, Capability("net", "api.github.com:443")) is Effect.ALLOW
    assert effect(p, Capability("net", "api.github.com:22")) is Effect.ASK
    assert effect(p, Capability("net", "localhost:9999")) is Effect.ALLOW
    assert effect(p, Capability("net", "evil.github.com:443")) is Effect.DENY
    assert effect(p, Capability("net", "[::1]:8080")) is Effect.ALLOW
    assert effect(p, Capability("net", "unix:/run/docker.sock")) is Effect.DENY


@pytest.mark.parametrize(
    "bad",
    ["fs.raed:x", "shell", "net:a:b:c", "net:host:http", "fs.read:../up/**", "fs.read:[abc"],
)
def test_bad_rules_are_refused_with_a_reason(ws: Path, bad: str) -> None:
    with pytest.raises(ValueError) as info:
        Policy(ws, (Rule(bad, Effect.ALLOW),))
    assert str(info.value)


def test_parse_rule_for_the_magic() -> None:
    rule = parse_rule("allow fs.read:/data/**")
    assert rule == Rule("fs.read:/data/**", Effect.ALLOW, "session")
    with pytest.raises(ValueError, match="allow, ask or deny"):
        parse_rule("permit fs.read:/x")


def test_policy_round_trips_through_a_dict(ws: Path) -> None:
    p = Policy.default(ws).with_rules(Rule("net:example.com", Effect.ALLOW))
    q = Policy.from_dict(p.to_dict())
    assert q == p


def test_decisions_are_cached_but_policies_stay_immutable(ws: Path) -> None:
    p = Policy.default(ws)
    cap = fs("fs.read", ws / "a")
    assert p.decide(cap) is p.decide(cap)
    q = p.with_rules(Rule("fs.read:a", Effect.DENY))
    assert effect(q, cap) is Effect.DENY and effect(p, cap) is Effect.ALLOW


# -- grants --------------------------------------------------------------------------------
def test_grants_have_no_public_constructor() -> None:
    with pytest.raises(TypeError, match="no public constructor"):
        Grant("id", "fs.read:/x", "once", 0.0, None)  # type: ignore[call-arg]


def test_grant_book_once_session_and_subtree() -> None:
    book = GrantBook()
    once = book.add("fs.write:/tmp/out.csv", "once", "r1")
    assert book.find(Capability("fs.write", "/tmp/out.csv")) == once
    assert book.find(Capability("fs.write", "/tmp/other.csv")) is None
    assert book.consume(once) and book.find(Capability("fs.write", "/tmp/out.csv")) is None
    session = book.add("shell:/usr/bin/git", "session", "r2")
    assert not book.consume(session)
    assert book.find(Capability("shell", "/usr/bin/git")) == session
    tree = book.add("fs.delete:/tmp/build/**", "once", "r3")
    assert book.find(Capability("fs.delete", "/tmp/build/a/b.o")) == tree
    assert book.find(Capability("fs.delete", "/tmp/build")) == tree
    assert book.find(Capability("fs.delete", "/tmp/buildx")) is None
    snap = book.snapshot()
    other = GrantBook()
    other.restore(snap)
    assert {g.capability for g in other.all()} == {g.capability for g in book.all()}


# -- TOML ----------------------------------------------------------------------------------
def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


def test_load_policy_layers_user_then_project(ws: Path, tmp_path: Path) -> None:
    user = write(
        tmp_path / "user.toml",
        """
        [policy]
        "net:api.github.com:443" = "allow"
        "shell:git" = "allow"
        """,
    )
    write(
        ws / "cave.toml",
        """
        # project policy
        [policy]
        "shell:git" = "deny"
        "fs.read:/data/**" = "allow"
        """,
    )
    p = load_policy(ws, user_file=user)
    assert effect(p, Capability("net", "api.github.com:443")) is Effect.ALLOW
    assert effect(p, fs("fs.read", "/data/x")) is Effect.ALLOW
    git = [r for r in p.rules if r.capability == "shell:git"]
    assert len(git) == 1 and git[0].effect is Effect.DENY
    assert git[0].source == f"{ws / 'cave.toml'}:3"
    assert effect(p, fs("fs.read", ws / "a.csv")) is Effect.ALLOW  # defaults kept


def test_load_policy_without_files_is_the_default(ws: Path, tmp_path: Path) -> None:
    p = load_policy(ws, user_file=tmp_path / "missing.toml")
    assert p == Policy.default(ws)


def test_defaults_false_drops_the_default_rules(ws: Path, tmp_path: Path) -> None:
    text = '[policy]\ndefaults = false\nfallback = "deny"\n"fs.read:a" = "allow"\n'
    write(ws / "cave.toml", text)
    p = load_policy(ws, user_file=tmp_path / "none.toml")
    assert [r.capability for r in p.rules] == ["fs.read:a"]
    assert effect(p, fs("fs.read", ws / "b")) is Effect.DENY


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ('[policy]\n"fs.read:a" = "allow"\n"fs.raed:b" = "allow"\n', 3, "unknown capability kind"),
        ('[policy]\n\n"shell:git" = "maybe"\n', 3, "allow"),
        ('[policy]\n"fs.read:a" = "allow"\n"net:a:b:c" = "deny"\n', 3, "IPv6"),
        ('[policy]\n"fs.read:a" = "allow"\n"fs.read:a = "deny"\n', 3, "not valid TOML"),
        ("[policy]\nfallback = 3\n", 2, "allow"),
        ('policy = "open"\n', 1, "must be a table"),
        ('[policy]\n"fs.write:../x" = "allow"\n', 2, "'..'"),
    ],
)
def test_policy_file_errors_name_file_and_line(
    ws: Path, tmp_path: Path, text: str, line: int, fragment: str
) -> None:
    path = ws / "cave.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(PolicyFileError) as info:
        load_policy(ws, user_file=tmp_path / "none.toml")
    err = info.value
    assert err.path == str(path) and err.line == line, str(err)
    assert fragment in err.problem
    assert f"{path}:{line}" in str(err) and "cave policy reload" in str(err)


def test_format_policy_lists_rules_sources_and_fallback(ws: Path) -> None:
    text = format_policy(Policy.default(ws).with_rules(parse_rule("deny net:evil.com")))
    assert "deny    net:evil.com" in text and "session" in text
    assert "fs.read:/**/.env" in text and "anything else: ask" in text
    first = text.index("fs.read:")
    assert text.index("fs.write:") > first
