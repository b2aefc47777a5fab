"""Fixtures shared by the tests that run studies on real Ray."""

import pytest


@pytest.fixture(scope="module")
def ray_session():
    """Start one local Ray for the module as the product starts it (loopback only), if none runs."""
    import ray

    from search.runner import _init_ray

    started = _init_ray(None)
    yield
    if started:
        ray.shutdown()
