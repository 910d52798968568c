"""One options type for every entry point: one default, one wording, typos named."""

from __future__ import annotations

import math

import pytest
from _helpers import pinbackend_cli
from joblib import Parallel, delayed, parallel_config

from pinbackend import PinnedBackend
from pinbackend.host.options import DEFAULT_CLAIM_TIMEOUT, OptionsError, PinOptions
from pinbackend.runner import RunnerConfig

pytest.importorskip("distributed")
from pinbackend.dask import PinPlugin
from pinbackend.dask.preload import dask_setup


def _preload_default(name: str):
    return next(p.default for p in dask_setup.params if p.name == name)


def test_every_entry_point_has_the_one_default_claim_timeout():
    assert PinnedBackend().options.claim_timeout == DEFAULT_CLAIM_TIMEOUT
    assert PinPlugin().options.claim_timeout == DEFAULT_CLAIM_TIMEOUT
    assert RunnerConfig().claim_timeout == DEFAULT_CLAIM_TIMEOUT
    assert _preload_default("pin_claim_timeout") == DEFAULT_CLAIM_TIMEOUT


ENTRY_POINTS = {
    "joblib": lambda **kw: PinnedBackend(**kw),
    "dask": lambda **kw: PinPlugin(**kw),
    "runner": lambda **kw: RunnerConfig(**kw),
    "options": lambda **kw: PinOptions(**kw),
}


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
@pytest.mark.parametrize("timeout", [True, math.nan, math.inf, -1, "5"])
def test_claim_timeout_must_be_a_finite_number_everywhere(entry, timeout):
    with pytest.raises(OptionsError, match="claim_timeout must be a finite number of seconds"):
        ENTRY_POINTS[entry](claim_timeout=timeout)


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_bad_counts_and_cpu_sets_are_worded_alike_everywhere(entry):
    with pytest.raises(OptionsError, match=r"cores_per_worker must be a positive integer"):
        ENTRY_POINTS[entry](cores_per_worker=0)
    with pytest.raises(OptionsError, match=r"reserve: invalid CPU list '0-x'"):
        ENTRY_POINTS[entry](reserve="0-x")


def test_a_mistyped_option_of_parallel_names_the_closest_valid_one():
    with pytest.raises(TypeError, match="'core_per_worker'; did you mean 'cores_per_worker'"):
        Parallel(n_jobs=2, backend="pinned", core_per_worker=1)(delayed(abs)(i) for i in range(2))


def test_a_mistyped_option_of_parallel_config_names_the_closest_valid_one():
    with (
        pytest.raises(TypeError, match="'cores_per_workers'; did you mean 'cores_per_worker'"),
        parallel_config(backend="pinned", cores_per_workers=1),
    ):
        pass


def test_joblib_own_keywords_still_pass():
    with parallel_config(backend="pinned", n_jobs=1, max_nbytes="1M", mmap_mode="r"):
        assert Parallel()(delayed(abs)(-i) for i in range(3)) == [0, 1, 2]


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "soon"])
def test_run_refuses_a_wait_that_is_not_a_finite_number(value):
    result = pinbackend_cli("run", "--wait", value, "-n", "1", "--", "true")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "must be a finite number of seconds >= 0" in result.stderr
