"""`aiollmux simulate`: switch policies run against a workload in virtual time.

`workload` makes the requests, `engine` replays them through one real policy on one
simulated GPU, `report` sums a run up, `scenario` runs several policies on the same
workload, `command` is the command line's side of it (docs/policies.md).
"""
