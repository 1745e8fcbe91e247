"""Teacher loading, TransPoint specs and weight seeding."""

from .seed import ADAPTERS, UnsupportedTeacher, map_teacher_key, seed_student, student_config
from .teacher import SHIPPED_TEACHER, Teacher, TeacherNotFound, load_teacher, shipped_teacher_path
from .transpoints import TransPointSpecError, describe_transpoints, parse_transpoints, scale_cycle

__all__ = [
    "ADAPTERS", "SHIPPED_TEACHER", "Teacher", "TeacherNotFound", "TransPointSpecError", "UnsupportedTeacher",
    "describe_transpoints", "load_teacher", "map_teacher_key", "parse_transpoints", "scale_cycle",
    "seed_student", "shipped_teacher_path", "student_config",
]
