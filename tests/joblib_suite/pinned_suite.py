"""pytest plugin: run joblib's own test_parallel against the "pinned" backend.

Loaded with ``-p pinned_suite`` before joblib's test module is imported, so that "pinned"
is registered when joblib parametrizes its tests over every registered backend. Only the
tests parametrized with "pinned" are kept: by name (``backend="pinned"``) or by instance
(joblib's ``ALL_VALID_BACKENDS`` also holds a ``PinnedBackend()``, which pytest names
``backendN``). The few known exceptions are strict xfails (an unexpected pass fails the
run), each with its reason; docs/joblib.md lists them too.
"""

import pytest

from pinbackend import PinnedBackend  # importing pinbackend registers "pinned"


def always() -> bool:
    return True


#: test name -> (when it is expected to fail, why).
KNOWN_EXCEPTIONS = {
    "test_nested_loop[loky-pinned]": (
        always,
        "a nested Parallel(backend='pinned') inside a plain loky worker: that worker never "
        "imported pinbackend, so the name is unknown there (joblib registrations are per "
        "process); pinned workers import it, and user code can `import pinbackend`",
    ),
    "test_nested_loop[back_compat_backend-pinned]": (
        always,
        "same as above, inside the workers of joblib's test-only back_compat_backend",
    ),
}


def uses_pinned(item) -> bool:
    """Whether ``item`` is parametrized with the "pinned" backend, by name or instance."""
    callspec = getattr(item, "callspec", None)
    if callspec is None:
        return False
    return any(
        isinstance(value, PinnedBackend) or (isinstance(value, str) and value == "pinned")
        for value in callspec.params.values()
    )


def pytest_configure(config):
    """Register the markers joblib's test module uses."""
    for marker in ("thread_unsafe", "no_cover"):
        config.addinivalue_line("markers", f"{marker}: used by joblib's own test suite")


def pytest_collection_modifyitems(config, items):
    """Keep the tests parametrized with "pinned"; mark the known exceptions."""
    kept = [item for item in items if uses_pinned(item)]
    for item in kept:
        if item.name in KNOWN_EXCEPTIONS:
            when, reason = KNOWN_EXCEPTIONS[item.name]
            item.add_marker(pytest.mark.xfail(when(), reason=reason, strict=True))
    config.hook.pytest_deselected(items=[item for item in items if item not in kept])
    items[:] = kept
