"""The one record format (issue 16 item 1): ``Outcome.to_record`` / ``Outcome.from_record`` and
``Settings.to_dict`` / ``Settings.from_dict``, through JSON as the manifest and the Ray rows carry them."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from invsr_cli.run.executors.ray_data import outcome_from_row
from invsr_cli.settings.settings import DEFAULTS, Settings
from invsr_cli.work.report import Outcome, failed, not_attempted

text = st.text(max_size=20)
small = st.integers(min_value=0, max_value=10**6)
real = st.floats(allow_nan=False, allow_infinity=False, width=64)
maybe_int = st.none() | st.integers(min_value=1, max_value=10**5)

settings_st = st.builds(
    Settings,
    timesteps=st.lists(st.integers(1, 999), min_size=1, max_size=5).map(tuple),
    guidance=real, posterior=st.sampled_from(["sample", "mean"]), seed=st.integers(-2**31, 2**31),
    color_fix=text, tile=small, overlap=small, blend=text,
    batch_size=st.just("auto") | st.integers(1, 64), scale=real, device=text, dtype=text,
    vae_fp32=st.booleans(), compile=st.booleans(), sd_model=text, noise_predictor=st.none() | text,
    format=text, quality=small, suffix=text, skip_existing=st.booleans(), max_pixels=small,
    lossless=st.booleans(), strip_metadata=st.booleans(), provenance=st.booleans(),
    width=maybe_int, height=maybe_int, fit=st.none() | st.tuples(st.integers(1, 10**5), st.integers(1, 10**5)),
    long_side=maybe_int, short_side=maybe_int, passes=st.integers(1, 2), max_input_side=maybe_int,
    skip_if_larger=maybe_int, first_frame=st.booleans(), preset=text,
)
seconds = st.none() | st.dictionaries(text, real, max_size=4)

outcome_st = st.builds(
    Outcome,
    input=text, output=text, status=st.sampled_from(["done", "skipped", "failed", "planned"]), reason=text,
    seconds=real, width=small, height=small, tiles=small, preset=text,
    timesteps=st.lists(st.integers(1, 999), max_size=5).map(tuple), degradation=seconds, rule=text, tile=small,
    overlap=small, batch_sizes=st.lists(st.integers(1, 64), max_size=5).map(tuple), stage_seconds=seconds,
    settings=st.none() | settings_st,
    models=st.none() | st.dictionaries(text, st.none() | text | small, max_size=3),
    passes=st.integers(1, 2), frames=st.integers(1, 100),
)


def _through_json(d: dict) -> dict:
    return json.loads(json.dumps(d))


@settings(max_examples=150, deadline=None)
@given(settings_st)
def test_settings_round_trip_through_json(s):
    assert Settings.from_dict(_through_json(s.to_dict())) == s


@settings(max_examples=150, deadline=None)
@given(outcome_st)
def test_outcome_round_trip_through_json_with_its_settings_and_models(o):
    back = Outcome.from_record(_through_json(o.to_record()))
    assert back == o
    assert back.settings == o.settings and back.models == o.models  # not compared by ==: checked here
    row = {"record": json.dumps(o.to_record())}  # a Ray worker's status row carries the same record
    got = outcome_from_row(row)
    assert got == o and got.settings == o.settings and got.models == o.models


def test_records_keep_reading_what_they_do_not_know_and_default_what_is_missing():
    """A manifest line has more keys (fingerprint, time, input stamp) and an older one fewer: both read."""
    o = Outcome.from_record({"input": "a.png", "output": "o/a.png", "status": "done", "fingerprint": "f",
                             "time": "2026-01-01", "settings": {"tile": 64, "steps": 1, "new_key": 1}})
    assert o.settings == Settings(tile=64) and o.timesteps == () and o.models is None
    assert Settings.from_dict({}) == DEFAULTS


def test_failed_and_not_attempted_name_the_job():
    class Job:
        input, output = "in/a.png", "out/a.png"

    class Task:
        job = Job()

    assert failed(Task(), "why") == Outcome("in/a.png", "out/a.png", "failed", reason="why")
    assert not_attempted(Job(), "disk full").reason == "not attempted: disk full"
