"""The Task contract, defined in ``quantbalance.evaluate.task`` (the library's layer) and
re-exported here for the bundled tasks and existing imports."""

from quantbalance.evaluate.task import EvalFn, Task

__all__ = ["EvalFn", "Task"]
