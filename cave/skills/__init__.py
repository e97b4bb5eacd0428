"""Skills in the Agent Skills format: discovery, progressive disclosure, approved code.

The prompt carries each skill's name and description; ``skills.activate(name)`` gives the
instructions and, with a person's approval by hash, binds the skill's code (``_primitive``).
"""

from ._format import Skill, load_skill
from ._registry import SkillRegistry

__all__ = ["Skill", "SkillRegistry", "load_skill"]
