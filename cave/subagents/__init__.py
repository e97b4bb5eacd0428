"""Sub-agents: ``cave.Agent`` objects with their own namespace, conversation and attenuated
authority (``cave.security._attenuation``), and the ``agents.spawn`` primitive."""

from ._agent import Agent

__all__ = ["Agent"]
