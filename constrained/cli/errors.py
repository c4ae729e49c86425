"""Errors a user can fix, said in one line that names the file, key or value, never a usage dump or a
traceback (CONSTRAINED_DEBUG=1 shows the traceback)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from constrained.cli.classes import model_classes, task_classes

# A bad value (d_model not divisible by n_heads, horizon < 1, ...) or a non-finite loss is the user's problem, not
# a bug.
USER_ERRORS = (ValueError, FloatingPointError)
_SKIP = ("Does not validate", "Subtypes:", "Errors:", "- Expected a <class 'NoneType'>", "Given value")
_IMPORT = ("has no attribute", "No module named", "not a subclass", "Import path", "does not exist")


def user_error(e: BaseException) -> str | None:
    """The one-line message of an error the user can fix, None for anything else (a bug: full traceback)."""
    if isinstance(e, USER_ERRORS):
        return " ".join(str(root_cause(e)).split())
    if isinstance(e, RuntimeError) and "Error(s) in loading state_dict" in str(e):
        lines = [line.strip() for line in str(e).splitlines()[1:] if line.strip()]
        more = f" (and {len(lines) - 3} more)" if len(lines) > 3 else ""
        return "the checkpoint's weights do not fit this config: " + "; ".join(lines[:3]) + more
    return None


def root_cause(e: BaseException) -> BaseException:
    """The innermost explicit cause that is itself a user error: jsonargparse wraps a constructor's ValueError in
    its own, while a CheckpointError's cause (torch's unpickler) is only the detail."""
    while isinstance(e.__cause__, USER_ERRORS):
        e = e.__cause__
    return e


def parse_error(e: BaseException, argv: list[str]) -> str:
    """One line from jsonargparse's nested parse error: the dotted key and what is wrong with its value."""
    text = str(e)
    if text.startswith("Problems parsing config"):
        return _bad_config_file(argv) or "a config file is not valid YAML: " + " ".join(text.split())
    path, cls, detail = [], None, None
    for line in (line.strip() for line in text.splitlines()):
        key = re.match(r'Parser key "([^"]+)":\s*(.*)', line)
        given = re.match(r"- Problem with given class_path '([^']+)':\s*(.*)", line)
        if key:
            path.append(key[1])
            detail = key[2] or detail
        elif given:
            path.append("init_args")
            cls, detail = given[1], given[2] or detail
        elif line and not line.startswith(_SKIP):
            detail = line
    detail = detail or " ".join(text.split())
    if cls and any(s in detail for s in _IMPORT) and path[-1:] == ["init_args"]:
        key = ".".join(path[:-1] + ["class_path"])
        return f"{key}: no class {cls} ({detail}); classes that exist: {', '.join(_classes(path[0]))}"
    unknown = re.match(r"Option '([^']+)' is not accepted", detail)
    if unknown:
        return f"{'.'.join(path + [unknown[1]])}: no such option" + (f" of {cls.rsplit('.', 1)[-1]}" if cls else "")
    detail = re.sub(r"<class '([\w.]+)'>", r"\1", detail)  # "Expected a <class 'float'>" -> "Expected a float"
    return f"{'.'.join(path) or 'command line'}: {detail}"


def _bad_config_file(argv: list[str]) -> str | None:
    """The first --config file that is not valid YAML, with the line and column of the problem."""
    files = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a in ("--config", "-c")]
    for name in files:
        try:
            yaml.safe_load(Path(name).read_text())
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" line {mark.line + 1}, column {mark.column + 1}:" if mark else ""
            return f"{name} is not valid YAML:{where} {getattr(err, 'problem', None) or err}"
        except OSError:
            continue
    return None


def _classes(group: str) -> list[str]:
    """Class paths a config may name under `model` or `data`."""
    if group == "data":
        return sorted(f"{c.__module__}.{c.__qualname__}" for c in task_classes())
    if group == "model":
        return sorted(f"{c.__module__}.{c.__qualname__}" for c in model_classes())
    return []
