"""The ``cave`` command: install the kernel, open JupyterLab, run a prompt or a notebook.

Each subcommand parses its arguments here (the edge) and calls into the package.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from ._env import RESUME_ENV, STORE_ENV, session_dir
from ._errors import CaveError, ConfigError


def _install(args: argparse.Namespace) -> int:
    from .kernel._install import install

    path = install(user=args.user, prefix=args.prefix, sys_prefix=args.sys_prefix, name=args.name)
    print(f"Installed the Cave kernelspec in {path}")
    return 0


def _ensure_kernelspec() -> None:
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec("cave")
    except NoSuchKernel:
        from .kernel._install import install

        install(sys_prefix=True)


def _lab(args: argparse.Namespace) -> int:
    """JupyterLab with the Cave kernel available (installed into this environment if missing)."""
    _ensure_kernelspec()
    argv = [sys.executable, "-m", "jupyterlab", *args.lab_args]
    return subprocess.call(argv)




def resume_command(
    name: str,
    *,
    store: str,
    console: bool = False,
    extra: Sequence[str] = (),
    environ: Mapping[str, str] | None = None,
    python: str = sys.executable,
) -> tuple[list[str], dict[str, str]]:
    """(argv, env) that start JupyterLab, or a console, whose new Cave kernels resume ``name``.

    The store location is always passed, made absolute: kernels start in their notebook's
    directory, where the default ``./.cave/checkpoints`` would be another store.
    """
    env = dict(os.environ if environ is None else environ)
    if "://" not in store or store.startswith("file://"):
        store = str(Path(store.removeprefix("file://")).expanduser().absolute())
    env[RESUME_ENV] = name
    env[STORE_ENV] = store
    if console:
        argv = [python, "-m", "jupyter_console", "--kernel=cave", *extra]
    else:
        argv = [python, "-m", "jupyterlab", *extra]
    return argv, env


def _resume(args: argparse.Namespace) -> int:
    """Check the checkpoint exists and verifies its manifest, then start the frontend."""
    from .checkpoint._cli import default_store_url
    from .checkpoint._store import SessionStore

    url = args.store or default_store_url(args.session_dir)
    local = "://" not in url or url.startswith("file://")
    if local and not Path(url.removeprefix("file://")).expanduser().exists():
        raise ConfigError(
            f"No checkpoint store at {url}. Pass --store DIR_OR_URL or --session-dir DIR (a "
            "kernel's <cwd>/.cave); `cave checkpoints list` shows what a store holds."
        )
    info = SessionStore(url).info(args.name)
    if args.console:
        import importlib.util

        if importlib.util.find_spec("jupyter_console") is None:
            raise ConfigError(
                "`cave resume --console` needs jupyter-console: `pip install jupyter-console`, "
                "or leave out --console for JupyterLab."
            )
    argv, env = resume_command(args.name, store=url, console=args.console, extra=args.extra)
    _ensure_kernelspec()
    print(
        f"Resuming {info.name!r} (saved {info.created:%Y-%m-%d %H:%M:%S} UTC, {info.objects} "
        f"objects) from {env[STORE_ENV]}: every new Cave kernel of this "
        f"{'console' if args.console else 'JupyterLab'} starts from it."
    )
    return subprocess.call(argv, env=env)


def _run(args: argparse.Namespace) -> int:
    target = args.target
    if target.endswith(".ipynb") and Path(target).exists():
        return _run_notebook(Path(target), args)
    return _run_prompt(" ".join([target, *args.rest]), args)


def _run_prompt(prompt: str, args: argparse.Namespace) -> int:
    """One agent turn in this terminal; text streams to stdout."""
    from ._session import current_session
    from .agent._events import CodeFinished, CodeStarted, TextDelta, TurnFinished
    from .kernel._render import footer_text

    session = current_session()

    def show(event: object) -> None:
        if isinstance(event, TextDelta):
            print(event.text, end="", flush=True)
        elif isinstance(event, CodeStarted):
            print(f"\n--- agent code (step {event.step}) ---\n{event.code}\n---", flush=True)
        elif isinstance(event, CodeFinished) and event.result.error:
            print(event.result.error, file=sys.stderr)
        elif isinstance(event, TurnFinished):
            print(f"\n[{footer_text(event)}]")

    settings = session.agent_settings.with_limits(max_steps=args.max_steps)
    session.ask(prompt, show, settings=settings)
    return 0


def _run_notebook(path: Path, args: argparse.Namespace) -> int:
    """Execute a notebook on the Cave kernel and write the outputs back (like nbconvert)."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        kernel_name="cave",
        timeout=args.timeout,
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute()
    out = Path(args.output) if args.output else path
    nbformat.write(nb, out)
    print(f"Executed {path} -> {out}")
    return 0


