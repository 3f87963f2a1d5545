"""Settings: defaults < preset < flags, frozen, and errors that name the key, the file and the allowed values."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from invsr_cli.base.errors import ConfigError
from invsr_cli.settings.preset_files import available_presets, load_preset
from invsr_cli.settings.settings import Preset, resolve_settings

SHIPPED = ("default", "noisy", "blur", "fidelity", "perceptual", "large", "auto")


def test_defaults_are_the_authors_one_step_schedule():
    s = resolve_settings()
    assert s.timesteps == (200,) and s.steps == 1
    assert s.tile == 128 and s.overlap == 32 and s.blend == "gaussian"
    assert s.posterior == "sample" and s.guidance == 1.0 and s.scale == 4.0


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_preset_validates(name):
    preset = load_preset(name)
    assert preset.description, f"preset {name} has no description"
    if preset.auto is None:
        resolve_settings(preset)


def test_shipped_presets_match_the_paper():
    assert resolve_settings(load_preset("noisy")).timesteps == (200,)
    assert resolve_settings(load_preset("blur")).timesteps == (250, 200, 150, 100, 50)
    assert resolve_settings(load_preset("fidelity")).timesteps == (100,)
    assert resolve_settings(load_preset("perceptual")).timesteps == (250,)
    large = resolve_settings(load_preset("large"))
    assert large.tile == 256


def test_available_presets_lists_shipped_ones():
    assert set(SHIPPED) <= set(available_presets())


def test_precedence_defaults_then_preset_then_flags():
    preset = Preset("p", "p.yaml", values={"tile": 256, "overlap": 64, "timesteps": [250, 100], "seed": 7})
    s = resolve_settings(preset, {"overlap": 16, "seed": None})
    assert s.tile == 256  # preset over default
    assert s.overlap == 16  # flag over preset
    assert s.seed == 7  # a flag that was not given (None) does not override
    assert s.timesteps == (250, 100)
    assert s.blend == "gaussian"  # default kept


def test_flag_steps_replace_preset_timesteps():
    preset = Preset("p", "p.yaml", values={"timesteps": [250, 200, 150, 100, 50]})
    assert resolve_settings(preset, {"steps": 1}).timesteps == (200,)
    assert resolve_settings(preset, {"timesteps": "300,100"}).timesteps == (300, 100)


@pytest.mark.parametrize(
    ("values", "fragments"),
    [
        ({"tile": 100}, ["`tile`", "multiple of 16", "100", "bad.yaml"]),
        ({"tiles": 128}, ["unknown key `tiles`", "tile", "bad.yaml"]),
        ({"blend": "cosine"}, ["`blend`", "gaussian, linear", "cosine"]),
        ({"steps": 9}, ["`steps`", "1..5", "9"]),
        ({"timesteps": [100, 200]}, ["`timesteps`", "descending"]),
        ({"timesteps": [0]}, ["`timesteps`", "1..1000"]),
        ({"quality": "high"}, ["`quality`", "integer"]),
        ({"skip_existing": "yes"}, ["`skip_existing`", "true or false"]),
        ({"steps": 2, "timesteps": [200]}, ["`steps` is 2", "`timesteps` has 1"]),
    ],
)
def test_bad_preset_values_name_key_file_and_allowed_values(values, fragments):
    with pytest.raises(ConfigError) as err:
        resolve_settings(Preset("bad", "/x/bad.yaml", values=values))
    for frag in fragments:
        assert frag in str(err.value), str(err.value)


def test_overlap_is_at_most_half_the_tile_and_the_error_names_key_tile_limit_and_origin():
    assert resolve_settings(None, {"tile": 128, "overlap": 64}).overlap == 64  # the authors' 50% stays allowed
    with pytest.raises(ConfigError, match=r"`overlap` must be at most half of `tile` \(128 LR px\), so at most 64; "
                                          r"got 96 \(from command line\)"):
        resolve_settings(None, {"tile": 128, "overlap": 96})
    large = Preset("large", "/p/large.yaml", values={"tile": 64})
    with pytest.raises(ConfigError, match=r"at most 32; got 48 \(from command line\)"):
        resolve_settings(large, {"overlap": 48})
    with pytest.raises(ConfigError, match=r"at most 16; got 32 \(from the defaults\)"):
        resolve_settings(None, {"tile": 32})


def test_broken_user_preset_file_gives_the_documented_error(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    d = tmp_path / "invsr" / "presets"
    d.mkdir(parents=True)
    (d / "mine.yaml").write_text("description: mine\ntile: 100\n")
    (d / "broken.yaml").write_text("tile: [unclosed\n")
    assert "mine" in available_presets()
    with pytest.raises(ConfigError, match=r"preset `mine` \(.*mine.yaml\): `tile` must be a multiple of 16"):
        load_preset("mine")
    with pytest.raises(ConfigError, match=r"broken.yaml: not valid YAML"):
        load_preset("broken")


def test_preset_by_path_and_unknown_name(tmp_path):
    p = tmp_path / "custom.yaml"
    p.write_text("description: custom\nsteps: 3\nseed: 5\n")
    s = resolve_settings(load_preset(str(p)))
    assert s.timesteps == (200, 100, 50) and s.seed == 5 and s.preset == "custom"
    with pytest.raises(ConfigError, match="unknown preset `nope`; available: .*blur"):
        load_preset("nope")
    with pytest.raises(ConfigError, match="does not exist"):
        load_preset(str(tmp_path / "missing.yaml"))


def test_fingerprint_tracks_output_affecting_settings_only():
    a = resolve_settings(None, {})
    assert a.output_fingerprint() == resolve_settings(None, {"batch_size": 4, "device": "cpu"}).output_fingerprint()
    assert a.output_fingerprint() != resolve_settings(None, {"steps": 2}).output_fingerprint()
    assert a.output_fingerprint() != resolve_settings(None, {"sd_model": "/models/x"}).output_fingerprint()


@given(tile=st.integers(1, 4096), overlap=st.integers(-5, 4096))
def test_tile_and_overlap_validation_is_total(tile, overlap):
    """Any integer pair either resolves to a valid plan setting or raises ConfigError, never anything else."""
    try:
        s = resolve_settings(None, {"tile": tile, "overlap": overlap})
    except ConfigError:
        assert tile % 16 or not 16 <= tile <= 2048 or not 0 <= overlap <= tile // 2
    else:
        assert s.tile % 16 == 0 and 0 <= s.overlap <= s.tile // 2 and (s.tile, s.overlap) == (tile, overlap)


def test_one_device_parser_and_one_set_of_dtype_names():
    """engine/devices.py owns the device-string parser and the dtype aliases; settings and --devices use them."""
    import pytest as _pytest

    from invsr_cli.base.errors import ConfigError
    from invsr_cli.engine.devices import DTYPE_ALIASES, canonical_dtype, parse_device
    from invsr_cli.run.executors.devices import parse_devices
    from invsr_cli.settings.settings import resolve_settings

    assert [parse_device(s) for s in ("auto", " CPU ", "cuda", "cuda:3", "mps")] == [
        "auto", "cpu", "cuda", "cuda:3", "mps"]
    for bad in ("gpu", "cuda:", "cuda:x", "cpu:0", "mps:1", ""):
        with _pytest.raises(ValueError, match="auto, cpu, cuda, cuda:N, mps"):
            parse_device(bad)
        with _pytest.raises(ConfigError, match="device"):
            resolve_settings(None, {"device": bad})
    assert resolve_settings(None, {"device": "CUDA:1"}).device == "cuda:1"
    with _pytest.raises(ConfigError, match="devices"):
        parse_devices("cpu,auto")  # a worker needs a real device
    for alias, name in DTYPE_ALIASES.items():
        assert canonical_dtype(alias.upper()) == name
        assert resolve_settings(None, {"dtype": alias}).dtype == name
