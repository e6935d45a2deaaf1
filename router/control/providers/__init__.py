"""Providers start and stop workers: `base.Provider` is the interface, one module each.

`local` runs worker processes on this machine, each a `child.Child` (its own process
group, ended when the router dies, its output in a log file).
"""
