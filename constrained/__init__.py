"""constrained: train transformers under architectural constraints against mesa-optimization, and
measure whether they work.

The package is split by part, and importing it loads none of them:

- constrained.models: the transformer core, its named hooks and mask, the Lightning modules
  (sequence model, modular model with its objective module and planner);
- constrained.tasks: the Task interface and one module or folder per task;
- constrained.measure: probes, mesa-signatures, the probe monitor, penalties;
- constrained.experiments: the grid runner and the report;
- constrained.cli: the `constrained` command.
"""
