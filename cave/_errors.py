"""Every error Cave raises, in one tree.

Each error carries the fields that explain it and a message that says how to fix it. Errors never
log when they are built: whoever catches one decides whether it is worth a log line.

    CaveError
    ├── ConfigError                 bad option, bad TOML, unknown model name
    │   └── PolicyFileError         a policy file that does not parse (file and line)
    ├── ModelError                  anything between us and the model provider
    │   ├── MissingAPIKey           no key and no endpoint configured
    │   └── ModelResponseError      the provider answered with an error, after retries
    ├── RuntimeStateError           misuse of the agent namespace
    │   ├── NameNotFound            retrieve/update of a name the agent namespace does not hold
    │   └── TypeChangeRefused       update() that would change an object's type
    ├── TurnStopped                 a turn ended before the model answered in text
    │   ├── MaxStepsReached
    │   ├── TurnInterrupted         the user pressed stop
    │   ├── BudgetReached           a turn or session limit on steps, tokens or cost
    │   └── EmptyModelReply         the model answered with neither text nor code, twice
    ├── AuthorityError              the security layer could not decide (not a denial: see below)
    ├── ApprovalError               unknown request id, request already decided
    ├── AuditChainBroken            `cave audit verify` found an edited, missing or reordered record
    ├── CheckpointError             a checkpoint that cannot be saved or restored
    │   ├── CheckpointNotFound
    │   └── CheckpointTampered      signature or hash mismatch: refused before unpickling
    ├── ToolError                   a Deno tool that failed to register, start or answer
    ├── StrictModeUnavailable       the OS cannot confine strict mode's worker here (reasons)
    └── SkillError                  a malformed skill (file and reason), an unknown skill name

A *denial* is not a CaveError: primitives and the guard raise the built-in `PermissionError`,
because that is what agent code (and the model reading its traceback) already knows how to handle.
"""

from __future__ import annotations


class CaveError(Exception):
    """Base of every Cave error; `str()` is the full message, including the fix."""


class ConfigError(CaveError):
    """A setting that Cave cannot use."""


class PolicyFileError(ConfigError):
    """A policy file that does not parse or names an unknown capability."""

    def __init__(self, path: str, line: int | None, problem: str) -> None:
        self.path = path
        self.line = line
        self.problem = problem
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {problem}. Fix the file and run `%cave policy reload`.")


class ModelError(CaveError):
    """The model could not be reached or did not answer usefully."""


class MissingAPIKey(ModelError):
    """No API key and no alternative endpoint: the first `%%agent` cell says how to set one."""

    def __init__(self, provider: str = "anthropic") -> None:
        self.provider = provider
        super().__init__(
            "No Anthropic API key is set, so the agent cannot call a model.\n"
            "Fix it one of these ways, then re-run the cell:\n"
            "  * set ANTHROPIC_API_KEY in the environment that starts Jupyter "
            "(for example `export ANTHROPIC_API_KEY=sk-ant-...` before `make lab`), or\n"
            "  * in a cell: `%cave key` (prompts for the key without echoing it), or\n"
            "  * point at another Anthropic-compatible endpoint: set ANTHROPIC_BASE_URL, or "
            "`%cave model --base-url http://host:port`.\n"
            "The kernel is still running; your variables are untouched."
        )


class ModelResponseError(ModelError):
    """The provider answered with an error that retries did not cure."""

    def __init__(self, status: int | None, error_type: str, detail: str) -> None:
        self.status = status
        self.error_type = error_type
        self.detail = detail
        code = f"HTTP {status} " if status is not None else ""
        super().__init__(
            f"The model provider returned {code}{error_type}: {detail}\n"
            "Cave already retried. Check the endpoint and key (`%cave model`), wait and re-run "
            "the cell; the agent's variables are unchanged."
        )


class RuntimeStateError(CaveError):
    """Misuse of the agent namespace."""


class NameNotFound(RuntimeStateError, KeyError):
    """`retrieve`/`update` of a name the agent namespace does not hold."""

    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        self.known = known
        hint = ", ".join(sorted(known)[:20]) or "(nothing yet)"
        super().__init__(
            f"The agent namespace has no {name!r}. Names it holds: {hint}. "
            "Inject it first with `cave.inject(name, obj)`."
        )

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class TypeChangeRefused(RuntimeStateError, TypeError):
    """`update()` would replace an object with one of another type."""

    def __init__(self, name: str, old: type, new: type) -> None:
        self.name = name
        self.old = old
        self.new = new
        super().__init__(
            f"update({name!r}) would change its type from {old.__qualname__} to "
            f"{new.__qualname__}. Pass force=True if that is what you mean."
        )


