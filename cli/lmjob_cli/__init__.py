"""The `lmjob` command line: validate, run locally, and submit/inspect jobs on a cluster."""
