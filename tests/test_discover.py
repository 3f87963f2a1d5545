"""Inputs -> jobs: folders, globs, stdin lists, naming, safety, collisions."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

import pytest

from invsr_cli.base.errors import ConfigError
from invsr_cli.run.discover import IMAGE_EXTENSIONS, discover, display_path, output_name


def _touch(root: Path, *names: str) -> None:
    for name in names:
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")


def _outs(result, out: Path) -> list[str]:
    return [j.output.relative_to(out).as_posix() for j in result.jobs]


@pytest.fixture
def tree(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _touch(
        tmp_path / "in",
        "b.PNG",
        "a.jpg",
        "notes.txt",
        ".hidden.png",
        ".cache/e.png",
        "sub/c.png",
        "sub/deep/d.webp",
        "sub/deep/e.tiff",
    )
    return tmp_path


def test_folder_non_recursive_takes_its_images_only(tree):
    res = discover(["in"], tree / "out")
    assert _outs(res, tree / "out") == ["a.jpg", "b.PNG"]
    assert [j.input for j in res.jobs] == [Path("in/a.jpg"), Path("in/b.PNG")]
    assert [j.format for j in res.jobs] == ["jpg", "png"] and not res.errors


def test_folder_recursive_mirrors_the_tree_and_skips_hidden(tree):
    res = discover(["in"], tree / "out", recursive=True)
    assert _outs(res, tree / "out") == ["a.jpg", "b.PNG", "sub/c.png", "sub/deep/d.webp", "sub/deep/e.tiff"]
    assert res.jobs[2].rel == PurePosixPath("sub/c.png")


def test_empty_folder_and_missing_input_are_errors(tree):
    (tree / "empty").mkdir()
    res = discover(["empty", "nope.png", "in/a.jpg"], tree / "out")
    assert [e[0] for e in res.errors] == ["empty", "nope.png"]
    assert "no image or video files in this folder (use -r to descend)" in res.errors[0][1]
    assert "no such file or folder" in res.errors[1][1]
    assert _outs(res, tree / "out") == ["a.jpg"]


def test_glob_with_double_star(tree):
    res = discover(["in/**/*.png"], tree / "out")
    assert _outs(res, tree / "out") == ["sub/c.png"]  # case-sensitive like the shell; hidden skipped
    res = discover(["in/sub/**/*"], tree / "out")
    assert _outs(res, tree / "out") == ["c.png", "deep/d.webp", "deep/e.tiff"]
    res = discover(["in/*"], tree / "out")  # one level, images only
    assert _outs(res, tree / "out") == ["a.jpg", "b.PNG"]
    res = discover(["in/*/*.png"], tree / "out")
    assert _outs(res, tree / "out") == ["sub/c.png"]


def test_glob_absolute_and_no_match(tree):
    res = discover([str(tree / "in" / "sub" / "*.png"), "in/*.gif"], tree / "out")
    assert _outs(res, tree / "out") == ["c.png"]
    assert res.errors == [("in/*.gif", "in/*.gif: no image or video files match")]


def test_literal_file_with_glob_characters(tree):
    _touch(tree, "img[1].png")
    res = discover(["img[1].png"], tree / "out")
    assert _outs(res, tree / "out") == ["img[1].png"] and not res.errors


def test_explicit_file_taken_whatever_its_extension(tree):
    res = discover(["in/notes.txt"], tree / "out")
    assert _outs(res, tree / "out") == ["notes.png"] and res.jobs[0].format == "png"


def test_stdin_relative_absolute_and_dotdot(tree):
    _touch(tree, "elsewhere/x.png", "in/sub/y.png")
    stdin = [
        "./in/sub/c.png",  # relative: mirrors its normalised path
        str(tree / "in" / "a.jpg"),  # absolute: basename
        "in/sub/../../elsewhere/x.png",  # '..': basename
        "in/sub/deep",  # folders listed by find: ignored
        "",
        "missing.png",
    ]
    res = discover(["-"], tree / "out", stdin_paths=stdin)
    assert _outs(res, tree / "out") == ["in/sub/c.png", "a.jpg", "x.png"]
    assert res.errors == [("missing.png", "missing.png: no such file")]
    for job in res.jobs:
        assert Path(os.path.realpath(job.output)).is_relative_to(os.path.realpath(tree / "out"))


def test_stdin_traversal_attempts_stay_inside_output(tree):
    os.makedirs(tree / "a" / "b")
    _touch(tree, "secret.png")
    stdin = ["a/b/../../secret.png", "../" + tree.name + "/secret.png"]
    res = discover(["-"], tree / "a" / "out", stdin_paths=stdin)
    assert _outs(res, tree / "a" / "out") == ["secret.png"]  # both name the same file: one job
    assert res.jobs[0].output == tree / "a" / "out" / "secret.png"


def test_stdin_not_provided(tree):
    res = discover(["-"], tree / "out")
    assert res.errors == [("-", "stdin list requested but not provided")]


def test_duplicates_removed_first_wins(tree):
    os.symlink(tree / "in" / "a.jpg", tree / "link.jpg")
    res = discover(["in/a.jpg", "in", "link.jpg", str(tree / "in" / "a.jpg")], tree / "out")
    assert [str(j.input) for j in res.jobs] == ["in/a.jpg", "in/b.PNG"]
    assert [j.spec for j in res.jobs] == ["in/a.jpg", "in"]
    assert not res.errors


def test_order_is_deterministic(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    names = ["z.png", "a.png", "M.png", "b10.png", "b2.png", "_.png"]
    for name in names:
        _touch(tmp_path / "in", name)
    _touch(tmp_path, "first.png")
    res = discover(["first.png", "in"], tmp_path / "out")
    expected = ["first.png"] + sorted(names, key=os.fsencode)
    assert _outs(res, tmp_path / "out") == expected
    assert _outs(discover(["first.png", "in"], tmp_path / "out"), tmp_path / "out") == expected


def test_collisions_raise_before_any_work(tree):
    _touch(tree, "x/a.png", "y/a.png", "in2/a.png")
    with pytest.raises(ConfigError) as err:
        discover(["in/a.jpg", "in2"], tree / "out", fmt="png")
    msg = str(err.value)
    assert "1 output(s) would be written by more than one input" in msg
    assert "out/a.png <- in/a.jpg, in2/a.png" in msg
    with pytest.raises(ConfigError, match=r"out/a\.png <- x/a\.png, y/a\.png"):
        discover(["x/a.png", "y/a.png"], tree / "out")


def test_outputs_differing_only_in_case_collide_where_the_file_system_ignores_case(tmp_path, monkeypatch):
    from invsr_cli.run.discover import case_insensitive

    monkeypatch.chdir(tmp_path)
    (tmp_path / "in").mkdir()
    for name in ("Photo.png", "photo.png", "other.png"):
        (tmp_path / "in" / name).write_bytes(b"x")
    # The probe on this machine's real file system, which tells the two names apart (Linux ext4/tmpfs/overlay):
    assert case_insensitive(tmp_path / "out" / "not" / "made" / "yet") is False
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".invsr-case-probe")]  # it cleans up
    assert len(discover(["in"], "out").jobs) == 3
    # Where it would not (macOS, Windows, a casefolded mount), the pair is refused before any work:
    with pytest.raises(ConfigError) as err:
        discover(["in"], "out", fold_case=True)
    msg = str(err.value)
    assert "ignores letter case" in msg and "in/Photo.png -> Photo.png" in msg and "in/photo.png -> photo.png" in msg
    assert "other.png" not in msg


def test_collision_list_is_limited(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for i in range(30):
        _touch(tmp_path, f"p/{i}.png", f"q/{i}.jpg")
    with pytest.raises(ConfigError) as err:
        discover(["p", "q"], tmp_path / "out", fmt="webp")
    lines = str(err.value).splitlines()
    assert lines[0].startswith("30 output(s)") and lines[-1] == "  ... and 20 more" and len(lines) == 12


def test_suffix_and_format_mapping(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _touch(tmp_path / "in", "a.jpeg", "b.bmp", "c.TIF", "d.gif", "e.webp", "archive.tar.png")
    res = discover(["in"], tmp_path / "out", suffix="_x4")
    assert sorted(_outs(res, tmp_path / "out")) == [
        "a_x4.jpeg",
        "archive.tar_x4.png",
        "b_x4.png",
        "c_x4.TIF",
        "d_x4.gif",
        "e_x4.webp",
    ]
    fmts = {j.output.name: j.format for j in res.jobs}
    assert fmts["a_x4.jpeg"] == "jpg" and fmts["c_x4.TIF"] == "tiff" and fmts["b_x4.png"] == "png"
    res = discover(["in"], tmp_path / "out", fmt="tiff")
    assert sorted(_outs(res, tmp_path / "out"))[:2] == ["a.tiff", "archive.tar.tiff"]
    assert {j.format for j in res.jobs} == {"tiff"}


def test_output_name_helper():
    assert output_name(PurePosixPath("s/a.JPG"), suffix="-up") == (PurePosixPath("s/a-up.JPG"), "jpg")
    assert output_name(PurePosixPath("noext"), fmt="auto") == (PurePosixPath("noext.png"), "png")
    assert output_name(PurePosixPath("a.png"), fmt="jpg") == (PurePosixPath("a.jpg"), "jpg")


def test_bad_format_and_suffix(tree):
    with pytest.raises(ConfigError, match="`format` must be one of auto, png, jpg, webp, tiff, avif, jxl, gif; got 'bmp'"):
        discover(["in"], tree / "out", fmt="bmp")
    with pytest.raises(ConfigError, match="`suffix` must not contain a path separator"):
        discover(["in"], tree / "out", suffix="/../x")


def test_symlinked_folder_in_output_pointing_outside_is_refused(tree):
    (tree / "out").mkdir()
    (tree / "elsewhere").mkdir()
    os.symlink(tree / "elsewhere", tree / "out" / "sub")
    res = discover(["in"], tree / "out", recursive=True)
    assert "sub/c.png" not in _outs(res, tree / "out") and "a.jpg" in _outs(res, tree / "out")
    refused = [reason for spec, reason in res.errors]
    assert len(refused) == 3 and all("would land outside OUTPUT_DIR" in r for r in refused)
    assert not any(Path(os.path.realpath(j.output)).is_relative_to(tree / "elsewhere") for j in res.jobs)


def test_inputs_inside_the_output_folder(tree):
    _touch(tree, "in/out/old.png")
    res = discover(["in"], tree / "in" / "out", recursive=True)  # a re-run over a tree holding its outputs
    assert "old.png" not in [j.input.name for j in res.jobs] and not res.errors
    assert len(res.jobs) == 5
    res = discover(["in/out/old.png"], tree / "in" / "out")
    assert res.errors and "is inside OUTPUT_DIR" in res.errors[0][1] and not res.jobs
    res = discover(["in/out"], tree / "in" / "out")
    assert res.errors and "is inside OUTPUT_DIR" in res.errors[0][1]
    res = discover(["-"], tree / "in" / "out", stdin_paths=["in/out/old.png"])  # find | invsr, re-run
    assert not res.jobs and not res.errors  # skipped silently


def test_non_utf8_file_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    os.makedirs(b"in")
    with open(b"in/caf\xe9.png", "wb") as f:
        f.write(b"x")
    res = discover(["in"], tmp_path / "out")
    assert len(res.jobs) == 1
    assert os.fsencode(res.jobs[0].output.name) == b"caf\xe9.png"
    assert display_path(res.jobs[0].input) == "in/caf\\xe9.png"


def test_symlink_loops_do_not_hang(tree):
    os.symlink(tree / "in", tree / "in" / "sub" / "loop")
    os.symlink("loop2", tree / "in" / "loop2")  # a link to itself
    res = discover(["in"], tree / "out", recursive=True)
    assert _outs(res, tree / "out") == ["a.jpg", "b.PNG", "sub/c.png", "sub/deep/d.webp", "sub/deep/e.tiff"]
    res = discover(["in/**/*.png"], tree / "out")
    assert _outs(res, tree / "out") == ["sub/c.png"]


def test_broken_links_and_special_files_in_folders_are_reported_by_the_reader(tree):
    os.symlink(tree / "nowhere.png", tree / "in" / "broken.png")
    os.mkfifo(tree / "in" / "fifo.jpg")
    res = discover(["in"], tree / "out")
    assert {j.input.name for j in res.jobs} >= {"broken.png", "fifo.jpg"}


def test_image_extensions_match_what_we_read():
    assert {".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".gif"} <= IMAGE_EXTENSIONS
    assert all(e == e.lower() and e.startswith(".") for e in IMAGE_EXTENSIONS)


def test_display_path_is_one_printable_line():
    assert display_path(os.fsdecode(b"a\xffb\nc\td.png")) == "a\\xffb\\nc\\td.png"
    assert display_path(b"x/\xc3\xa9.png") == "x/é.png"


def test_unreadable_subfolder_is_reported_and_the_rest_continues(tree, monkeypatch):
    import invsr_cli.run.discover as discover_mod

    real_scandir = os.scandir

    def scandir(path):
        if os.path.basename(os.fspath(path)) == "deep":
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)

    monkeypatch.setattr(discover_mod.os, "scandir", scandir)
    res = discover(["in"], tree / "out", recursive=True)
    assert _outs(res, tree / "out") == ["a.jpg", "b.PNG", "sub/c.png"]
    assert res.errors == [("in", "in/sub/deep: cannot list folder: Permission denied")]


def test_very_deep_tree(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    chain = ["in"]
    for _ in range(1200):  # deeper than Python's recursion limit (os.makedirs itself would recurse)
        chain.append(os.path.join(chain[-1], "d"))
    try:
        for folder in chain:
            os.mkdir(folder)
        _touch(Path(chain[-1]), "x.png")
        res = discover(["in"], tmp_path / "out", recursive=True)
        assert len(res.jobs) == 1
        assert res.jobs[0].rel.parts[-1] == "x.png" and len(res.jobs[0].rel.parts) == 1201
    finally:  # shutil.rmtree (pytest's tmp_path cleanup) recurses and would fail on this tree
        if os.path.exists(os.path.join(chain[-1], "x.png")):
            os.remove(os.path.join(chain[-1], "x.png"))
        for folder in reversed(chain):
            if os.path.isdir(folder):
                os.rmdir(folder)
