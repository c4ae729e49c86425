"""Tasks: the Task interface (task.py), the signals penalties read (signals.py), and one module or folder
per task with everything task-specific in it."""
