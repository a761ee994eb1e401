"""Evaluation of trained runs and the convergence benchmark (what ViLearn's claim rests on)."""
