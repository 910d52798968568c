"""One options type for every entry point: one default, one wording, typos named."""

from __future__ import annotations

import math
import os

import pytest
from _helpers import pinbackend_cli
from joblib import Parallel, delayed, parallel_config

from pinbackend import PinnedBackend
from pinbackend.core.cpuset import format_cpu_list
from pinbackend.core.planner import PlanError
from pinbackend.host.machine import read_topology
from pinbackend.host.options import DEFAULT_CLAIM_TIMEOUT, OptionsError, PinOptions
from pinbackend.runner import RunnerConfig

pytest.importorskip("distributed")
from pinbackend.dask import PinPlugin
from pinbackend.dask.preload import dask_setup

CORES = read_topology().cores


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


# --- the Dask preload's command line refuses exactly what PinOptions refuses ------------------

#: Values a keyword takes and the preload's command line spells as text.
BAD_VALUES = {
    "claim_timeout": [math.nan, math.inf, -math.inf, -1, "zz"],
    "cores_per_worker": [0, -2, 1.5, "zz"],
    "reserve": ["0,,1", "0,", ",0", "0-x", "-1"],
    "oversubscribe": ["sometimes"],
    "fail": ["sometimes"],
}
GOOD_VALUES = {
    "claim_timeout": [0, 0.5, 30],
    "cores_per_worker": ["auto", 1, 64],
    "reserve": ["", "0", "0-1,8"],
    "oversubscribe": ["clamp", "error", "share", "wait"],
    "fail": ["closed", "open"],
}


def _preload_parse(option: str, value) -> dict:
    """Parse one option as ``dask worker``'s command line checks preload options."""
    import click

    flag = "--pin-" + option.replace("_", "-")
    ctx = click.Context(dask_setup, allow_extra_args=False)
    dask_setup.parse_args(ctx, [flag, str(value)])
    return ctx.params


def test_every_pin_option_has_a_preload_flag_and_values_to_check():
    assert set(BAD_VALUES) == set(GOOD_VALUES) == set(PinOptions.names())
    assert {p.name for p in dask_setup.params} == {f"pin_{n}" for n in PinOptions.names()}


@pytest.mark.parametrize(
    ("option", "value"), [(o, v) for o, values in BAD_VALUES.items() for v in values]
)
def test_the_preload_refuses_what_pin_options_refuses(option, value):
    import click

    with pytest.raises(OptionsError) as refused:
        PinOptions(**{option: value})
    with pytest.raises(click.UsageError) as usage:
        _preload_parse(option, value)
    # The same validator's words, with the flag's spelling.
    flag = "--pin-" + option.replace("_", "-")
    if option not in ("oversubscribe", "fail"):  # click.Choice words those two itself
        assert usage.value.message == str(refused.value).replace(option, flag, 1)


def test_in_the_worker_a_bad_preload_option_reaches_the_setup_instead_of_failing_it():
    # distributed parses the options again in the worker with make_context, and a failure
    # there starts the worker unpinned: the setup gets the error and refuses the worker.
    argv = ["--pin-claim-timeout", "nan"]
    params = dask_setup.make_context("dask_setup", argv, allow_extra_args=False).params
    assert params == {
        "invalid": "--pin-claim-timeout must be a finite number of seconds >= 0; got nan"
    }
    assert argv == ["--pin-claim-timeout", "nan"]  # parsed a copy: the nanny reads it back


@pytest.mark.parametrize(
    ("option", "value"), [(o, v) for o, values in GOOD_VALUES.items() for v in values]
)
def test_the_preload_accepts_what_pin_options_accepts_and_means_the_same(option, value):
    params = _preload_parse(option, value)
    assert params[f"pin_{option}"] == getattr(PinOptions(**{option: value}), option)


# --- PinPlugin: "auto" as documented, unknown keywords named ----------------------------------


def test_cores_per_worker_auto_is_the_default_everywhere():
    assert PinPlugin(cores_per_worker="auto").options == PinPlugin().options
    assert PinnedBackend(cores_per_worker="auto").options.cores_per_worker is None
    assert RunnerConfig(cores_per_worker="auto").cores_per_worker is None
    assert _preload_default("pin_cores_per_worker") == "auto"


