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
    """What the preload's command line gives ``name`` when its flag is left out."""
    return dask_setup.make_context("dask_setup", []).params[name]


def test_every_entry_point_has_the_one_default_claim_timeout():
    assert PinnedBackend().options.claim_timeout == DEFAULT_CLAIM_TIMEOUT
    assert PinPlugin().options.claim_timeout == DEFAULT_CLAIM_TIMEOUT
    assert RunnerConfig().claim_timeout == DEFAULT_CLAIM_TIMEOUT
    assert _preload_default("claim_timeout") == DEFAULT_CLAIM_TIMEOUT


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


# --- every declared option, at every front door that takes it: the same values, the same words
#
# Derived from the declarations (PinOptions and RunnerConfig): an option declared tomorrow is
# tried here at each front door its declaration names, with its kind's good and bad values.

DECLARED = RunnerConfig.declared()  # PinOptions' options, then the runner's own
VALUED = [option for option in DECLARED if not option.kind.switch]


class Refused(Exception):
    """A front door refused a value; ``message`` is what its user reads."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


def _keyword(make, option, text):
    try:
        return getattr(make(**{option.name: option.kind.parse(text)}), option.name)
    except OptionsError as error:
        raise Refused(str(error)) from None


def _joblib(option, text):
    return _keyword(lambda **kw: PinnedBackend(**kw).options, option, text)


def _dask(option, text):
    from pinbackend.dask import PinWorkerPlugin

    values = {
        _keyword(lambda cls=cls, **kw: cls(**kw).options, option, text)
        for cls in (PinPlugin, PinWorkerPlugin)
    }
    assert len(values) == 1, values
    return values.pop()


def _runner_config(option, text):
    return _keyword(RunnerConfig, option, text)


def _preload(flag, option, text):
    import click

    ctx = click.Context(dask_setup, allow_extra_args=False)
    args = [flag] if text is None else [f"{flag}={text}"]
    try:
        dask_setup.parse_args(ctx, args)
    except click.UsageError as error:
        raise Refused(error.format_message()) from None
    return ctx.params[option.name]


def _argparse(parse, capsys):
    try:
        return parse()
    except SystemExit as exit:
        assert exit.code == 2
        raise Refused(capsys.readouterr().err) from None


def _runner(flag, option, text, capsys):
    from pinbackend.cli import runner

    args = [flag] if text is None else [f"{flag}={text}"]
    args = _argparse(lambda: runner._parser().parse_args(args), capsys)
    return getattr(runner._config(args), option.name)


def _run(flag, option, text, capsys):
    from pinbackend.cli import build_parser

    args = [flag] if text is None else [f"{flag}={text}"]
    args = _argparse(lambda: build_parser().parse_args(["run", *args, "--", "true"]), capsys)
    return getattr(args, option.name)


#: Keyword front doors: (option, text) -> the value the option got.
KEYWORD_DOORS = {"joblib": _joblib, "dask": _dask, "runner": _runner_config}
#: Command-line front doors: (flag, option, text, capsys) -> the value the option got.
FLAG_DOORS = {"preload": _preload, "runner": _runner, "run": _run}


def _cases(doors, values):
    return [
        pytest.param(door, option, text, id=f"{door}-{option.name}-{text!r}")
        for option in VALUED
        for door in doors
        if door in option.where
        for text in values(option.kind)
    ]


def _call(door, flag, option, text, capsys):
    if door in KEYWORD_DOORS and flag is None:
        return KEYWORD_DOORS[door](option, text)
    call = FLAG_DOORS[door]
    return call(flag, option, text) if door == "preload" else call(flag, option, text, capsys)


def _refusal(option, text, *, command_line=False) -> OptionsError:
    """The options' own refusal of ``text``, as a keyword's value or on a command line
    (which cannot give None, so its words leave out what None would mean)."""
    with pytest.raises(OptionsError) as refused:
        if command_line:
            option.from_text(text)
        else:
            option.validate(option.kind.parse(text))
    return refused.value


def test_every_option_is_declared_with_a_flag_help_front_doors_and_values_to_try():
    for option in DECLARED:
        assert option.flag == "--" + option.name.replace("_", "-"), option
        assert option.help and option.where, option
        assert option.kind.switch or (option.kind.good and option.kind.bad), option


@pytest.mark.parametrize(("door", "option", "text"), _cases(KEYWORD_DOORS, lambda k: k.good))
def test_every_keyword_front_door_accepts_the_same_values_and_means_the_same(door, option, text):
    assert _call(door, None, option, text, None) == option.from_text(text)


@pytest.mark.parametrize(("door", "option", "text"), _cases(FLAG_DOORS, lambda k: k.good))
def test_every_command_line_accepts_the_same_values_and_means_the_same(door, option, text, capsys):
    assert _call(door, option.flag, option, text, capsys) == option.from_text(text)


@pytest.mark.parametrize(("door", "option", "text"), _cases(KEYWORD_DOORS, lambda k: k.bad))
def test_every_keyword_front_door_refuses_the_same_values_in_the_same_words(door, option, text):
    with pytest.raises(Refused) as refused:
        _call(door, None, option, text, None)
    expected = str(_refusal(option, text))
    assert refused.value.message == expected
    assert expected.startswith(option.name)


@pytest.mark.parametrize(("door", "option", "text"), _cases(FLAG_DOORS, lambda k: k.bad))
def test_every_command_line_refuses_the_same_values_in_the_same_words(door, option, text, capsys):
    with pytest.raises(Refused) as refused:
        _call(door, option.flag, option, text, capsys)
    message = refused.value.message
    assert message.count("\n") <= 1  # one line
    assert option.flag in message
    if option.kind.choices:  # argparse and click word a wrong choice themselves
        assert repr(text) in message
        assert all(choice in message for choice in option.kind.choices)
        return
    # The options' own words, with the value as typed: ...; got 'nan'
    words = _refusal(option, text, command_line=True)
    assert words.as_typed(text) in message
    if door == "preload":
        assert message == words.spelled(option.flag, text)
    # A keyword's refusal says the same, and what None means where it means something.
    assert _refusal(option, text).reason.startswith(words.reason)


def _help(door, capsys) -> str:
    """The help a command-line front door prints."""
    import click

    from pinbackend.cli import build_parser, runner

    if door == "preload":
        return dask_setup.get_help(click.Context(dask_setup))
    if door == "runner":
        return runner.help_text()
    with pytest.raises(SystemExit):
        build_parser().parse_args([door, "--help"])
    return capsys.readouterr().out


def test_an_option_is_taken_exactly_at_the_front_doors_its_declaration_names(capsys):
    helps = {door: _help(door, capsys) for door in FLAG_DOORS}
    keywords = {"joblib": PinnedBackend, "dask": PinPlugin}
    for option in DECLARED:
        for door, text in helps.items():
            if (door, option.flag) == ("run", "--cores"):
                continue  # run's own --cores (exactly these CPUs), of the same kind
            listed = f"{option.flag} " in text or f"{option.flag}\n" in text
            assert listed == (door in option.where), (door, option.name)
        for door, make in keywords.items():
            if door in option.where:
                continue
            with pytest.raises(TypeError, match=f"unexpected option '{option.name}'"):
                make(**{option.name: option.default})


# --- the old spellings: hidden, and still working for one release ------------------------------

ALIASES = [
    pytest.param(option, alias, id=f"{alias.where}-{alias.flag}")
    for option in DECLARED
    for alias in option.aliases
    if alias.where in FLAG_DOORS
]


@pytest.mark.parametrize(("option", "alias"), ALIASES)
def test_an_old_spelling_still_works_as_the_new_one(option, alias, capsys):
    if alias.value is not None:  # a flag without a value of its own: run --share
        assert _call(alias.where, alias.flag, option, None, capsys) == alias.value
        return
    for text in option.kind.good:
        assert _call(alias.where, alias.flag, option, text, capsys) == option.from_text(text)
    text = option.kind.bad[0]
    with pytest.raises(Refused) as refused:
        _call(alias.where, alias.flag, option, text, capsys)
    assert alias.flag in refused.value.message  # named as typed
    if not option.kind.choices:
        words = _refusal(option, text, command_line=True)
        assert words.as_typed(text) in refused.value.message


@pytest.mark.parametrize(("option", "alias"), ALIASES)
def test_an_old_spelling_is_hidden_from_the_help(option, alias, capsys):
    text = _help(alias.where, capsys)
    assert alias.flag not in text
    assert option.flag in text


def test_the_old_and_the_new_spelling_of_one_preload_option_cannot_both_be_given():
    import click

    ctx = click.Context(dask_setup, allow_extra_args=False)
    with pytest.raises(click.UsageError, match="--pin-reserve is the old spelling of --reserve"):
        dask_setup.parse_args(ctx, ["--reserve", "0", "--pin-reserve", "1"])


def test_a_switch_is_a_flag_without_a_value_and_a_keyword_true_or_false(capsys):
    for option in (o for o in DECLARED if o.kind.switch):
        for door in sorted(option.where & set(FLAG_DOORS)):
            assert _call(door, option.flag, option, None, capsys) is True
        assert getattr(RunnerConfig(**{option.name: True}), option.name) is True
        with pytest.raises(OptionsError, match=f"{option.name} must be True or False; got 'yes'"):
            RunnerConfig(**{option.name: "yes"})


def test_the_configuration_page_names_every_option_by_keyword_and_flag():
    from pathlib import Path

    page = (Path(__file__).parents[1] / "docs" / "configuration.md").read_text()
    for option in DECLARED:
        assert f"`{option.name}`" in page and option.flag in page, option.name
        for alias in option.aliases:  # among the old spellings
            assert alias.flag in page, alias


def test_in_the_worker_a_bad_preload_option_reaches_the_setup_instead_of_failing_it():
    # distributed parses the options again in the worker with make_context, and a failure
    # there starts the worker unpinned: the setup gets the error and refuses the worker.
    argv = ["--pin-claim-timeout", "nan"]
    params = dask_setup.make_context("dask_setup", argv, allow_extra_args=False).params
    assert params == {
        "invalid": "--pin-claim-timeout must be a finite number of seconds >= 0; got 'nan'"
    }
    assert argv == ["--pin-claim-timeout", "nan"]  # parsed a copy: the nanny reads it back


def test_a_nanny_hands_its_worker_preload_the_options_it_was_given():
    from pinbackend.dask.preload import _argv

    options = PinOptions(
        cores_per_worker=2, reserve="0-1", oversubscribe="share", fail="open", claim_timeout=0.5
    )
    params = dask_setup.make_context("dask_setup", _argv(options)).params
    assert PinOptions(**params) == options
    assert _argv(PinOptions()) == []


# --- PinPlugin: "auto" as documented, unknown keywords named ----------------------------------


def test_cores_per_worker_auto_is_the_default_everywhere():
    assert PinPlugin(cores_per_worker="auto").options == PinPlugin().options
    assert PinnedBackend(cores_per_worker="auto").options.cores_per_worker is None
    assert RunnerConfig(cores_per_worker="auto").cores_per_worker is None
    assert _preload_default("cores_per_worker") is None  # "auto", the flag's default


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