def _audit(args: argparse.Namespace) -> int:
    """Show the audit log, or verify its hash chain (exit 1 if it does not verify)."""
    from ._session import AUDIT_FILE
    from .security import format_records, verify

    path = session_dir(args.session_dir) / AUDIT_FILE
    if not path.exists():
        print(
            f"cave: no audit log at {path}; pass --session-dir (a kernel's <cwd>/.cave)",
            file=sys.stderr,
        )
        return 2
    if args.audit_command == "verify":
        report = verify(path)
        print(report)
        return 0 if report.ok else 1
    for line in format_records(path, tail=args.n):
        print(line)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cave", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("install", help="install the Cave kernelspec")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true", help="into the user's Jupyter data dir")
    where.add_argument("--sys-prefix", action="store_true", help="into this Python environment")
    where.add_argument("--prefix", help="into PREFIX/share/jupyter/kernels")
    p.add_argument("--name", default="cave")
    p.set_defaults(func=_install)

    p = sub.add_parser("lab", help="open JupyterLab (extra arguments go to jupyter lab)")
    p.add_argument("lab_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=_lab)

    p = sub.add_parser(
        "resume",
        help="start JupyterLab (or a console) whose Cave kernels resume a checkpoint",
        usage="cave resume NAME [--console] [--store URL] [--session-dir DIR] [-- FRONTEND ARGS]",
    )
    p.add_argument("name", help="checkpoint name (`cave checkpoints list`)")
    p.add_argument("--console", action="store_true", help="jupyter console instead of JupyterLab")
    p.add_argument(
        "--store", help=f"directory or fsspec URL (default ${STORE_ENV} or <session>/checkpoints)"
    )
    p.add_argument("--session-dir", help="session directory (default $CAVE_SESSION_DIR or ./.cave)")
    p.set_defaults(func=_resume, takes_extra=True)

    p = sub.add_parser("run", help="run one agent turn in this terminal, or execute a notebook")
    p.add_argument("target", help="a request (quoted) or a .ipynb file")
    p.add_argument("rest", nargs="*", help=argparse.SUPPRESS)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--timeout", type=int, default=600, help="per-cell timeout for notebooks")
    p.add_argument("--output", "-o", help="where to write an executed notebook")
    p.set_defaults(func=_run)

    p = sub.add_parser("audit", help="show the audit log, or verify its hash chain")
    p.add_argument("audit_command", nargs="?", choices=["show", "verify"], default="show")
    p.add_argument("--session-dir", help="session directory (default $CAVE_SESSION_DIR or ./.cave)")
    p.add_argument("-n", type=int, default=None, help="show only the last N records")
    p.set_defaults(func=_audit)

    from .approvals._cli import add_parser as add_approvals
    from .checkpoint._cli import add_parser as add_checkpoints

    add_approvals(sub)
    add_checkpoints(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "takes_extra", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra[1:] if extra[:1] == ["--"] else extra
    try:
        return int(args.func(args))
    except CaveError as err:
        print(f"cave: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
