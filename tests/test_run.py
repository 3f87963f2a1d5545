"""The run's driver in process (invsr_cli.run.runner: ``Run``, ``Recorder``, ``run_batch``) with a fake executor:
which jobs reach the executor (skip states: up to date, stale, output exists, missing output), what the manifest,
the summary and the reporter are told, shards, input errors and an executor that stops early. No model loads: the
executor writes a small file per task, so these run in milliseconds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from invsr_cli.run.discover import discover
from invsr_cli.run.manifest import MANIFEST_NAME, Manifest, manifest_name
from invsr_cli.run.runner import Recorder, Run, run_batch
from invsr_cli.run.shard import Shard
from invsr_cli.settings.settings import FixedPolicy
from invsr_cli.work.report import Outcome
from tests import imagegen
from tests.harness import Collect, json_lines, manifest_records, run_in_process, temps, tiny_settings


class FakeExecutor:
    """Hands back one outcome per task without a model: "done" (and a 2-byte output file written), or "failed"
    for the inputs named in ``fail``; ``stop_after`` tasks, it stops early like a full disk does."""

    def __init__(self, fail: tuple[str, ...] = (), stop_after: int | None = None) -> None:
        self.fail, self.stop_after = fail, stop_after
        self.stopped: str | None = None
        self.seen: list[list[tuple[str, int]]] = []  # per call: (input name, task index)

    def run(self, tasks, policy, ctx):
        self.seen.append([(task.job.input.name, task.index) for task in tasks])
        for n, task in enumerate(tasks):
            job = task.job
            if self.stop_after is not None and n >= self.stop_after:
                self.stopped = "disk full (fake)"
                yield Outcome(str(job.input), str(job.output), "failed", reason=f"not attempted: {self.stopped}")
                continue
            if job.input.name in self.fail:
                yield Outcome(str(job.input), str(job.output), "failed", reason="engine said no (fake)",
                              settings=policy.settings)
                continue
            job.output.parent.mkdir(parents=True, exist_ok=True)
            job.output.write_bytes(b"ok")
            yield Outcome(str(job.input), str(job.output), "done", width=8, height=4, tiles=2,
                          settings=policy.settings)

    @property
    def tasks(self) -> list[str]:
        """Every task's input name, over all calls."""
        return [name for call in self.seen for name, _ in call]

    @property
    def names(self) -> list[list[str]]:
        return [[name for name, _ in call] for call in self.seen]


@pytest.fixture
def src(tmp_path) -> Path:
    d = tmp_path / "in"
    d.mkdir()
    for i, name in enumerate(["a.png", "b.png", "c.png"]):
        imagegen.rgb(d / name, 8, 6, seed=i)
    return d


def _run(src: Path, out: Path, ex: FakeExecutor, **flags):
    return run_in_process([src], out, executor=ex, settings=tiny_settings(**flags))


def _by_name(outcomes) -> dict[str, tuple[str, str]]:
    return {Path(o.input).name: (o.status, o.reason) for o in outcomes}


def test_every_job_goes_to_the_executor_once_and_every_outcome_is_recorded(src, tmp_path):
    out, ex = tmp_path / "out", FakeExecutor(fail=("b.png",))
    rep, summary = _run(src, out, ex)
    assert ex.seen == [[("a.png", 0), ("b.png", 1), ("c.png", 2)]]  # the index is the job's order in the run
    assert (summary.processed, summary.failed, summary.skipped) == (2, 1, 0)
    assert (summary.output_pixels, summary.tiles) == (2 * 8 * 4, 2 * 2)
    assert _by_name(rep.outcomes) == {"a.png": ("done", ""), "b.png": ("failed", "engine said no (fake)"),
                                      "c.png": ("done", "")}
    assert summary.outcomes == rep.outcomes
    recs = manifest_records(out)
    assert [(Path(r["input"]).name, r["status"]) for r in recs] == [("a.png", "done"), ("b.png", "failed"),
                                                                     ("c.png", "done")]
    for r in recs:  # what skip-existing compares on the next run
        assert r["fingerprint"] and r["settings"]["tile"] == 32
        assert r["input_size"] == (src / Path(r["input"]).name).stat().st_size
    assert temps(out) == []


def test_up_to_date_outputs_are_skipped_and_never_reach_the_executor(src, tmp_path):
    out = tmp_path / "out"
    _run(src, out, FakeExecutor())
    again = FakeExecutor()
    rep, summary = _run(src, out, again)
    assert again.tasks == []  # nothing to compute: no task reaches the executor
    assert _by_name(rep.outcomes) == {n: ("skipped", "up to date") for n in ("a.png", "b.png", "c.png")}
    assert (summary.processed, summary.skipped) == (0, 3)
    assert len(manifest_records(out)) == 3  # a skip appends nothing


