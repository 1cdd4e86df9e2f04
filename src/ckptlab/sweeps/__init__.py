"""The sweep engine behind `ckptlab sweep`: spec (the YAML), plan (jobs and their hashes), jobs (one
job of each kind, in-process), executors (local, Ray), state (markers and the lock), results (the
results table)."""
