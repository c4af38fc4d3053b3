"""The operator outlasts an apiserver outage of any length instead of exiting.

kopf escalates an API error once its backoffs are used up, and an escalated
error in its resource observer stops the operator. `benchmarks.chaos` found a
replica gone after a 60 s outage with a 38 s list; these pin the settings that
keep kopf retrying (the chaos run shows both replicas alive after 60 s).
"""

from __future__ import annotations

import collections.abc
import itertools

import kopf

from controller.operator.handlers import RetryForever, _configure


def test_the_backoffs_never_run_out_and_kopf_counts_no_last_attempt() -> None:
    settings = kopf.OperatorSettings()
    _configure(settings)
    backoffs = settings.networking.error_backoffs
    assert isinstance(backoffs, collections.abc.Iterable)
    # kopf numbers attempts "#n/count" and stops at count only for a Sized iterable.
    assert not isinstance(backoffs, collections.abc.Sized)
    first = list(itertools.islice(iter(backoffs), 1000))
    assert len(first) == 1000 and all(0 < b <= 10 for b in first)


def test_every_request_starts_its_backoffs_afresh() -> None:
    backoffs = RetryForever()
    once = list(itertools.islice(iter(backoffs), 5))
    again = list(itertools.islice(iter(backoffs), 5))
    assert once == again == [1.0, 2.0, 5.0, 10.0, 10.0]