@pytest.mark.parametrize("plugin", ["PinPlugin", "PinWorkerPlugin", "PinNannyPlugin"])
def test_an_unknown_keyword_of_a_dask_plugin_names_the_plugin_and_the_closest_option(plugin):
    import pinbackend.dask as dask_api

    cls = getattr(dask_api, plugin)
    with pytest.raises(TypeError) as bogus:
        cls(bogus=1)
    assert str(bogus.value).startswith(
        f"{plugin} got an unexpected option 'bogus'. Valid options: "
    )
    assert "_Options" not in str(bogus.value)
    with pytest.raises(TypeError, match=r"'cores_per_workers'; did you mean 'cores_per_worker'\?"):
        cls(cores_per_workers=1)


# --- joblib: idle_worker_timeout, reserve lists, slots that never fit -----------------------


@pytest.mark.parametrize("idle", [-1, math.nan, math.inf, "5"])
def test_idle_worker_timeout_must_be_a_finite_number(idle):
    says = "idle_worker_timeout must be a finite number of seconds >= 0"
    with pytest.raises(OptionsError, match=says):
        Parallel(n_jobs=2, backend="pinned", idle_worker_timeout=idle)(
            delayed(abs)(i) for i in range(2)
        )
    with (
        pytest.raises(OptionsError, match=says),
        parallel_config("pinned", idle_worker_timeout=idle),
    ):
        pass


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
@pytest.mark.parametrize("reserve", ["0,,1", "0,", ",1"])
def test_a_cpu_list_with_an_empty_entry_is_refused_everywhere(entry, reserve):
    with pytest.raises(
        OptionsError, match=rf"reserve: invalid CPU list '{reserve}': an empty entry"
    ):
        ENTRY_POINTS[entry](reserve=reserve)


def test_run_refuses_a_cpu_list_with_an_empty_entry():
    result = pinbackend_cli("run", "--reserve", "0,,1", "-n", "1", "--", "true")
    assert result.returncode == 2
    assert "invalid CPU list '0,,1': an empty entry between commas" in result.stderr


@pytest.mark.parametrize("n_jobs", [1, 2, None])
@pytest.mark.parametrize("budget", [None, "1"])
def test_a_worker_larger_than_the_job_is_refused_whatever_n_jobs(monkeypatch, n_jobs, budget):
    # n_jobs=1 (or None) runs inline and uses no worker, but it must not accept what
    # n_jobs=2 refuses: the same message, naming the size, the job's cores and the remedy.
    cpus = sorted(os.sched_getaffinity(0))
    size, have = 64, len(CORES)
    if budget is not None:
        monkeypatch.setenv("PINBACKEND_CPU_COUNT", budget)
        if have < 2:
            pytest.skip("a budget of 1 CPU binds only on 2 cores or more")
        size, have, cpus = 2, 1, sorted(CORES[0])
    what = f"Parallel(n_jobs={1 if n_jobs is None else n_jobs})"
    says = (
        f"no room for {what}: a worker needs {size} physical cores (cores_per_worker) but the "
        f"job has only {have} (CPUs {format_cpu_list(cpus)}"
    )
    for policy in ("clamp", "share"):
        with (
            pytest.raises(PlanError) as refused,
            parallel_config("pinned", cores_per_worker=size, oversubscribe=policy),
        ):
            Parallel(n_jobs=n_jobs)(delayed(abs)(i) for i in range(2))
        assert str(refused.value).startswith(says), str(refused.value)
        assert "ask for fewer cores per worker" in str(refused.value)
        if budget is not None:
            assert "the CPU budget is 1 CPU, set by PINBACKEND_CPU_COUNT=1" in str(refused.value)


def test_an_inline_call_checks_a_worker_size_once_per_set_of_options():
    backend = PinnedBackend(cores_per_worker=1)
    assert backend.effective_n_jobs(1) == 1
    assert backend._fits == backend.options
