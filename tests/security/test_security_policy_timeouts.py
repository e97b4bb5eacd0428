"""Ask timeouts in the policy: the rule syntax, the TOML form and its errors, serialisation."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from cave._errors import PolicyFileError
from cave.security import Capability, Effect, Policy, Rule, format_policy, load_policy, parse_rule


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    w = tmp_path / "proj"
    w.mkdir()
    return Path(os.path.realpath(w))


@pytest.mark.parametrize(
    ("text", "timeout", "on_timeout"),
    [
        ("ask fs.write:/data/** timeout=300 on_timeout=deny", 300.0, Effect.DENY),
        ("ask fs.write:/data/** timeout=300", 300.0, Effect.DENY),
        ("ask net:* on_timeout=allow timeout=5m", 300.0, Effect.ALLOW),
        ("ask shell:git timeout=1.5s", 1.5, Effect.DENY),
        ("ask shell:git timeout=1h", 3600.0, Effect.DENY),
        ("ask shell:git", None, Effect.DENY),
    ],
)
def test_parse_rule_reads_timeout_options(
    text: str, timeout: float | None, on_timeout: Effect
) -> None:
    rule = parse_rule(text)
    assert (rule.effect, rule.timeout, rule.on_timeout) == (Effect.ASK, timeout, on_timeout)
    assert parse_rule(str(rule)) == rule  # str() writes what parse_rule reads


def test_a_path_with_spaces_keeps_them_and_options_come_from_the_end() -> None:
    rule = parse_rule("ask fs.write:/my data/** timeout=10")
    assert rule.capability == "fs.write:/my data/**" and rule.timeout == 10.0


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("allow fs.read:/x timeout=3", "only makes sense on an ask rule"),
        ("deny net:* timeout=3", "only makes sense on an ask rule"),
        ("ask fs.read:/x on_timeout=allow", "needs a timeout=SECONDS"),
        ("ask fs.read:/x timeout=0", "positive"),
        ("ask fs.read:/x timeout=-5", "not a duration"),
        ("ask fs.read:/x timeout=inf", "not a duration"),
        ("ask fs.read:/x timeout=soon", "not a duration"),
        ("ask fs.read:/x timeout=1 on_timeout=ask", "deny or allow"),
        ("ask fs.read:/x timeout=1 timeout=2", "given twice"),
        ("ask fs.read:/x timeot=1", "unknown option 'timeot=1'"),
    ],
)
def test_bad_timeout_options_are_refused_with_the_reason(text: str, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_rule(text)
    assert fragment in str(info.value)


def test_the_deciding_rule_carries_its_timeout(ws: Path) -> None:
    policy = Policy.default(ws).with_rules(
        parse_rule("ask fs.write:/data/** timeout=60"),
        parse_rule("ask fs.write:/data/keep/** timeout=5 on_timeout=allow"),
    )
    broad = policy.decide(Capability("fs.write", "/data/a.csv"))
    narrow = policy.decide(Capability("fs.write", "/data/keep/b.csv"))
    assert broad.rule is not None and broad.rule.timeout == 60.0
    assert narrow.rule is not None and narrow.rule.timeout == 5.0
    assert narrow.rule.on_timeout is Effect.ALLOW
    assert "timeout=5 on_timeout=allow" in narrow.reason
    outside = policy.decide(Capability("net", "example.com:443"))
    assert outside.rule is not None and outside.rule.timeout is None  # default rules wait


def test_timeouts_survive_a_checkpoint_round_trip_and_old_rule_lists_still_load(ws: Path) -> None:
    policy = Policy.default(ws).with_rules(parse_rule("ask net:* timeout=30 on_timeout=allow"))
    data = policy.to_dict()
    assert ["net:*", "ask", "session", {"timeout": 30.0, "on_timeout": "allow"}] in data["rules"]
    assert Policy.from_dict(data) == policy
    old = {"workspace": str(ws), "rules": [["net:*", "ask", "x"]]}  # before timeouts existed
    assert Policy.from_dict(old).rules[0].timeout is None
    with pytest.raises(ValueError, match="serialised policy"):
        Policy.from_dict({"workspace": str(ws), "rules": [["net:*", "ask", "x", 5]]})


def test_a_timeout_change_is_a_different_policy(ws: Path) -> None:
    a = Policy.default(ws).with_rules(parse_rule("ask net:* timeout=30"))
    b = Policy.default(ws).with_rules(parse_rule("ask net:* timeout=60"))
    assert a != b and len(b.rules) == len(a.rules)  # same capability: replaced, not added


def _write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


def test_toml_rule_tables_inline_and_as_sections(ws: Path, tmp_path: Path) -> None:
    _write(
        ws / "cave.toml",
        """
        [policy]
        "shell:git" = "ask"
        "fs.write:/data/**" = { effect = "ask", timeout = 300, on_timeout = "deny" }
        "net:*" = { effect = "ask", timeout = "2m", on_timeout = "allow" }
        "fs.read:/srv/**" = { effect = "allow" }

        [policy."env:HOME"]
        effect = "ask"
        timeout = 7.5
        """,
    )
    p = load_policy(ws, user_file=tmp_path / "none.toml")
    rules = {r.capability: r for r in p.rules}
    assert rules["fs.write:/data/**"].timeout == 300.0
    assert rules["fs.write:/data/**"].source == f"{ws / 'cave.toml'}:3"
    assert (rules["net:*"].timeout, rules["net:*"].on_timeout) == (120.0, Effect.ALLOW)
    assert rules["fs.read:/srv/**"].effect is Effect.ALLOW
    assert rules["shell:git"].timeout is None
    assert rules["env:HOME"].timeout == 7.5 and rules["env:HOME"].source.endswith(":7")
    shown = format_policy(p)
    assert "fs.write:/data/** timeout=300 on_timeout=deny" in shown
    assert "net:* timeout=120 on_timeout=allow" in shown


@pytest.mark.parametrize(
    ("rule", "fragment"),
    [
        ('{ effect = "ask", timeout = "soon" }', "not a duration"),
        ('{ effect = "ask", timeout = 0 }', "positive"),
        ('{ effect = "ask", timeout = true }', "number of seconds"),
        ('{ effect = "allow", timeout = 30 }', "only makes sense on an ask rule"),
        ('{ effect = "ask", on_timeout = "allow" }', "needs a timeout"),
        ('{ effect = "ask", timeout = 5, on_timeout = "maybe" }', 'must be "deny" or "allow"'),
        ('{ effect = "ask", timeout = 5, on_timeout = "ask" }', 'must be "deny" or "allow"'),
        ('{ effect = "ask", timout = 5 }', "unknown option 'timout'"),
        ("{ timeout = 5 }", "needs effect"),
        ('{ effect = "perhaps", timeout = 5 }', "the value must be"),
    ],
)
def test_toml_rule_table_errors_name_file_and_line(
    ws: Path, tmp_path: Path, rule: str, fragment: str
) -> None:
    path = ws / "cave.toml"
    path.write_text(f'[policy]\n"fs.read:a" = "allow"\n\n"net:*" = {rule}\n', encoding="utf-8")
    with pytest.raises(PolicyFileError) as info:
        load_policy(ws, user_file=tmp_path / "none.toml")
    err = info.value
    assert (err.path, err.line) == (str(path), 4), str(err)
    assert fragment in err.problem and "net:*" in err.problem
    assert f"{path}:4" in str(err)


def test_rule_constructor_checks_the_options_too() -> None:
    with pytest.raises(ValueError, match="only makes sense on an ask rule"):
        Rule("net:*", Effect.ALLOW, "x", 5.0)
    with pytest.raises(ValueError, match="needs a timeout"):
        Rule("net:*", Effect.ASK, "x", None, Effect.ALLOW)
    assert Rule("net:*", Effect.ASK, "x", "90s").timeout == 90.0  # type: ignore[arg-type]
