"""CaveKernel: the stock IPython kernel plus agent cells. Deliberately thin.

It sets kernel info, takes provider keys out of ``os.environ``, installs the agent-cell transformer
and magics, and makes the stop button reach a running turn. Everything else lives below it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ipykernel.ipkernel import IPythonKernel
from traitlets import Float, Int, Unicode

from .. import __version__


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

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        from ..models._credentials import take_provider_keys_from_environ

        take_provider_keys_from_environ()
        self._loop: asyncio.AbstractEventLoop | None = None
        install_agent_cells(self.shell)
        from ..approvals._kernel_glue import install as install_approvals

        install_approvals(self)
        from .._session import set_session_factory

        set_session_factory(self._make_session)

    def _make_session(self) -> Any:
        from .._session import ModelSettings, Session
        from ..agent._loop import AgentSettings
        from ..approvals._kernel_glue import make_channel

        return Session(
            model_settings=ModelSettings(self.model, self.base_url),
            agent_settings=AgentSettings(max_steps=self.max_steps, code_timeout=self.code_timeout),
            channel_factory=lambda session: make_channel(session, self),
        )

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
