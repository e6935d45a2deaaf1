"""Tests for the scripts in bench/ (loaded by path: bench/ is not a package)."""
