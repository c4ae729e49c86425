"""The transformer core and the Lightning modules built on it: mask, hooks, attention, transformer,
sequence model, modular model (objective module, planner)."""
