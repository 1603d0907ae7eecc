"""Coding exercises: Aider-Polyglot-style whole-file tasks with tests (HumanEval ships as an eval set).

``ExerciseEnv`` plays one exercise (reply with the whole file in a ```python block, two tries);
``ExerciseTasks`` serves HumanEval or a directory of Exercism-layout exercises; docs/exercises.md.
"""
from envs.exercises.env import ExerciseEnv
from envs.exercises.format import Exercise, ExerciseFormatError, load_exercises, write_exercise
from envs.exercises.humaneval import humaneval_exercises
from envs.exercises.runner import ExerciseRun, run_exercise_tests
from envs.exercises.tasks import ExerciseTasks

__all__ = ["Exercise", "ExerciseEnv", "ExerciseFormatError", "ExerciseRun", "ExerciseTasks", "humaneval_exercises",
           "load_exercises", "run_exercise_tests", "write_exercise"]
