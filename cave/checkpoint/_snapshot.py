"""Turning a live namespace into entries to store, and entries back into a namespace.

An *entry* is one pickle: usually one object (bound to one or more names), or several objects that
refer to each other in a cycle (pickled together, since separate pickles cannot rebuild a cycle).
References between entries are by name (see `_pickling`); restoring follows them, so an entry is
rebuilt after the entries it refers to, and fails cleanly if one of them failed.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

from . import _fingerprint, _pickling
from ._protocol import Problem

# Values whose identity carries no meaning (interned, cached or immutable scalars): never turned
# into references, or `x = 1` would make every 1 in the namespace depend on `x`.
_SCALARS = (int, float, complex, bool, str, bytes, type(None), type(Ellipsis), range, slice)


def type_name(obj: Any) -> str:
    t = type(obj)
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


@dataclass
class Entry:
    members: list[tuple[list[str], str]]
    """(names bound to the object, its type name) for each object of the entry."""
    pickled: _pickling.Pickled
    fp: str


def select(namespace: Mapping[str, Any], skip: Collection[str]) -> dict[str, Any]:
    """The names a checkpoint holds: all but dunders and ``skip`` (modules are kept, by name)."""
    return {
        k: v
        for k, v in namespace.items()
        if isinstance(k, str) and k not in skip and not (k.startswith("__") and k.endswith("__"))
    }


def snapshot(
    namespace: Mapping[str, Any], skip: Collection[str] = ()
) -> tuple[list[Entry], list[Problem]]:
    """Pickle every selected object of ``namespace``; unpicklable ones become `Problem`s."""
    chosen = select(namespace, skip)
    by_id: dict[int, list[str]] = {}
    objs: dict[int, Any] = {}
    for name, value in chosen.items():
        by_id.setdefault(id(value), []).append(name)
        objs[id(value)] = value
    for names in by_id.values():
        names.sort()
    canon = {i: names[0] for i, names in by_id.items()}
    names_by_id = {i: n for i, n in canon.items() if not isinstance(objs[i], _SCALARS)}
    # Skipped names (the primitives, for example) are referred to by name too, and resolved
    # from the namespace the checkpoint is restored into.
    for name, value in namespace.items():
        if name in skip and not isinstance(value, _SCALARS):
            names_by_id.setdefault(id(value), name)
    ns = namespace if isinstance(namespace, dict) else None

    def dump(ids: list[int]) -> _pickling.Pickled:
        target = objs[ids[0]] if len(ids) == 1 else tuple(objs[i] for i in ids)
        return _pickling.dump(target, namespace=ns, names_by_id=names_by_id, own_ids=ids)

    pickled: dict[int, _pickling.Pickled] = {}
    failed: dict[int, str] = {}
    for i in by_id:
        try:
            pickled[i] = dump([i])
        except Exception as exc:  # anything the pickler or a reducer raises
            failed[i] = _reason(exc)
    id_of = {name: i for i, names in by_id.items() for name in names}
    edges = {i: {id_of[r] for r in p.refs if r in id_of} for i, p in pickled.items()}

    groups = _cycles(edges)
    for group in groups:
        for i in group:
            pickled.pop(i, None)
        try:
            joint = dump(group)
        except Exception as exc:
            for i in group:
                failed[i] = _reason(exc)
            continue
        pickled[group[0]] = joint
        edges[group[0]] = {id_of[r] for r in joint.refs if r in id_of} - set(group)
    grouped = {group[0]: group for group in groups}

    # An object that refers to an unsaved one cannot be restored either.
    changed = True
    while changed:
        changed = False
        for i in list(pickled):
            bad = [j for j in edges.get(i, ()) if j in failed]
            if bad:
                reason = f"refers to {canon[bad[0]]!r}, which could not be saved"
                for j in grouped.get(i, [i]):
                    failed[j] = reason
                del pickled[i]
                changed = True

    entries = [
        Entry(
            [(by_id[j], type_name(objs[j])) for j in grouped.get(i, [i])],
            p,
            _fingerprint.fingerprint(p.parts()),
        )
        for i, p in pickled.items()
    ]
    problems = [
        Problem(name, type_name(objs[i]), reason)
        for i, reason in failed.items()
        for name in by_id[i]
    ]
    problems.sort(key=lambda p: p.name)
    return entries, problems


def _cycles(edges: Mapping[int, set[int]]) -> list[list[int]]:
    """Strongly connected components with more than one node (Tarjan, iterative)."""
    index: dict[int, int] = {}
    low: dict[int, int] = {}
    stack: list[int] = []
    on_stack: set[int] = set()
    out: list[list[int]] = []
    counter = 0
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, it = work[-1]
            advanced = False
            for nxt in it:
                if nxt not in edges:
                    continue
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(edges.get(nxt, ())))))
                    advanced = True
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    comp.append(top)
                    if top == node:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


class _DependencyFailed(Exception):
    pass


def restore(
    entries: list[tuple[list[tuple[list[str], str]], memoryview]],
    into: MutableMapping[str, Any],
) -> list[Problem]:
    """Rebuild entries into ``into``; returns the problems of those that could not be rebuilt.

    ``entries`` pairs each manifest entry's members with its verified payload.
    """
    where: dict[str, int] = {}
    for k, (members, _payload) in enumerate(entries):
        for names, _type in members:
            for name in names:
                where[name] = k
    done: dict[int, list[Any]] = {}
    failed: dict[int, str] = {}
    busy: set[int] = set()
    problems: list[Problem] = []

    def build(k: int) -> list[Any]:
        if k in done:
            return done[k]
        if k in failed:
            raise _DependencyFailed(failed[k])
        if k in busy:
            raise _DependencyFailed("reference cycle between separately pickled entries")
        members, payload = entries[k]
        busy.add(k)
        try:
            obj = _pickling.load(payload, namespace=into, resolve=resolve)
        except _DependencyFailed as exc:
            failed[k] = str(exc)
            raise
        except Exception as exc:
            failed[k] = _reason(exc)
            raise _DependencyFailed(failed[k]) from None
        finally:
            busy.discard(k)
        objs = [obj] if len(members) == 1 else list(obj)
        done[k] = objs
        for (names, _type), value in zip(members, objs, strict=True):
            for name in names:
                into[name] = value
        return objs

    def resolve(name: str) -> Any:
        if name not in where:
            if name in into:  # a skipped name, such as a primitive, provided by the new session
                return into[name]
            raise _DependencyFailed(f"refers to {name!r}, which the restoring session lacks")
        k = where[name]
        try:
            objs = build(k)
        except _DependencyFailed as exc:
            raise _DependencyFailed(
                f"refers to {name!r}, which could not be restored ({exc})"
            ) from None
        for (names, _type), value in zip(entries[k][0], objs, strict=True):
            if name in names:
                return value
        raise AssertionError(name)  # pragma: no cover

    for k, (members, _payload) in enumerate(entries):
        try:
            build(k)
        except _DependencyFailed:
            for names, tname in members:
                problems.extend(Problem(n, tname, failed[k], "restore") for n in names)
    problems.sort(key=lambda p: p.name)
    return problems
