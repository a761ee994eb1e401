"""Typed YAML configs: unknown keys and bad values are errors that name the key."""

import pytest

from vilearn.config import ConfigError, load_config, to_dict
from vilearn.data.prepare import PrepareConfig


def test_packaged_config_loads_and_overrides_apply():
    config = load_config(PrepareConfig, "prepare-tiny", ["views.count=5", "near_sigmas=[0.1, 0.2]"])
    assert config.views.count == 5 and config.near_sigmas == (0.1, 0.2)
    assert config.surface_points == 2048


def test_unknown_key_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("views:\n  fov: 30\n")
    with pytest.raises(ConfigError, match=r"bad\.views: unknown key 'fov'"):
        load_config(PrepareConfig, path)


def test_wrong_type_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("surface_points: many\n")
    with pytest.raises(ConfigError, match="surface_points: expected an integer, got 'many'"):
        load_config(PrepareConfig, path)


def test_invalid_value_is_named():
    with pytest.raises(ConfigError, match="fov_deg"):
        load_config(PrepareConfig, None, ["views.fov_deg=0.1"])


def test_round_trip_through_plain_data():
    config = load_config(PrepareConfig, "prepare-demo")
    assert load_config(PrepareConfig, None, []) != config
    from vilearn.config import from_dict

    assert from_dict(PrepareConfig, to_dict(config)) == config


def test_the_readme_names_every_packaged_config():
    from pathlib import Path

    from vilearn.config import packaged_configs

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    missing = [name for name in packaged_configs() if f"`{name}`" not in readme]
    assert not missing, f"README does not name the packaged configs {missing}"
