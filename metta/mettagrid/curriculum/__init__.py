"""Curricula: where each episode's env config comes from."""

from metta.mettagrid.curriculum.bucketed import BucketedCurriculum, expand_buckets
from metta.mettagrid.curriculum.core import Curriculum, SingleTaskCurriculum, Task
from metta.mettagrid.curriculum.learning_progress import LearningProgressCurriculum
from metta.mettagrid.curriculum.loader import curriculum_from_any, curriculum_from_config_path
from metta.mettagrid.curriculum.multi_task import MultiTaskCurriculum, RandomCurriculum

__all__ = [
    "BucketedCurriculum",
    "Curriculum",
    "LearningProgressCurriculum",
    "MultiTaskCurriculum",
    "RandomCurriculum",
    "SingleTaskCurriculum",
    "Task",
    "curriculum_from_any",
    "curriculum_from_config_path",
    "expand_buckets",
]