def test_a_changed_input_or_other_settings_make_an_output_stale_and_it_is_recomputed(src, tmp_path):
    out = tmp_path / "out"
    _run(src, out, FakeExecutor())
    imagegen.rgb(src / "b.png", 10, 6, seed=9)  # another size on disk: the stamp differs
    ex = FakeExecutor()
    rep, summary = _run(src, out, ex)
    assert ex.names == [["b.png"]]
    assert rep.status("a.png") == ("skipped", "up to date") and rep.status("b.png") == ("done", "")
    assert any("b.png is stale" in w for w in rep.warnings), rep.warnings

    other = FakeExecutor()
    _run(src, out, other, steps=2)  # other settings: another fingerprint, every output stale
    assert other.names == [["a.png", "b.png", "c.png"]]


def test_an_output_the_manifest_does_not_know_is_kept_and_a_missing_output_is_computed(src, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.png").write_bytes(b"made by hand")
    ex = FakeExecutor()
    rep, _ = _run(src, out, ex)
    assert rep.status("a.png") == ("skipped", "output exists") and (out / "a.png").read_bytes() == b"made by hand"
    assert ex.names == [["b.png", "c.png"]]

    (out / "c.png").unlink()  # the manifest says done, the file is gone
    ex = FakeExecutor()
    rep, _ = _run(src, out, ex)
    assert ex.names == [["c.png"]] and rep.status("c.png") == ("done", "")


def test_without_skip_existing_everything_is_computed_again(src, tmp_path):
    out = tmp_path / "out"
    _run(src, out, FakeExecutor())
    ex = FakeExecutor()
    _, summary = _run(src, out, ex, skip_existing=False)
    assert ex.names == [["a.png", "b.png", "c.png"]] and summary.processed == 3


def test_a_failed_attempt_is_retried_by_the_next_run(src, tmp_path):
    out = tmp_path / "out"
    _run(src, out, FakeExecutor(fail=("b.png",)))
    ex = FakeExecutor()
    rep, _ = _run(src, out, ex)
    assert ex.names == [["b.png"]] and rep.status("b.png") == ("done", "")
    assert [r["status"] for r in manifest_records(out) if r["input"].endswith("b.png")] == ["failed", "done"]


def test_input_errors_count_as_failed_with_their_reason_and_are_not_computed(src, tmp_path):
    out, ex = tmp_path / "out", FakeExecutor()
    found = discover([str(src / "a.png")], out)
    rep = Collect()
    summary = run_batch(found.jobs, tiny_settings(), output_dir=out, reporter=rep, executor=ex, handle_signals=False,
                        input_errors=[("nowhere/*.png", "matches nothing")])
    assert ex.names == [["a.png"]]
    assert (summary.processed, summary.failed) == (1, 1)
    assert ("nowhere/*.png", "failed", "matches nothing") in [(o.input, o.status, o.reason) for o in rep.outcomes]
    assert [(r["input"], r["status"], r["reason"]) for r in manifest_records(out) if r["status"] == "failed"] == [
        ("nowhere/*.png", "failed", "matches nothing")]


def test_shards_split_the_jobs_each_into_its_own_manifest_and_together_cover_every_input(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    names = [f"img_{i:02d}.png" for i in range(8)]
    for i, name in enumerate(names):
        imagegen.rgb(src / name, 6, 6, seed=i)
    found = discover([str(src)], out)
    errors = [(f"missing_{i}.png", "no such file") for i in range(4)]
    given: list[str] = []
    for index in range(3):
        shard, ex = Shard(index, 3), FakeExecutor()
        summary = run_batch(found.jobs, tiny_settings(), output_dir=out, reporter=Collect(), executor=ex,
                            handle_signals=False, shard=shard, input_errors=errors)
        mine = ex.tasks
        assert all(shard.holds(n) for n in mine)
        assert summary.processed == len(mine)
        assert summary.failed == sum(shard.holds(spec) for spec, _ in errors)  # an input error belongs to one shard
        own = json_lines((out / manifest_name(shard.tag)).read_bytes())  # this shard's own manifest
        assert sorted(Path(r["input"]).name for r in own if r["status"] == "done") == sorted(mine)
        given += mine
    assert sorted(given) == names  # each input in exactly one shard
    assert not (out / MANIFEST_NAME).exists()  # no shard writes the plain manifest
    recs = manifest_records(out)
    assert sorted(Path(r["input"]).name for r in recs if r["status"] == "done") == names
    assert sorted(r["input"] for r in recs if r["status"] == "failed") == sorted(s for s, _ in errors)

    ex = FakeExecutor()  # a plain run afterwards reads every shard's manifest: all up to date
    _, summary = run_in_process([src], out, executor=ex)
    assert ex.tasks == [] and summary.skipped == len(names)


def test_an_executor_that_stops_early_stops_the_run_and_says_why(src, tmp_path):
    ex = FakeExecutor(stop_after=1)
    rep, summary = _run(src, tmp_path / "out", ex)
    assert summary.stopped == "disk full (fake)"
    assert [o.status for o in rep.outcomes] == ["done", "failed", "failed"]
    assert rep.outcomes[-1].reason == "not attempted: disk full (fake)"


def test_a_run_fed_twice_keeps_one_executor_and_skips_what_it_made(src, tmp_path):
    """`invsr watch` feeds one Run again and again: the second batch sees the first one's outputs."""
    out, ex, rep = tmp_path / "out", FakeExecutor(), Collect()
    jobs = discover([str(src)], out).jobs
    with Run(tiny_settings(), output_dir=out, reporter=rep, executor=ex, handle_signals=False) as run:
        run.process(jobs[:2])
        run.process(jobs)
    assert ex.names == [["a.png", "b.png"], ["c.png"]]
    assert (run.summary.processed, run.summary.skipped) == (3, 2)
    assert run.summary.wall_seconds > 0


def test_the_dry_run_plans_without_calling_the_executor(src, tmp_path):
    ex = FakeExecutor()
    rep, summary = run_in_process([src], tmp_path / "out", executor=ex, dry_run=True)
    assert ex.seen == [] and summary.planned == 3
    assert {o.status for o in rep.outcomes} == {"planned"}
    assert not (tmp_path / "out").exists()  # no lock, no manifest, no folder


# -- the Recorder alone -------------------------------------------------------------------------------------------


def test_the_recorder_counts_each_status_and_appends_only_done_and_failed(tmp_path):
    policy = FixedPolicy(tiny_settings())
    rep = Collect()
    rec = Recorder(rep, Manifest(tmp_path / MANIFEST_NAME), policy, models={"sd_model": "tiny"})
    for o in [Outcome("a", "A", "done", width=4, height=2, tiles=3), Outcome("b", "B", "skipped", reason="up to date"),
              Outcome("c", "C", "failed", reason="broken"), Outcome("d", "D", "planned", tiles=5)]:
        rec.record(o)
    s = rec.summary
    assert (s.processed, s.skipped, s.failed, s.planned, s.output_pixels, s.tiles) == (1, 1, 1, 1, 8, 8)
    assert [o.input for o in rep.outcomes] == ["a", "b", "c", "d"]
    recs = manifest_records(tmp_path)
    assert [(r["input"], r["status"]) for r in recs] == [("a", "done"), ("c", "failed")]
    assert all(r["models"] == {"sd_model": "tiny"} and r["fingerprint"] == rec.fingerprint for r in recs)


def test_an_outcome_made_with_other_weights_records_those_and_their_fingerprint(tmp_path):
    policy = FixedPolicy(tiny_settings())
    rec = Recorder(Collect(), Manifest(tmp_path / MANIFEST_NAME), policy, models={"sd_model": "expected"})
    rec.record(Outcome("a", "A", "done", models={"sd_model": "fetched", "revision": "abc"}))
    (r,) = manifest_records(tmp_path)
    assert r["models"] == {"sd_model": "fetched", "revision": "abc"} and r["fingerprint"] != rec.fingerprint


def test_a_manifest_that_cannot_be_appended_to_is_a_warning_not_a_lost_outcome(tmp_path):
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the manifest's folder should be")
    rep = Collect()
    manifest = Manifest(tmp_path / MANIFEST_NAME)
    manifest.path = blocked / MANIFEST_NAME  # its folder is a file now: every append fails (as root, too)
    rec = Recorder(rep, manifest, FixedPolicy(tiny_settings()))
    rec.record(Outcome("a", "A", "done"))
    assert rec.summary.processed == 1 and len(rep.outcomes) == 1
    assert len(rep.warnings) == 1 and "cannot append to the manifest" in rep.warnings[0]
    assert os.path.isfile(blocked)
