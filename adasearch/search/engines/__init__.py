"""What proposes configs: the Engine and Driver interfaces (base.py) and the engines behind
search.engine (exhaustive, optuna, model, ray). Engines propose and are told; they never measure or
store (the runner's loop does)."""
