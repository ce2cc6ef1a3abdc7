"""Reliability suite (issue 8): resume, kill, distributed faults, non-finite values, bad input."""
