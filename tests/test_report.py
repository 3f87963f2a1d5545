"""The visual report: built from the manifest (shards too), paginated, every name escaped; and in a real headless
Chromium (Debian's `chromium`, over the DevTools pipe: see tests/cdp.py) the images render and the slider moves."""

from __future__ import annotations

import io
import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from invsr_cli.commands.htmlreport import page_path, write_report
from tests import imagegen
from tests.cdp import Browser, find_chromium
from tests.harness import invsr, run_in_process, tiny_settings

HOSTILE = "<b>x&y\"'.png"  # a legal file name that is also markup


@pytest.fixture
def chromium():
    path = find_chromium()
    if path is None:
        if os.environ.get("INVSR_REQUIRE_BROWSER") == "1":  # .ci/run sets it: there a missing browser is a failure
            pytest.fail("no chromium on PATH, and INVSR_REQUIRE_BROWSER=1 (apt-get install -y chromium)")
        pytest.skip("no chromium on PATH (apt-get install -y chromium); CI installs it")
    return path


def _fabricate(root: Path, names: list[str], shard_of=None) -> Path:
    """Inputs, outputs (the input enlarged x4 by Pillow: no model needed) and manifest records, as a run writes
    them; with ``shard_of``, records go round-robin into that many shard manifests."""
    inp, out = root / "in", root / "out"
    inp.mkdir(parents=True)
    out.mkdir()
    shards = shard_of or 1
    lines: list[list[str]] = [[] for _ in range(shards)]
    for i, name in enumerate(names):
        imagegen.rgb(inp / name, 24 + 4 * i, 20, seed=i)
        Image.open(inp / name).resize(((24 + 4 * i) * 4, 80), Image.Resampling.BICUBIC).save(out / name)
        rec = {"time": f"2026-01-01T00:00:{i:02d}+0000", "input": str(inp / name), "output": str(out / name),
               "status": "done", "reason": "", "seconds": 0.5 + i, "width": (24 + 4 * i) * 4, "height": 80,
               "tiles": 1, "preset": "blur" if i % 2 else "default", "timesteps": [200],
               "settings": {"preset": "auto", "tile": 128}, "fingerprint": "f"}
        if i % 2:
            rec["degradation"] = {"noise_sigma": 1.5, "blur": 0.71, "blockiness": 1.01}
            rec["auto_reason"] = "blur >= 0.65"
        lines[i % shards].append(json.dumps(rec))
    lines[0].append(json.dumps({"time": "2026-01-01T00:01:00+0000", "input": str(inp / "gone.png"),
                                "output": str(out / "gone.png"), "status": "failed",
                                "reason": "cannot decode <gone.png> & more"}))
    for missing in ("nope1.png", "nope2.png"):  # inputs that made no job: no output, both kept
        lines[0].append(json.dumps({"time": "2026-01-01T00:01:01+0000", "input": missing, "output": "",
                                    "status": "failed", "reason": f"{missing}: no such file"}))
    for k, ls in enumerate(lines):
        name = ".invsr-manifest.jsonl" if shard_of is None else f".invsr-manifest.shard-{k + 1}-of-{shards}.jsonl"
        (out / name).write_text("\n".join(ls) + "\n", encoding="utf-8")
    return out


