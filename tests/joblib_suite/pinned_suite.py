"""pytest plugin: run joblib's own test_parallel against the "pinned" backend.

Loaded with ``-p pinned_suite`` before joblib's test module is imported, so that "pinned"
is registered when joblib parametrizes its tests over every registered backend. Only the
tests parametrized with "pinned" are kept. The few known exceptions are strict xfails
(an unexpected pass fails the run), each with its reason; docs/joblib.md lists them too.
"""

import pytest

import pinbackend  # noqa: F401  - registers the "pinned" backend

KNOWN_EXCEPTIONS = {
    "test_nested_loop[loky-pinned]": (
        "a nested Parallel(backend='pinned') inside a plain loky worker: that worker never "
        "imported pinbackend, so the name is unknown there (joblib registrations are per "
        "process); pinned workers import it, and user code can `import pinbackend`"
    ),
    "test_nested_loop[back_compat_backend-pinned]": (
        "same as above, inside the workers of joblib's test-only back_compat_backend"
    ),
    "test_parallel_unordered_generator_returns_fastest_first[pinned-4]": (
        "asks for n_jobs=4 on this project's 2-core machines: more workers than cores is "
        "an error by default (oversubscribe='error'); it passes with 'clamp' or 'share'"
    ),
}


def pytest_configure(config):
    """Register the markers joblib's test module uses."""
    for marker in ("thread_unsafe", "no_cover"):
        config.addinivalue_line("markers", f"{marker}: used by joblib's own test suite")


def pytest_collection_modifyitems(config, items):
    """Keep the tests parametrized with "pinned"; mark the known exceptions."""
    kept = [item for item in items if "pinned" in item.name]
    for item in kept:
        reason = KNOWN_EXCEPTIONS.get(item.name)
        if reason:
            item.add_marker(pytest.mark.xfail(reason=reason, strict=True))
    config.hook.pytest_deselected(items=[item for item in items if item not in kept])
    items[:] = kept
