"""The hyperparameter search engine shared by the operator and `lmjob sweep`.

It turns a sweep's spec, its status (the only state of the search) and what became of each
trial's job into the next status and the jobs to create or stop, asking Optuna's samplers and
pruners. Imports optuna and lmjob_api; never kopf, kubernetes or torch.
"""
