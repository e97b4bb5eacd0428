"""Sub-agents: objects with their own namespace, conversation and attenuated authority
(``cave.security._attenuation``), made with ``cave.Agent`` or the ``agents.spawn`` primitive."""

from ._agent import SubAgent

__all__ = ["SubAgent"]
