"""Search: spaces, engines (exhaustive, optuna, ray), the Pareto set and the run orchestrator."""
