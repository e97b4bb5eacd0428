"""The agent's persistent namespace: what the user injects, what the agent makes, the primitives.

Objects are bound, never copied: ``inject(name, df)`` puts *that* DataFrame in the namespace, so a
gigabyte costs nothing to share and the user sees the agent's changes. The namespace dict is the
single source of truth; ``injected`` is metadata about some of its names (a name the agent deletes
drops out of it).

Primitives (``fs``, ``shell``, ...) are re-bound before every run, so agent code that assigns over
``fs`` loses its own assignment, not the primitive. ``exit``/``quit`` are shadowed the same way by
versions that end the step without closing ``sys.stdin`` (the ``site`` builtins do) or asking the
kernel to shut down (IPython's do, while a cell runs).

Separation from the user's namespace is a convenience, not a security boundary: agent code runs in
the kernel process and can reach anything the process can (``get_ipython()``, ``gc``, frames).
The security layer (primitives, guard, audit) is what bounds its effects.
"""

from __future__ import annotations

import builtins
import keyword
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Set
from dataclasses import dataclass
from types import MappingProxyType, ModuleType
from typing import Any

from .._errors import NameNotFound, RuntimeStateError, TypeChangeRefused
from ._executor import ExecutionResult, Executor
from ._held import LoadsAsAgentCode
from ._manifest import build_manifest, type_name

__all__ = ["AgentRuntime", "InjectedInfo"]

AGENT_MODULE_NAME = "__cave_agent__"


@dataclass(frozen=True)
class InjectedInfo:
    """What we know about an injected name beyond its value."""

    description: str | None
    """Shown next to the object in the manifest."""
    injected_at: float
    """``time.time()`` of the last ``inject``."""