def test_pages_shards_escaping_and_reuse(tmp_path):
    names = ["a.png", HOSTILE, "ñ 日本.png", "d.png", "e.png"]
    out = _fabricate(tmp_path, names, shard_of=2)
    html = tmp_path / "site" / "r.html"
    res = write_report(out, html, page_size=2)
    assert [p.name for p in res.pages] == ["r.html", "r-2.html", "r-3.html"]
    assert res.images == 5 and res.failed == 3  # records from both shards
    pages = [p.read_text(encoding="utf-8") for p in res.pages]
    text = "".join(pages)
    assert "<b>x" not in text and "&lt;b&gt;x&amp;y&#34;&#39;.png" in text  # every name escaped
    assert "cannot decode &lt;gone.png&gt; &amp; more" in pages[0]  # reasons too
    assert "nope1.png: no such file" in pages[0] and "nope2.png: no such file" in pages[0]
    assert "blur &gt;= 0.65" in text and "0.71" in text  # the auto rule and the measurements
    assert 'href="r-2.html"' in pages[0] and 'href="r.html"' in pages[2]
    assert sum(p.count('class="item"') for p in pages) == 5
    assert all("<script src" not in p and "http" not in p for p in pages)  # self-contained: nothing fetched
    per_image = len(pages[1].encode()) - len(pages[2].encode())  # page 2 holds two images, page 3 one
    assert 500 < per_image < 3_000, per_image  # small pages: images are files, never inlined
    thumbs = sorted((tmp_path / "site" / "r_files").glob("*.webp"))
    assert len(thumbs) == 20
    assert all(f"r_files/{t.name}" in text for t in thumbs)

    mtimes = {t.name: t.stat().st_mtime_ns for t in thumbs}
    (out / "d.png").unlink()  # an output removed since: its thumbnails go, the rest are reused
    res = write_report(out, html, page_size=10)
    assert [p.name for p in res.pages] == ["r.html"] and not page_path(html, 2).exists()
    after = {t.name: t.stat().st_mtime_ns for t in (tmp_path / "site" / "r_files").glob("*.webp")}
    assert len(after) == 16 and all(mtimes[k] == v for k, v in after.items())
    assert "the output file is no longer there" in html.read_text(encoding="utf-8")


@pytest.mark.slow
def test_report_command_needs_a_manifest(tmp_path):
    p = invsr(["report", tmp_path], cwd=tmp_path, text=True)
    assert p.returncode == 2 and "no run manifest" in p.stderr, p.stdout + p.stderr


def _all_images_loaded(b: Browser) -> list[int]:
    b.eval("window.scrollTo(0, document.body.scrollHeight)")  # lazy images: bring every one into view
    return b.eval("""Promise.all([...document.images].map(i => i.complete ? 0 :
                      new Promise(r => { i.onload = i.onerror = r; })))
                      .then(() => [...document.images].map(i => i.naturalWidth))""")


