"""The front: non-dominated sets (pareto.py), the front of a run's records beyond timing noise
(beyond_noise.py), the finalists' re-timing and races (finalists.py), and their held-out figures and
certified constraints (heldout.py)."""
