"""Hyperparameter search: Optuna's samplers over a run's keys, each trial an ordinary run (docs/sweeps.md).

``settings`` (the sweeper's keys, checked), ``objective`` (the validation figure a search tunes),
``space`` (Hydra's sweep grammar as Optuna distributions), ``study`` (the study in the sweep folder:
storage, identity, resume, seeded sampling), ``results`` (what the sweep folder gets) and ``sweeper``
(the Hydra sweeper tying them together, registered with Hydra under its plugin name).
"""
