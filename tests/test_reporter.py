"""The reporters: the rich display (markup-safe file names, a tiles bar with a total) and a closed stdout."""

from __future__ import annotations

import os

import pytest
from rich.console import Console

from invsr_cli.work.report import JsonReporter, Outcome, PlainReporter, RichReporter, StdoutClosed, Summary


def _recording_reporter() -> RichReporter:
    console = Console(record=True, width=200, force_terminal=False, color_system=None)
    return RichReporter(console=console)


@pytest.mark.parametrize("name", ["[x].png", "[red]b[/red].jpg", "[bold]", "a[b]c [/].png"])
def test_rich_prints_file_names_verbatim(name):
    rep = _recording_reporter()
    rep.start(2, 2, 0)
    rep.outcome(Outcome(f"in/{name}", f"out/{name}", "failed", reason=f"cannot decode {name}"))
    rep.warning(f"out/{name} is stale: recomputing")
    rep.finish(Summary())
    text = rep.console.export_text()
    assert f"failed  in/{name}: cannot decode {name}" in text, text
    assert f"warning: out/{name} is stale: recomputing" in text, text


def test_tiles_bar_total_grows_as_images_are_planned():
    rep = _recording_reporter()
    rep.start(3, 3, 0)
    tiles = rep.progress.tasks[rep._tiles]
    assert tiles.total is None  # nothing planned yet: no made-up total
    rep.tiles_planned(4)
    rep.tiles_done(4)
    assert tiles.total is None and not tiles.finished  # 2 images still to read: never a finished-looking bar
    rep.tiles_planned(9)
    rep.tiles_planned(0)
    assert tiles.total == 13 and tiles.completed == 4
    rep.tiles_done(9)
    assert tiles.finished
    rep.finish(Summary())


def test_the_display_says_what_it_does_and_its_columns_line_up():
    rep = _recording_reporter()
    rep.start(3, 3, 0)
    rep.stage("loading the models")
    text = rep.console.export_text() + _rendered(rep)
    assert "loading the models" in text, text
    rep.stage("")
    rep.tiles_planned(120)
    rep.tiles_done(17)
    rep.outcome(Outcome("in/a.png", "out/a.png", "failed", reason="cannot decode"))  # failed before tiling
    lines = [line for line in _rendered(rep).splitlines() if line.strip()]
    images, tiles = (next(line for line in lines if line.lstrip().startswith(w)) for w in ("images", "tiles"))
    assert " 1/3" in images and " 17/?" in tiles, lines  # 2 images still unread: the tiles' total is unknown
    assert images.index("1/3") + 3 == tiles.index("17/?") + 4, lines  # the counts' column ends line up
    rep.finish(Summary())


def _rendered(rep: RichReporter) -> str:
    console = Console(record=True, width=200, force_terminal=False, color_system=None)
    console.print(rep.progress.get_renderable())
    return console.export_text()


def test_tiles_planned_is_a_no_op_before_start_and_for_other_reporters(tmp_path):
    _recording_reporter().tiles_planned(5)  # before start: nothing to grow, no error
    with open(tmp_path / "out.txt", "w") as f:
        PlainReporter(out=f, err=f).tiles_planned(5)
        JsonReporter(out=f).tiles_planned(5)
    assert (tmp_path / "out.txt").read_text() == ""


@pytest.mark.parametrize("make", [lambda f: JsonReporter(out=f), lambda f: PlainReporter(out=f, err=f)],
                         ids=["json", "plain"])
def test_a_closed_reader_ends_the_run_and_silences_the_stream(make):
    r, w = os.pipe()
    with os.fdopen(w, "w") as stream:
        rep = make(stream)
        rep.outcome(Outcome("a.png", "out/a.png", "done", width=4, height=4, tiles=1))
        with os.fdopen(r, "rb") as reader:
            assert b"a.png" in reader.read1(1 << 16)
        # the reader is gone (| head -n 1): the next line raises StdoutClosed, not one image's failure
        with pytest.raises(StdoutClosed) as info:
            rep.outcome(Outcome("b.png", "out/b.png", "done", width=4, height=4, tiles=1))
        assert not isinstance(info.value, Exception)  # passes the runner's `except Exception` handlers
        assert isinstance(info.value.__cause__, BrokenPipeError)
        # the descriptor now points at /dev/null: the closing summary and the flush at exit write nowhere
        rep.finish(Summary())
        assert os.path.samestat(os.fstat(stream.fileno()), os.stat(os.devnull))
