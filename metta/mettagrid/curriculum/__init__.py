"""Curricula: where each episode's env config comes from."""

from metta.mettagrid.curriculum.core import Curriculum, SingleTaskCurriculum, Task

__all__ = ["Curriculum", "SingleTaskCurriculum", "Task"]
