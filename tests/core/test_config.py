from pathlib import Path

import pytest

from edgeq.core.config import config_from_dict, load_config
from edgeq.core.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
BASE = {"name": "m", "model": {"path": "m.keras", "input_shape": [8, 8, 3], "num_classes": 3}}


@pytest.mark.parametrize("name", ["mobilenet_v2", "resnet50"])
def test_default_configs_validate(name):
    cfg = load_config(REPO / "models" / f"{name}.yaml")
    assert cfg.name == name
    assert cfg.model.path == REPO / "models" / f"{name}.keras"
    assert cfg.model.format == "keras"
    assert cfg.stages.tflite_ptq.enabled


def test_unknown_key_names_file_and_key(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("name: m\nmodel: {path: m.keras, input_shape: [8, 8, 3], num_classes: 3}\n"
                 "stages: {tflite_ptq: {representative_imgs: 5}}\n")
    with pytest.raises(ConfigError) as e:
        load_config(f)
    msg = str(e.value)
    assert str(f) in msg and "stages.tflite_ptq.representative_imgs" in msg and "unknown key" in msg
    assert "\n" not in msg


def test_wrong_type_names_key():
    with pytest.raises(ConfigError, match=r"benchmark.runs"):
        config_from_dict({**BASE, "benchmark": {"runs": "many"}})


def test_missing_key():
    with pytest.raises(ConfigError, match=r"missing key 'model.num_classes'"):
        config_from_dict({"name": "m", "model": {"path": "m.keras", "input_shape": [8, 8, 3]}})


def test_paths_resolve_relative_to_config_and_format_inferred(tmp_path):
    cfg = config_from_dict({**BASE, "model": {**BASE["model"], "path": "sub/m.h5"}}, base_dir=tmp_path)
    assert cfg.model.path == tmp_path / "sub" / "m.h5" and cfg.model.format == "h5"
    cfg = config_from_dict({**BASE, "model": {**BASE["model"], "path": "saved"}}, base_dir=tmp_path)
    assert cfg.model.format == "savedmodel"


def test_bad_yaml_is_one_line(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(f)


def test_image_folder_needs_path():
    with pytest.raises(ConfigError, match="needs data.path"):
        config_from_dict({**BASE, "data": {"kind": "image_folder"}})
