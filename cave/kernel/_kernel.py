"""CaveKernel: the stock IPython kernel plus agent cells. Deliberately thin.

It sets kernel info, hands provider keys to a credential-holding process, installs the
agent-cell transformer and magics, makes the stop button reach a running turn, and wires
checkpoints: auto-checkpoint after each turn, and resume from a checkpoint at start. Everything
else lives below it.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

from ipykernel.ipkernel import IPythonKernel
from traitlets import Bool, Float, Int, Unicode, default

from .. import __version__
from .._env import AUTOCHECKPOINT_ENV, AUTOCHECKPOINT_KEEP_ENV, RESUME_ENV, STORE_ENV


class CaveKernel(IPythonKernel):
    implementation = "cave"
    implementation_version = __version__
    banner = f"Cave {__version__}: an IPython kernel with an agent. Ask it with %%agent."

    model = Unicode(
        None,
        allow_none=True,
        config=True,
        help="Model id for agent cells (default: cave.models DEFAULT_MODEL).",
    )
    base_url = Unicode(
        None,
        allow_none=True,
        config=True,
        help="Anthropic-compatible endpoint (default: ANTHROPIC_BASE_URL or the API).",
    )
    max_steps = Int(20, config=True, help="Model calls per agent turn.")
    code_timeout = Float(600.0, config=True, help="Seconds one agent code step may run.")
    resume = Unicode(
        None,
        allow_none=True,
        config=True,
        help="Checkpoint to restore when the kernel starts (default: $CAVE_RESUME).",
    )
    checkpoints = Unicode(
        None,
        allow_none=True,
        config=True,
        help="Checkpoint store: a directory or fsspec URL (default: $CAVE_CHECKPOINTS, else "
        "<session dir>/checkpoints).",
    )
    autocheckpoint = Bool(
        True,
        config=True,
        help="Checkpoint after each agent turn (default on; $CAVE_AUTOCHECKPOINT=0 turns it off).",
    )
    autocheckpoint_keep = Int(
        20,
        config=True,
        help="Auto-checkpoints to keep (older ones are removed and their blobs collected); "
        "default $CAVE_AUTOCHECKPOINT_KEEP or 20.",
    )

    turn_steps = Int(None, allow_none=True, config=True, help="Budget: model calls per turn.")
    turn_tokens = Int(None, allow_none=True, config=True,
                      help="Budget: prompt + output tokens per turn.")
    turn_cost = Float(None, allow_none=True, config=True, help="Budget: estimated USD per turn.")
    session_steps = Int(None, allow_none=True, config=True,
                        help="Budget: model calls per session.")
    session_tokens = Int(None, allow_none=True, config=True,
                         help="Budget: prompt + output tokens per session.")
    session_cost = Float(None, allow_none=True, config=True,
                         help="Budget: estimated USD per session.")
    context_window = Int(None, allow_none=True, config=True,
                         help="The model's context window in tokens (default: known per model).")
    mode = Unicode(
        None,
        allow_none=True,
        config=True,
        help="Where agent code runs: 'guard' (in the kernel) or 'strict' (a confined worker "
        "process); default: mode in cave.toml, else guard. Strict fails loudly if unsupported.",
    )
    strict_step_memory = Int(
        8 * 2**30,
        config=True,
        help="Strict mode: bytes of address space one agent step may add (0: no limit).",
    )

    @default("resume")
    def _resume_default(self) -> str | None:
        return os.environ.get(RESUME_ENV) or None

    @default("checkpoints")
    def _checkpoints_default(self) -> str | None:
        return os.environ.get(STORE_ENV) or None

    @default("autocheckpoint")
    def _autocheckpoint_default(self) -> bool:
        value = os.environ.get(AUTOCHECKPOINT_ENV, "1").strip().lower()
        return value not in ("0", "false", "no", "off")

    @default("autocheckpoint_keep")
    def _autocheckpoint_keep_default(self) -> int:
        value = os.environ.get(AUTOCHECKPOINT_KEEP_ENV, "20")
        try:
            return max(1, int(value))
        except ValueError:
            self.log.warning("CAVE_AUTOCHECKPOINT_KEEP=%r is not a number; keeping 20", value)
            return 20

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        from ..models._credentials import start_credential_process

        start_credential_process()
        self._loop: asyncio.AbstractEventLoop | None = None
        install_agent_cells(self.shell)
        from .._session import current_session, set_session_factory
        from ..approvals._kernel_glue import install as install_approvals

        install_approvals(self, current_session)

        set_session_factory(self._make_session)
        if self.resume:
            self._resume_at_start(self.resume)

    def _make_session(self) -> Any:
        from .._session import ModelSettings, Session
        from ..agent._loop import AgentSettings
        from ..approvals._session_channel import make_channel

        session = Session(
            model_settings=ModelSettings(self.model, self.base_url),
            agent_settings=AgentSettings(max_steps=self.max_steps, code_timeout=self.code_timeout),
            channel_factory=lambda session: make_channel(session, self),
        )
        session.checkpoint_store = self.checkpoints
        from ._budget_magics import budget_from_toml, budget_from_traits

        session.budget, window = budget_from_toml(session.workspace, budget_from_traits(self))
        if window or self.context_window:
            session.agent_settings = session.agent_settings.with_limits(
                context_window=window or self.context_window)
        from ..strict._mode import MODES, configured_mode

        mode = self.mode or configured_mode(session.workspace) or "guard"
        if mode not in MODES:  # a typo must not silently weaken: every turn reports it
            self.log.error("c.CaveKernel.mode=%r is not a mode; use strict or guard", self.mode)
        session.mode = mode
        session.strict_settings = session.strict_settings.with_step_memory(
            self.strict_step_memory or None)
        if self.autocheckpoint:
            from ..checkpoint._autocheckpoint import enable_autocheckpoint

            enable_autocheckpoint(session, keep=self.autocheckpoint_keep)
        return session

    def _resume_at_start(self, name: str) -> None:
        """Restore checkpoint ``name`` now; the first cell shows how it went.

        All or nothing: on failure the half-built session is dropped and a fresh one is made on
        first use, and the kernel stays up.
        """
        from .._session import current_session, set_current_session
        from ..checkpoint._session_io import restore

        session = None
        try:
            session = current_session()
            report = restore(session, name, progress=False)
            message, failed = f"[cave] {report.summary()}", False
        except Exception as exc:
            if session is not None and session.security is not None:
                session.security.close()
            set_current_session(None)
            message = (
                f"[cave] Could not resume from checkpoint {name!r}: {exc}\n"
                "This kernel started with a fresh session instead. Try another checkpoint with "
                "`%checkpoint list` and `%checkpoint restore NAME`."
            )
            failed = True
            self.log.error("resume from %r failed: %s", name, exc)

        shell: Any = self.shell

        def tell(*_info: Any) -> None:
            shell.events.unregister("pre_run_cell", tell)
            print(message, file=sys.stderr if failed else sys.stdout)

        shell.events.register("pre_run_cell", tell)

    async def execute_request(self, stream: Any, ident: Any, parent: Any) -> None:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        await super().execute_request(stream, ident, parent)

    async def interrupt_request(self, stream: Any, ident: Any, parent: Any) -> None:
        """Stop button: cancel a running agent turn directly, then interrupt as usual.

        Arrives on the control thread (``interrupt_mode: message``). A SIGINT alone reaches a cell
        that awaits a future only once the main loop wakes; the turn's own cancellation does not
        wait for that, and waking the loop lets the SIGINT handler run at once.
        """
        from .._session import peek_session

        session = peek_session()
        if session is not None:
            session.cancel()
        await super().interrupt_request(stream, ident, parent)
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(lambda: None)


def install_agent_cells(shell: Any) -> None:
    """Route agent cells to the async path and register the magics on ``shell``."""
    from ._cells import rewrite_agent_cell
    from ._magics import load_ipython_extension

    if rewrite_agent_cell not in shell.input_transformers_cleanup:
        shell.input_transformers_cleanup.append(rewrite_agent_cell)
    load_ipython_extension(shell)
