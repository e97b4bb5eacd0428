"""Fakes that run the real loop: shipped so users' tests and ours need no patching.

Everything here is a *fixture*: ``ScriptedModel`` and ``AnthropicServer`` replay replies written in
advance; they are not models. ``AnthropicServer`` speaks the Anthropic Messages API on 127.0.0.1, so
the real ``anthropic`` SDK (and the Cave kernel through it) can be tested end to end offline.
"""

from ._anthropic_server import AnthropicServer
from ._approval_widgets import CLICK, ApprovalWidgets, approval_clicker, request_ids
from ._kernel_harness import CellResult, KernelHarness
from ._loopback import RecordedRequest
from ._openai_server import OpenAIServer
from ._script import Failure, Reply, Script, load_script, reply, split_tool_call
from ._scripted_kernel import ScriptedKernel
from ._scripted_model import ScriptedModel
from ._scripted_server import ScriptedServer

__all__ = [
    "CLICK",
    "AnthropicServer",
    "ApprovalWidgets",
    "CellResult",
    "Failure",
    "KernelHarness",
    "OpenAIServer",
    "RecordedRequest",
    "Reply",
    "Script",
    "ScriptedKernel",
    "ScriptedModel",
    "ScriptedServer",
    "approval_clicker",
    "load_script",
    "reply",
    "request_ids",
    "split_tool_call",
]
