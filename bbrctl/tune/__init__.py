"""`bbrctl tune`: an Optuna study whose trials are ordinary signed run directories.

Modules::

    defaults.py  every default of a study (sampler, metric, pruner, storage, poll period)
    optuna_import.py  the one place Optuna is imported (one-line error naming the extra)
    space.py     the search space in Hydra's Optuna-sweeper grammar; validated against the schema
    spec.py      what identifies a study (space, fixed overrides, metric, sampler, ...), stored in it
    storage.py   the study's storage in its directory: SQLite (local disk) or a journal file (NFS)
    trials.py    one trial's run directory: its job, its state, its intermediate and final metric
    driver.py    the ask-and-tell loop: launch through bbrctl.launch, read, prune, tell, resume
    summary.py   a study read back: trials table (Markdown/CSV/JSON), best trial, plots

Layer: above bbrctl.launch (it launches through it), below the CLI. Optuna is imported
only inside functions, so `bbrctl --help` and `bbrctl status` of plain sweeps never pay for it.
"""
