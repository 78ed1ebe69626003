"""Plumbing every layer uses: errors, files and checkpoints, seeds, logging and progress,
provenance, the task-type and arm registries, and the federation configuration."""
