"""Regression head shapes, the map file round trip, and map-file bad input."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from sceneloc.runtime.config_overrides import apply_overrides
from sceneloc.runtime.errors import InputError
from sceneloc.mapping import MappingConfig
from sceneloc.maps.scene_map import SceneMap, build_metadata
from sceneloc.nn.encoders import load_encoder
from sceneloc.nn.heads import HeadConfig, RegressionHead


@pytest.mark.parametrize("homogeneous", [True, False])
def test_head_shapes_and_mean_offset(homogeneous):
    mean = torch.tensor([1.0, -2.0, 3.0])
    head = RegressionHead(64, HeadConfig(num_blocks=2, homogeneous=homogeneous), mean)
    out = head(torch.randn(10, 64))
    assert out.shape == (10, 3)
    torch.nn.init.zeros_(head.output_layers[-1].weight)
    torch.nn.init.zeros_(head.output_layers[-1].bias)
    torch.testing.assert_close(head(torch.randn(5, 64)), mean.expand(5, 3))


def test_homogeneous_scale_is_clamped():
    config = HeadConfig(homogeneous=True, min_inverse_scale=0.01, max_inverse_scale=4.0)
    head = RegressionHead(8, config)
    last = head.output_layers[-1]
    torch.nn.init.zeros_(last.weight)
    with torch.no_grad():
        last.bias.copy_(torch.tensor([1.0, 1.0, 1.0, -100.0]))  # w -> min_inverse_scale
    assert head(torch.zeros(1, 8))[0, 0].item() == pytest.approx(100.0, rel=1e-3)
    with torch.no_grad():
        last.bias.copy_(torch.tensor([1.0, 1.0, 1.0, 100.0]))  # w -> clamped at 4
    assert head(torch.zeros(1, 8))[0, 0].item() == pytest.approx(0.25, rel=1e-3)


def _tiny_map(tmp_path):
    encoder = load_encoder("xfeat")
    config = HeadConfig(width=32, num_blocks=1)
    head = RegressionHead(encoder.out_channels, config, torch.tensor([0.5, 0.25, -1.0])).eval()
    meta = build_metadata(encoder, config, 240, {"name": "t"}, {"steps": 1}, MappingConfig().to_dict())
    path = tmp_path / "t.map"
    SceneMap(head, "xfeat", 240, meta).save(path)
    return head, path


def test_map_round_trip_is_exact_at_fp16(tmp_path):
    head, path = _tiny_map(tmp_path)
    loaded = SceneMap.load(path)
    assert loaded.image_height == 240 and loaded.metadata["scene"] == {"name": "t"}
    for k, v in head.state_dict().items():
        expected = v if k == "mean" else v.half().float()
        torch.testing.assert_close(loaded.head.state_dict()[k], expected, rtol=0, atol=0)
    x = torch.randn(7, 64)
    np.testing.assert_allclose(loaded.head(x).detach().numpy(), head.half().float()(x).detach().numpy(), atol=1e-5)
    assert not list(tmp_path.glob("*.tmp"))


def test_truncated_map_is_a_clear_error(tmp_path):
    _, path = _tiny_map(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="t.map: not a sceneloc map"):
        SceneMap.load(path)


def test_foreign_safetensors_and_random_bytes_are_clear_errors(tmp_path):
    foreign = tmp_path / "foreign.safetensors"
    save_file({"x": torch.zeros(3)}, str(foreign))
    with pytest.raises(InputError, match="foreign.safetensors: not a sceneloc map"):
        SceneMap.load(foreign)
    junk = tmp_path / "junk.map"
    junk.write_bytes(b"\x00" * 100)
    with pytest.raises(InputError, match="junk.map: not a sceneloc map"):
        SceneMap.load(junk)
    with pytest.raises(InputError, match="does not exist"):
        SceneMap.load(tmp_path / "missing.map")


def _rewrite_metadata(path, change):
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["sceneloc"])
    change(meta)
    save_file(load_file(str(path)), str(path), metadata={"sceneloc": json.dumps(meta)})


def test_unknown_version_and_encoder_mismatch(tmp_path):
    _, path = _tiny_map(tmp_path)
    _rewrite_metadata(path, lambda m: m.update(format_version=99))
    with pytest.raises(InputError, match="format version 99 is not supported"):
        SceneMap.load(path)
    _, path = _tiny_map(tmp_path)
    _rewrite_metadata(path, lambda m: m["encoder"].update(version="xfeat@0000"))
    with pytest.raises(InputError, match="encoder xfeat@0000"):
        SceneMap.load(path)


def test_config_overrides():
    config = apply_overrides(MappingConfig(), ["iterations=3", "head.num_blocks=6", "use_depth=false", "lr_max=0.01"])
    assert (config.iterations, config.head.num_blocks, config.use_depth, config.lr_max) == (3, 6, False, 0.01)
    with pytest.raises(ValueError, match="unknown field 'nope'"):
        apply_overrides(MappingConfig(), ["nope=1"])
    with pytest.raises(ValueError, match="cannot read 'x' as int"):
        apply_overrides(MappingConfig(), ["iterations=x"])


def test_training_steps_stop_after_max_buffer_epochs():
    from sceneloc.mapping.trainer import training_steps

    config = MappingConfig()  # 10,000 steps of 1,024 rows, at most 16 passes over the buffer
    assert training_steps(config, 1_000_000) == 10_000  # 16 passes would be 15,625 steps
    assert training_steps(config, 64_000) == 1_000  # a few images: 16 passes are 1,000 steps
    assert training_steps(config, 10) == 100  # never fewer than 100 (unless iterations says so)
    config.iterations = 40
    assert training_steps(config, 10) == 40
