"""Shared by every test: torch on one thread, as the worker and the simulator run it.

On two shared cores a second torch thread makes a small fit up to 30x slower whenever another process holds a
core (measured: 40 s instead of 1.4 s for one head fit while a simulation ran), so tests would time out on a busy
machine for reasons that have nothing to do with the code under test."""

from ml_backend.models.encoders import configure_torch

configure_torch(1)