class TurnStopped(CaveError):
    """A turn ended before the model gave its answer in text."""


class MaxStepsReached(TurnStopped):
    def __init__(self, steps: int) -> None:
        self.steps = steps
        super().__init__(
            f"The agent used all {steps} steps without giving a final answer. Its variables are "
            "kept: ask it to continue, or raise the limit with `%%agent --max-steps N`."
        )


class TurnInterrupted(TurnStopped):
    def __init__(self, step: int) -> None:
        self.step = step
        super().__init__(
            f"Interrupted during step {step}. The agent's variables hold whatever its code had "
            "assigned before the interrupt; the conversation records the interruption."
        )


class BudgetReached(TurnStopped):
    """A budget limit was reached; the turn ended at a step boundary, nothing was lost."""

    def __init__(self, limit: str, spent: str, allowed: str) -> None:
        self.limit = limit
        self.spent = spent
        self.allowed = allowed
        scope = "session" if limit.startswith("session") else "turn"
        super().__init__(
            f"Budget reached: {limit} (spent {spent} of {allowed}), so the turn stopped before "
            f"the next model call. The agent's variables and the conversation are kept; raise "
            f"the limit with `%cave budget {limit}=NEW`"
            + (" (or `%%agent --max-cost USD` for one cell)" if scope == "turn" else "")
            + " and ask it to continue."
        )


class EmptyModelReply(TurnStopped):
    """The model answered with neither text nor a tool call, and again when asked once more."""

    def __init__(self, step: int) -> None:
        self.step = step
        super().__init__(
            f"The model sent an empty reply (no text, no code) at step {step}, twice. Nothing was "
            "added to the conversation, so the next cell can go on: re-run the cell or rephrase "
            "the request."
        )


class AuthorityError(CaveError):
    """The security layer could not reach a decision (for example: no approval channel)."""


class ApprovalError(CaveError):
    """An approval request that cannot be decided as asked."""


class AuditChainBroken(CaveError):
    """An audit log whose hash chain does not verify."""

    def __init__(self, path: str, line: int, problem: str) -> None:
        self.path = path
        self.line = line
        self.problem = problem
        super().__init__(
            f"{path}:{line}: {problem}. Records from this line on cannot be trusted; keep the file "
            "for investigation and start a new log."
        )


class CheckpointError(CaveError):
    """A checkpoint that cannot be saved or restored."""


class CheckpointNotFound(CheckpointError):
    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        self.known = known
        hint = ", ".join(known[-10:]) or "(none yet)"
        super().__init__(
            f"No checkpoint named {name!r}. Known: {hint}. List them with `%checkpoint list`."
        )


class CheckpointTampered(CheckpointError):
    """Signature or hash mismatch: refused before a single byte was unpickled."""

    def __init__(self, what: str, problem: str) -> None:
        self.what = what
        self.problem = problem
        super().__init__(
            f"Refusing to restore {what}: {problem}. Nothing was unpickled. If you moved the "
            "session between users, copy the signing key too (see `cave checkpoints --help`)."
        )


class ToolError(CaveError):
    """A Deno tool that failed to register, start, or answer.

    ``kind`` says which: ``register``, ``error`` (the TypeScript threw: ``js_name``,
    ``js_message`` and ``stack`` are its own), ``timeout``, ``limit`` (syscalls, result size),
    ``crash`` (the Deno process died; the next call starts a new one) or ``protocol``.
    """

    def __init__(
        self,
        message: str,
        *,
        tool: str | None = None,
        kind: str = "error",
        js_name: str | None = None,
        js_message: str | None = None,
        stack: str | None = None,
    ) -> None:
        self.tool = tool
        self.kind = kind
        self.js_name = js_name
        self.js_message = js_message
        self.stack = stack
        super().__init__(message)


class StrictModeUnavailable(CaveError):
    """Strict mode cannot be enforced here: the OS lacks what the confinement needs.

    Raised instead of confining partially: a worker that is only half confined must not run
    agent code believing it is strict.
    """

    def __init__(self, reasons: tuple[str, ...] | list[str]) -> None:
        self.reasons = tuple(reasons)
        lines = "\n".join(f"  * {r}" for r in self.reasons) or "  * (no reason given)"
        super().__init__(
            "Strict mode's OS confinement cannot be enforced:\n"
            f"{lines}\n"
            "No agent code runs unconfined: fix the above, or use guard mode (`%cave mode guard`)."
        )


class SkillError(CaveError):
    """A skill that cannot be used: which file, and what is wrong with it."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")
