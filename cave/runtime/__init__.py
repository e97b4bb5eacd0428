"""The runtime stream: the agent's persistent namespace, its manifest, and the code executor."""

from ._executor import ExecutionResult, Executor, StepTimeout, interrupt_thread
from ._manifest import bounded_repr, build_manifest, describe
from ._namespace import AgentRuntime, InjectedInfo

__all__ = [
    "AgentRuntime",
    "ExecutionResult",
    "Executor",
    "InjectedInfo",
    "StepTimeout",
    "bounded_repr",
    "build_manifest",
    "describe",
    "interrupt_thread",
]
