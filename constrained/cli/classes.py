"""The classes a config may name: every Task of constrained.tasks, every LightningModule of constrained.models."""

from __future__ import annotations

import importlib
import inspect
import pkgutil


def _subclasses(package, base: type) -> list[type]:
    """Subclasses of base defined in the modules and packages directly under package."""
    found: dict[str, type] = {}
    for info in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
        module = importlib.import_module(info.name)
        for obj in vars(module).values():
            if inspect.isclass(obj) and issubclass(obj, base) and obj is not base:
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return list(found.values())


def task_classes() -> list[type]:
    """Every Task subclass of constrained.tasks."""
    import constrained.tasks
    from constrained.tasks.task import Task

    return _subclasses(constrained.tasks, Task)


def model_classes() -> list[type]:
    """Every LightningModule of constrained.models."""
    import lightning as L

    import constrained.models

    return _subclasses(constrained.models, L.LightningModule)
