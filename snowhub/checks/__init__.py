"""Checks of a hub: the forgetting checker (re-runs every probe set) and the doctor (reads, runs nothing)."""

from snowhub.checks.doctor import DoctorReport, check_hub
from snowhub.checks.forgetting import ForgettingReport, TaskCheck, verify_hub

__all__ = ["DoctorReport", "ForgettingReport", "TaskCheck", "check_hub", "verify_hub"]
