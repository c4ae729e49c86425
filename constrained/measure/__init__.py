"""Measuring mesa-signatures on any model: probes against a random-init control, test-time signatures,
the probe monitor during training, and the penalties that turn a signature into a loss term."""