@pytest.mark.slow
def test_report_renders_in_chromium_and_the_slider_moves(tiny_models, tmp_path, chromium):
    d = tmp_path / "in"
    d.mkdir()
    imagegen.rgb(d / "a.png", 48, 40, seed=1)
    imagegen.rgb(d / HOSTILE, 40, 32, seed=2)
    imagegen.rgba(d / "ñ 日本.png", 32, 32)
    (d / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    p = invsr(["upscale", d, out, "--sd-model", tiny_models.sd_dir, "--noise-predictor",
               tiny_models.noise_predictor_path, "--preset", "auto", "--report", out / "report.html"], cwd=tmp_path,
              text=True)
    assert p.returncode == 1, p.stdout + p.stderr  # one input failed; the report is written anyway
    assert (out / "report.html").is_file() and len(list((out / "report_files").glob("*.webp"))) == 12
    p = invsr(["report", out, "-o", tmp_path / "again.html"], cwd=tmp_path, text=True)  # later, from the manifest alone
    assert p.returncode == 0 and "3 image(s), 1 failed" in p.stdout, p.stdout + p.stderr
    page = (tmp_path / "again.html").read_text(encoding="utf-8")
    assert "not recorded in the manifest" not in page and "noise σ" in page  # auto: estimates and the rule

    t0 = time.perf_counter()
    with Browser(chromium, width=1200, height=1800) as b:
        b.goto((tmp_path / "again.html").as_uri())
        widths = _all_images_loaded(b)
        assert len(widths) == 3 * 4 and all(w > 0 for w in widths), widths  # before, after, two crops each
        assert b.eval("document.querySelectorAll('h3 b').length") == 0  # the hostile name is text, not markup
        assert any(HOSTILE in t for t in b.eval("[...document.querySelectorAll('h3')].map(h => h.textContent)"))
        assert b.eval("document.getElementById('n-failed').textContent") == "1"
        b.eval("window.scrollTo(0, 0)")
        shot = np.asarray(Image.open(io.BytesIO(b.screenshot())).convert("L"), dtype=np.float32)
        assert shot.std() > 20, shot.std()  # not a blank page

        box = b.eval("""(() => { const c = document.querySelector('.compare');
                         c.scrollIntoView({block: 'center'}); const r = c.getBoundingClientRect();
                         return {x: r.x, y: r.y, width: r.width, height: r.height,
                                 sx: window.scrollX, sy: window.scrollY}; })()""")
        assert box["width"] > 100 and box["height"] > 100, box
        # input events use viewport coordinates; a screenshot clip uses the document's
        clip_box = {"x": box["x"] + box["sx"], "y": box["y"] + box["sy"], "width": box["width"],
                    "height": box["height"]}
        pixels = np.asarray(Image.open(io.BytesIO(b.screenshot(clip=clip_box))).convert("RGB"), dtype=np.float32)
        assert pixels.std() > 10 and pixels.mean(axis=(0, 1)).max() < 235, pixels.std()  # images drew, not paper

        before = b.eval("document.querySelector('.compare input').value")
        y = box["y"] + box["height"] / 2
        b.drag(box["x"] + box["width"] * 0.5, y, box["x"] + box["width"] * 0.1)
        value = float(b.eval("document.querySelector('.compare input').value"))
        assert before == "50" and value < 25, value
        clip = b.eval("getComputedStyle(document.querySelector('.compare img.before')).clipPath")
        assert clip != "inset(0px 50% 0px 0px)" and clip.startswith("inset("), clip
        moved = np.asarray(Image.open(io.BytesIO(b.screenshot(clip=clip_box))).convert("RGB"), dtype=np.float32)
        assert np.abs(moved - pixels).mean() > 2, np.abs(moved - pixels).mean()  # what is shown changed
        Image.fromarray(np.concatenate([pixels, moved], 1).astype(np.uint8)).save(tmp_path / "slider.png")
        (tmp_path / "screenshot.png").write_bytes(b.screenshot())
        if os.environ.get("INVSR_KEEP_SCREENSHOTS"):  # to look at them: INVSR_KEEP_SCREENSHOTS=DIR
            for name in ("slider.png", "screenshot.png"):
                (Path(os.environ["INVSR_KEEP_SCREENSHOTS"]) / name).write_bytes((tmp_path / name).read_bytes())
    assert time.perf_counter() - t0 < 20


def _animated_run(root: Path) -> Path:
    """An animated GIF in, its frames enlarged x4 by Pillow out (no model needed), and the record a run writes."""
    inp, out = root / "in", root / "out"
    inp.mkdir(parents=True)
    out.mkdir()
    frames = [Image.fromarray(imagegen._pattern(24, 16, seed=10 + k)) for k in range(3)]
    frames[0].save(inp / "anim.gif", save_all=True, append_images=frames[1:], duration=[100, 200, 300], loop=0)
    big = [f.resize((96, 64), Image.Resampling.BICUBIC) for f in frames]
    big[0].save(out / "anim.gif", save_all=True, append_images=big[1:], duration=[100, 200, 300], loop=0)
    rec = {"time": "2026-01-01T00:00:00+0000", "input": str(inp / "anim.gif"), "output": str(out / "anim.gif"),
           "status": "done", "reason": "", "seconds": 1.5, "width": 96, "height": 64, "tiles": 3, "frames": 3,
           "preset": "default", "timesteps": [200], "settings": {"preset": "default", "tile": 128}, "fingerprint": "f"}
    (out / ".invsr-manifest.jsonl").write_text(json.dumps(rec) + "\n", encoding="utf-8")
    return out


def test_an_animated_output_shows_its_first_frame_with_frame_count_and_timing(tmp_path):
    """Issue 19, item 5: animated entries said "cannot make thumbnails: ... animated image with 3 frames"."""
    out = _animated_run(tmp_path)
    result = write_report(out, tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "cannot make thumbnails" not in page
    assert "3 frames, 0.6 s (100–300 ms per frame)" in page and "first frame shown" in page
    files = sorted(p.name.split("-", 1)[1] for p in result.files_dir.glob("*.webp"))
    assert files == ["after.webp", "before.webp", "crop_in.webp", "crop_out.webp"]
    after = next(result.files_dir.glob("*-after.webp"))
    with Image.open(after) as im:  # the output's first frame, not another one
        want = Image.open(out / "anim.gif").convert("RGB").resize(im.size, Image.Resampling.LANCZOS)
        assert np.abs(np.asarray(im.convert("RGB"), np.float32) - np.asarray(want, np.float32)).mean() < 6


@pytest.mark.slow
def test_an_animated_entry_renders_in_chromium(tmp_path, chromium):
    out = _animated_run(tmp_path)
    write_report(out, tmp_path / "r.html")
    with Browser(chromium, width=1200, height=1200) as b:
        b.goto((tmp_path / "r.html").as_uri())
        widths = _all_images_loaded(b)
        assert len(widths) == 4 and all(w > 0 for w in widths), widths  # before, after, two crops
        text = b.eval("document.querySelector('dd.animation').textContent")
        assert text.startswith("3 frames, 0.6 s (100–300 ms per frame)"), text
        box = b.eval("""(() => { const c = document.querySelector('.compare'); c.scrollIntoView();
                         const r = c.getBoundingClientRect();
                         return {x: r.x + window.scrollX, y: r.y + window.scrollY, width: r.width,
                                 height: r.height}; })()""")
        pixels = np.asarray(Image.open(io.BytesIO(b.screenshot(clip=box))).convert("RGB"), dtype=np.float32)
        assert pixels.std() > 10, pixels.std()  # the first frame drew, not an empty box


def test_the_report_is_written_atomically_and_leaves_no_temporary_file(tmp_path):
    """Pages, thumbnails and their metadata go through base/atomic.py: a page that cannot be written (its path
    is a folder) is an error naming it, and no temporary file is left anywhere (the old writer left
    ``.NAME.tmpPID`` beside the page)."""
    from invsr_cli.base.errors import OutputError

    out = _fabricate(tmp_path, ["a.png", "b.png"])
    site = tmp_path / "site"
    write_report(out, site / "r.html")
    (site / "bad.html").mkdir()
    with pytest.raises(OutputError, match="bad.html"):
        write_report(out, site / "bad.html")
    left = [p.name for p in site.rglob("*") if ".tmp" in p.name or p.name.endswith(".invsr-tmp")]
    assert left == []
    assert len(list((site / "r_files").glob("*.webp"))) == 8


def test_settings_and_models_tables_show_values_not_python_reprs(tmp_path):
    """Issue 19, item 8: None, False and a model's identity dict read as a person would write them."""
    out = tmp_path / "out"
    out.mkdir()
    imagegen.rgb(tmp_path / "a.png", 8, 8, seed=0)
    imagegen.rgb(out / "a.png", 32, 32, seed=0)
    rec = {"input": str(tmp_path / "a.png"), "output": str(out / "a.png"), "status": "done", "reason": "",
           "width": 32, "height": 32, "tiles": 1, "seconds": 1.0,
           "settings": {"preset": "default", "width": None, "lossless": False, "provenance": True,
                        "timesteps": [250, 200]},
           "models": {"sd_model": {"source": "local", "path": "/w/sd", "sha256": "ab12"}}}
    (out / ".invsr-manifest.jsonl").write_text(json.dumps(rec) + "\n")
    html = write_report(out, tmp_path / "r.html").pages[0].read_text(encoding="utf-8")
    for repr_ in ("None", "False", "True", "{&#39;", "[250"):
        assert repr_ not in html, repr_
    assert "<code>–</code>" in html and "<code>no</code>" in html and "<code>250, 200</code>" in html
    assert "<code>source local, path /w/sd, sha256 ab12</code>" in html


# -- videos -------------------------------------------------------------------------------------------------------


def _corrupt_frame(path: Path, index: int) -> None:
    """Overwrite the payload of the video packet of frame ``index`` (presentation order) with noise: the file
    still probes, decoding that frame fails (the decoder flags it corrupt)."""
    import av

    with av.open(str(path)) as c:
        packets = sorted((p.pts, p.pos, p.size) for p in c.demux(c.streams.video[0]) if p.size)
    _, pos, size = packets[index]
    data = bytearray(path.read_bytes())
    data[pos + 16:pos + size - 4] = np.random.default_rng(0).integers(0, 256, size - 20, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def video_run(tmp_path_factory, tiny_models, tiny_engine):
    """One run through the tiny models, from 0.25 s (--start): a still; ``clip.mp4`` (3 frames of 32x24 at 4 fps,
    each a keyframe, turned 90 degrees, with audio), so frames 1 and 2, one segment each; and ``bad.mp4`` like it
    but frame 2 corrupt, so its second segment fails. Returns the output folder."""
    pytest.importorskip("av")
    from tests.videogen import make_video

    root = tmp_path_factory.mktemp("video_run")
    src, out = root / "in", root / "out"
    src.mkdir()
    imagegen.rgb(src / "a.png", 32, 24, seed=3)
    make_video(src / "clip.mp4", frames=3, fps=4, gop=1, width=32, height=24, rotation=90)
    _corrupt_frame(make_video(src / "bad.mp4", frames=3, fps=4, gop=1, width=32, height=32, audio=False), 2)
    rec, _ = run_in_process([src], out, engine=tiny_engine,
                            settings=tiny_settings(tiny_models, segment_seconds=0.25, start=0.25))
    status = {Path(o.input).name: (o.status, o.reason) for o in rec.outcomes}
    assert status["a.png"][0] == status["clip.mp4"][0] == "done", status
    assert status["bad.mp4"][0] == "failed" and status["bad.mp4"][1].startswith("segment 2/2: "), status
    return out


def _article(page: str, cls: str) -> str:
    (found,) = re.findall(rf'<article class="{cls}">(.*?)</article>', page, re.S)
    return found


def _rows(html: str) -> list[list[str]]:
    """The cells of each row of the segment table in ``html`` (tags stripped), header left out."""
    table = re.search(r'<table class="segments">(.*?)</table>', html, re.S).group(1)
    return [[re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
            for row in re.findall(r"<tr[^>]*>(.*?)</tr>", table, re.S)[1:]]


def _webp(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float32)


def _like(shown: np.ndarray, frame: np.ndarray, resample) -> float:
    """The mean difference between a poster and ``frame`` brought to the poster's size."""
    want = Image.fromarray(np.ascontiguousarray(frame)).resize((shown.shape[1], shown.shape[0]), resample)
    return float(np.abs(shown - np.asarray(want, dtype=np.float32)).mean())


def test_a_video_entry_has_poster_frames_and_a_segment_table_and_its_segments_are_no_entries(video_run, tmp_path):
    from invsr_cli.imaging import video as V

    result = write_report(video_run, tmp_path / "r.html")
    page = result.pages[0].read_text(encoding="utf-8")
    # entries: the still and the video; the failed video with the failures; its segments' lines in neither
    assert (result.images, result.failed) == (2, 1)
    assert page.count('<article class="item') == 2 and ".invsr-segments" not in page
    assert re.search(r'<b id="n-done">2</b>', page) and re.search(r'<b id="n-failed">1</b>', page)
    records = [json.loads(line) for line in (video_run / ".invsr-manifest.jsonl").read_text().splitlines()]
    entries = [r for r in records if "video" not in r and r["status"] == "done"]
    assert f"<b>{sum(r['seconds'] for r in entries):.1f} s</b>compute" in page  # segments' seconds not twice

    video = _article(page, "item video")
    assert '<a href="../' in video and "clip.mp4</a></h3>" in video  # the output video is linked
    assert "2 frames, 0.5 s, 4 fps, 2 segment(s)" in video and "frame 1 of 2, at 0.0 s" in video
    assert "24×32 → 96×128" in video  # turned as a player shows it
    shown = {alt: (result.pages[0].parent / src, int(w), int(h)) for src, w, h, alt in
             re.findall(r'<img[^>]* src="([^"]+)" width="(\d+)" height="(\d+)" alt="([^"]+)"', video)}
    assert sorted(shown) == ["input", "input detail", "output", "output detail"]
    for path, w, h in shown.values():
        assert path.is_file() and _webp(path).shape == (h, w, 3), path  # each exists and decodes
    assert (shown["input"][1], shown["input"][2]) == (360, 480)

    # the poster frames are of one time: the output's first frame (from 0.25 s) and the input frame at 0.25 s
    src, res = V.probe(video_run.parent / "in" / "clip.mp4"), V.probe(video_run / "clip.mp4")
    src_frames = [f.rgb for f in V.iter_frames(src)]
    before, after = _webp(shown["input"][0]), _webp(shown["output"][0])
    bicubic = Image.Resampling.BICUBIC
    right = _like(before, np.rot90(src_frames[1]), bicubic)
    assert right < 4 and right < _like(before, np.rot90(src_frames[0]), bicubic) - 2, right  # not the same index
    assert right < _like(before, np.rot90(src_frames[1], -1), bicubic) - 2  # turned the right way
    out_frames = [np.rot90(f.rgb) for f in V.iter_frames(res)]
    lanczos = Image.Resampling.LANCZOS
    assert _like(after, out_frames[0], lanczos) < min(4, _like(after, out_frames[1], lanczos) - 2)

    rows = _rows(video)
    assert [r[:2] + r[3:] for r in rows] == [["1/2", "1", "1", "done"], ["2/2", "1", "1", "done"]], rows
    segment_seconds = sorted(r["seconds"] for r in records if r.get("video") == str(video_run / "clip.mp4"))
    assert sorted(float(r[2]) for r in rows) == pytest.approx(segment_seconds, abs=0.006)

    failed = page[page.index('<table class="failures">'):page.index("<h2>Settings</h2>")]
    assert "bad.mp4" in failed and "segment 2/2: " in failed
    (one, two) = _rows(failed)
    assert one[0] == "1/2" and one[4] == "done"
    assert two[:4] == ["2/2", "–", "–", "–"], two  # a failed segment made no frames
    assert two[4].startswith("failed: ") and "corrupt video at 0.500 s (frame 2)" in two[4], two


def test_without_pyav_the_report_has_a_note_instead_of_the_poster_frames(video_run, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)  # `import av` fails, as when the video extra is not installed
    result = write_report(video_run, tmp_path / "r.html")
    page = result.pages[0].read_text(encoding="utf-8")
    video = _article(page, "item video")
    assert "cannot make poster frames: VideoReadError: video needs PyAV" in video and "<img" not in video
    assert "clip.mp4</a></h3>" in video and "2 frames, 2 segment(s)" in video and len(_rows(video)) == 2
    assert len(list(result.files_dir.glob("*.webp"))) == 4  # the still's thumbnails all the same
    assert (result.images, result.failed) == (2, 1)


@pytest.mark.slow
def test_a_video_entry_renders_in_chromium(video_run, tmp_path, chromium):
    write_report(video_run, tmp_path / "r.html")
    with Browser(chromium, width=1200, height=1600) as b:
        b.goto((tmp_path / "r.html").as_uri())
        widths = _all_images_loaded(b)
        assert len(widths) == 2 * 4 and all(w > 0 for w in widths), widths  # the still's four, the video's four
        video = "document.querySelector('article.video')"
        assert b.eval(f"[...{video}.querySelectorAll('img')].map(i => i.naturalWidth > 0)") == [True] * 4
        assert b.eval(f"{video}.querySelector('dd.video').textContent") == "2 frames, 0.5 s, 4 fps, 2 segment(s)"
        cells = b.eval(f"[...{video}.querySelectorAll('table.segments tr')].map(r => r.cells.length)")
        assert cells == [5, 5, 5], cells  # the header and two segments
        box = b.eval(f"""(() => {{ const c = {video}.querySelector('.compare'); c.scrollIntoView();
                         const r = c.getBoundingClientRect();
                         return {{x: r.x + window.scrollX, y: r.y + window.scrollY, width: r.width,
                                 height: r.height}}; }})()""")
        assert box["height"] > box["width"] > 300, box  # the poster's display size: portrait, as turned
        pixels = np.asarray(Image.open(io.BytesIO(b.screenshot(clip=box))).convert("RGB"), dtype=np.float32)
        assert pixels.std() > 10, pixels.std()  # the poster frames drew, not an empty box
        failed = b.eval("[...document.querySelectorAll('table.failures table.segments tr.failed')]"
                        ".map(r => r.textContent)")
        assert len(failed) == 1 and "corrupt video" in failed[0], failed
