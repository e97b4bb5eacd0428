"""``%cave mode [strict|guard]``: show or switch where agent code runs."""

from __future__ import annotations

from .._errors import ConfigError
from .._session import current_session


def mode_command(args: list[str]) -> None:
    from ..strict._mode import MODES, mode_text

    session = current_session()
    if not args:
        print(mode_text(session))
        return
    if len(args) != 1 or args[0] not in MODES:
        raise ConfigError(f"%cave mode takes one of {', '.join(MODES)}, not {' '.join(args)!r}.")
    session.set_mode(args[0])
    print(mode_text(session))
