"""Shared test setup: Ray without an auth token file, and small study builders."""

import os

import pytest

# Ray writes ~/.ray/auth_token on first start unless auth is off; tests keep the home folder clean.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def tiny_study_dict(**changes):
    """Return a valid study on resnet10t at 32 px, with ``changes`` merged into its sections."""
    study = {
        "name": "tiny",
        "model": {"name": "resnet10t", "image_size": 32},
        "budget": {"trials": 2, "max_epochs": 1},
        "space": {"lr": {"type": "float", "low": 1.0e-3, "high": 1.0e-2, "log": True}},
    }
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(study.get(key), dict):
            study[key] = {**study[key], **value}
        else:
            study[key] = value
    return study


@pytest.fixture
def study_dict():
    return tiny_study_dict