class _SafeExit:
    """``exit()``/``quit()`` for agent code: raises ``SystemExit``, which ends only the step."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"Use {self.name}() to end this step; the runtime keeps its variables."

    def __call__(self, code: Any = None) -> None:
        raise SystemExit(code)


_RESERVED = {"exit": _SafeExit("exit"), "quit": _SafeExit("quit")}


def _is_dunder(name: str) -> bool:
    return name.startswith("__") and name.endswith("__")


class AgentRuntime:
    """A persistent namespace the model operates by writing Python, plus its executor."""

    def __init__(self, **executor_options: Any) -> None:
        """``executor_options`` go to :class:`Executor` (``head_chars``, ``tail_chars``, ...)."""
        self.namespace: dict[str, Any] = {"__name__": AGENT_MODULE_NAME, "__builtins__": builtins}
        self.executor: Any = Executor(self.namespace, **executor_options)
        self._in_process = self.executor
        self._injected: dict[str, InjectedInfo] = {}
        self._primitives: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.manifest_sections: list[Callable[[], str]] = []
        """More text for the manifest (registered tools, ...): each is called per manifest."""
        self._bind_fixed()

    # ----------------------------------------------------------------- names

    def _check_name(self, name: Any, action: str) -> None:
        if not isinstance(name, str) or not name.isidentifier():
            raise RuntimeStateError(
                f"{action}({name!r}): a name must be a valid Python identifier (letters, digits, "
                "underscores, not starting with a digit), e.g. 'sales_df'."
            )
        if keyword.iskeyword(name):
            raise RuntimeStateError(
                f"{action}({name!r}): {name!r} is a Python keyword; agent code could never use it. "
                f"Pick another name, e.g. {name + '_'!r}."
            )
        if _is_dunder(name):
            raise RuntimeStateError(
                f"{action}({name!r}): dunder names are reserved for Python itself. "
                f"Use a plain name, e.g. {name.strip('_') or 'value'!r}."
            )
        if name in _RESERVED:
            raise RuntimeStateError(
                f"{action}({name!r}): {name!r} is reserved (it ends the agent's step). "
                "Pick another name."
            )

    def _known(self) -> list[str]:
        return [*self._injected, *(n for n, _ in self.agent_variables())]

    def _bind_fixed(self) -> None:
        """Re-bind primitives and the safe exit()/quit() over whatever agent code assigned."""
        self.namespace.update(_RESERVED)
        self.namespace.update(self._primitives)
        self.namespace["__builtins__"] = builtins
        self.namespace["__name__"] = AGENT_MODULE_NAME

    # ----------------------------------------------------------------- objects

    def inject(self, name: str, obj: Any, description: str | None = None) -> None:
        """Bind ``obj`` itself (same ``id()``) under ``name``, to be described in the manifest."""
        self._check_name(name, "inject")
        with self._lock:
            if name in self._primitives:
                raise RuntimeStateError(
                    f"inject({name!r}): {name!r} is a primitive the agent relies on. "
                    "Inject your object under another name."
                )
            self.namespace[name] = obj
            self._injected[name] = InjectedInfo(description, time.time())
        prepare = getattr(self.executor, "prepare", None)
        if prepare is not None:  # strict mode: start copying large buffers into shared memory
            prepare(name, obj)

    def retrieve(self, name: str) -> Any:
        """The object the namespace holds under ``name`` (injected or made by the agent)."""
        try:
            if isinstance(name, str) and not _is_dunder(name) and name not in _RESERVED:
                return self.namespace[name]
        except KeyError:
            pass
        raise NameNotFound(str(name), self._known())

    def update(self, name: str, obj: Any, *, force: bool = False) -> None:
        """Replace the object under ``name``; refuses a type change unless ``force``."""
        with self._lock:
            if name in self._primitives:
                raise RuntimeStateError(
                    f"update({name!r}): {name!r} is a primitive; primitives are set with "
                    "add_primitive() and cannot be replaced from outside."
                )
            if not isinstance(name, str) or _is_dunder(name) or name in _RESERVED:
                raise NameNotFound(str(name), self._known())
            if name not in self.namespace:
                raise NameNotFound(name, self._known())
            old = self.namespace[name]
            if type(old) is not type(obj) and not force:
                raise TypeChangeRefused(name, type(old), type(obj))
            self.namespace[name] = obj

    def remove(self, name: str) -> None:
        """Delete ``name`` from the namespace (and its injected metadata)."""
        with self._lock:
            if name in self._primitives:
                raise RuntimeStateError(
                    f"remove({name!r}): {name!r} is a primitive and stays bound for the session."
                )
            if not isinstance(name, str) or _is_dunder(name) or name in _RESERVED:
                raise NameNotFound(str(name), self._known())
            if name not in self.namespace:
                self._injected.pop(name, None)
                raise NameNotFound(name, self._known())
            del self.namespace[name]
            self._injected.pop(name, None)

    def restore(self, name: str, obj: Any, info: InjectedInfo | None = None) -> None:
        """Bind ``obj`` as a checkpoint restore does: as injected with ``info``, or as the agent's.

        Not a fresh ``inject``: the original ``injected_at`` is kept and no name checks are redone
        (the name was valid when saved), but primitives and reserved names are still refused.
        """
        with self._lock:
            if name in self._primitives or name in _RESERVED or _is_dunder(name):
                raise RuntimeStateError(
                    f"restore({name!r}): {name!r} is a primitive or reserved name; the restoring "
                    "session provides it."
                )
            self.namespace[name] = obj
            if info is None:
                self._injected.pop(name, None)
            else:
                self._injected[name] = info

    @property
    def injected(self) -> Mapping[str, InjectedInfo]:
        """Injected names still in the namespace, in injection order (a read-only snapshot)."""
        with self._lock:
            return MappingProxyType(
                {n: i for n, i in self._injected.items() if n in self.namespace}
            )

    def agent_variables(self, *, last: int | None = None) -> list[tuple[str, str]]:
        """``(name, type name)`` of what the agent made: not injected, primitive, dunder, module.

        ``last``: only the newest N, found from the end of the namespace, so a turn's cost does
        not grow with a namespace of thousands of names (the prompt shows the newest 50)."""
        skip = self._injected.keys() | self._primitives.keys() | _RESERVED.keys()
        if last is not None:
            try:  # newest first without copying every name: the dict's own reverse iterator
                return self._variables(reversed(self.namespace), skip, last)
            except RuntimeError:  # a thread bound a name meanwhile: copy, always right
                return self._variables(reversed(list(self.namespace)), skip, last)
        return self._variables(iter(list(self.namespace)), skip, last)

    def _variables(self, names: Iterator[str], skip: Set[str],
                   last: int | None) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        for name in names:
            if last is not None and len(out) >= last:
                break
            value = self.namespace.get(name)
            if name in skip or _is_dunder(name) or isinstance(value, ModuleType):
                continue
            if isinstance(value, LoadsAsAgentCode):  # the held value's type, not the holder's
                out.append((name, value.type_name))
            else:
                out.append((name, type_name(value)))
        return out[::-1] if last is not None else out

    # ----------------------------------------------------------------- primitives

    def add_primitive(self, name: str, obj: Any) -> None:
        """Bind ``obj`` as a primitive: re-bound before each run, never an agent variable."""
        self._check_name(name, "add_primitive")
        with self._lock:
            if name in self._injected and name in self.namespace:
                raise RuntimeStateError(
                    f"add_primitive({name!r}): an injected object already uses that name. "
                    f"remove({name!r}) first or pick another primitive name."
                )
            self._primitives[name] = obj
            self.namespace[name] = obj

    @property
    def primitives(self) -> Mapping[str, Any]:
        return MappingProxyType(dict(self._primitives))

    # ----------------------------------------------------------------- prompt and execution

    def manifest(self, *, variables: bool = True) -> str:
        """Bounded description of injected objects (and the agent's variables), for the prompt.

        The agent loop passes ``variables=False``: the variables change every step and would spoil
        the prompt cache for the manifest, so each turn's prompt lists them instead.
        """
        missing = object()
        items = [
            (name, value, info.description)
            for name, info in self.injected.items()
            if (value := self.namespace.get(name, missing)) is not missing
        ]
        text = build_manifest(items, variables=self.agent_variables() if variables else ())
        extra = [section() for section in list(self.manifest_sections)]
        return "\n".join([text, *(e for e in extra if e)])

    def run(
        self,
        code: str,
        *,
        timeout: float | None = None,
        echo: bool = True,
        label: str = "step",
    ) -> ExecutionResult:
        """Run model-written ``code`` in this namespace; see :meth:`Executor.run`."""
        with self._lock:
            self._bind_fixed()
        return self.executor.run(code, timeout=timeout, echo=echo, label=label)

    def interrupt(self) -> None:
        """Stop the current run (the stop button); does nothing if nothing is running."""
        self.executor.interrupt()

    def use_executor(self, executor: Any | None) -> None:
        """Run steps with ``executor`` (strict mode's worker); None: the in-process one again.

        It must have :class:`Executor`'s ``run``/``interrupt``. The namespace stays this one.
        """
        self.executor = self._in_process if executor is None else executor
