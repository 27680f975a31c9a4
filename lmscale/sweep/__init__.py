"""Sweeps: the grid spec, model shapes for a parameter count, the runner and the planner."""
