"""The search, by concern, in layers: a module imports only from its own layer or the ones above it
in this list (tests/test_architecture.py parses the imports and keeps it so), so a run's data flows
down it and never back.

1. space.py, trials.py, storage.py, phases.py: the search space; how a trial is stored and read back;
   the Optuna storage; where a run's wall time goes.
2. context.py: what a worker needs to measure and record (prepare, Measurer, record_trial).
3. front/: which records make the front (pareto, beyond_noise), which are re-timed and raced
   (finalists), and their held-out figures and certificates (heldout).
4. latency_profile.py: the run's latency model, reused by fingerprint or profiled.
5. engines/: what proposes configs (base: the Engine and Driver interfaces; exhaustive, optuna,
   model, ray, ray_accuracy).
6. progress.py, results.py, runner.py: `adasearch run`: one measure-and-record loop over an engine,
   then the finalists, then the results folder.
"""
