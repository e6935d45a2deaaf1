"""Providers start and stop workers: `base.Provider` is the interface, one module each."""
