"""Step1X-3D's shape DiT loaded into MMDiT through the name map, against a fixture made by its
reference code (tests/fixtures/make_step1x_dit.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from vilearn.dit import MMDiT, count_parameters, dit_config, step1x3d_to_mmdit

FIXTURE = Path(__file__).parent / "fixtures" / "step1x_dit.safetensors"


def read_fixture():
    """(the small config's keys, the released-layout weights, every tensor)."""
    with safe_open(str(FIXTURE), "pt") as f:
        tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    weights = {k[len("weights."):]: v for k, v in tensors.items() if k.startswith("weights.")}
    return json.loads(meta["config"]), weights, tensors


@pytest.mark.parametrize("vape", ["none", "va-rope"])
def test_matches_step1x3d_reference(vape):
    small, weights, ref = read_fixture()
    model = MMDiT(dit_config("step1x-3d", **small, vape=vape)).eval()
    assert model.load_step1x3d_state_dict(weights) == []
    visible = torch.ones(ref["x"].shape[:2], dtype=torch.bool)  # all visible: VAPE is inert
    with torch.no_grad():
        out = model(ref["x"], ref["t"], ref["cond"], visible=visible)
    # Step1X-3D predicts noise - x; our velocity is x - noise
    torch.testing.assert_close(out, -ref["prediction"], atol=2e-5, rtol=1e-5)
    assert ref["prediction"].abs().mean() > 0.3


def test_map_uses_every_tensor_and_accepts_checkpoint_layouts():
    _, weights, _ = read_fixture()
    bare = {k[len("dit_model."):]: v for k, v in weights.items()}
    lightning = {"state_dict": {f"denoiser_model.{k}": v for k, v in weights.items()}}
    reference = step1x3d_to_mmdit(weights)
    for layout in (bare, lightning):
        mapped = step1x3d_to_mmdit(layout)
        assert mapped.keys() == reference.keys()
        assert all(torch.equal(mapped[k], reference[k]) for k in mapped)
    n_in = sum(v.numel() for v in weights.values())
    assert sum(v.numel() for v in reference.values()) == n_in  # nothing dropped, nothing made up
    with pytest.raises(ValueError, match="does not know"):
        step1x3d_to_mmdit({**weights, "dit_model.extra.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="missing 'proj_in.bias'"):
        step1x3d_to_mmdit({k: v for k, v in weights.items() if k != "dit_model.proj_in.bias"})
    with pytest.raises(ValueError, match="label"):
        step1x3d_to_mmdit({**weights, "proj_label_condtion.1.weight": torch.zeros(1)})


def test_needs_the_step1x_time_embedding():
    small, weights, _ = read_fixture()
    model = MMDiT(dit_config("tiny", **small))
    with pytest.raises(ValueError, match="time_embedding: step1x-3d"):
        model.load_step1x3d_state_dict(weights)


def test_released_preset_size_on_meta_device():
    config = dit_config("step1x-3d")
    with torch.device("meta"):
        model = MMDiT(config, init=False)
    h, f = config.hidden_size, 4 * config.hidden_size
    count = count_parameters(model)
    # independent count: Hunyuan3D-2's formula with the wider time MLP (h -> 4h -> h)
    lin = lambda i, o: i * o + o  # noqa: E731
    d = config.head_dim
    stream = lin(h, 6 * h) + lin(h, 3 * h) + 2 * d + lin(h, h) + lin(h, f) + lin(f, h)
    single = lin(h, 3 * h + f) + lin(h + f, h) + 2 * d + lin(h, 3 * h)
    embed = lin(64, h) + lin(h, 4 * h) + lin(4 * h, h) + lin(1024, h)
    expected = embed + 12 * 2 * stream + 24 * single + lin(h, 2 * h) + lin(h, 64)
    print(f"step1x-3d: {count:,} parameters")
    assert count == expected
    assert 1.2e9 < count < 1.4e9  # "1.3B" (Step1X-3D's config header)


def test_time_embedding_errors_name_the_key():
    from vilearn.config import ConfigError

    with pytest.raises(ConfigError, match="guidance_embed"):
        dit_config("step1x-3d", guidance_embed=True)
    with pytest.raises(ConfigError, match="time_embedding"):
        dit_config("tiny", time_embedding="flux")


def test_load_released_picks_the_layout_from_the_config():
    from vilearn.dit import PlainDiT, load_released, plain_dit_config

    small, weights, ref = read_fixture()
    step1x = MMDiT(dit_config("step1x-3d", **small)).eval()
    assert load_released(step1x, weights) == []
    with torch.no_grad():
        torch.testing.assert_close(step1x(ref["x"], ref["t"], ref["cond"]), -ref["prediction"],
                                   atol=2e-5, rtol=1e-5)
    hunyuan = MMDiT(dit_config("tiny"))
    assert load_released(hunyuan, {"model": MMDiT(dit_config("tiny")).state_dict()}) == []
    plain = PlainDiT(plain_dit_config("tiny", vape="va-lpe"))
    left = load_released(plain, PlainDiT(plain_dit_config("tiny")).state_dict())
    assert sorted(left) == ["vape.invisible_embed", "vape.visible_embed"]
    with pytest.raises(ValueError, match="unexpected"):
        load_released(hunyuan, weights)


def save_step1x3d_release(folder: Path) -> Path:
    """The fixture's weights in Step1X-3D-Geometry-1300m's diffusers pipeline layout:
    model_index.json and transformer/{config.json (FluxDenoiser's cfg),
    diffusion_pytorch_model.safetensors (keys dit_model.*)}."""
    from safetensors.torch import save_file

    small, weights, _ = read_fixture()
    (folder / "transformer").mkdir(parents=True)
    save_file(weights, str(folder / "transformer" / "diffusion_pytorch_model.safetensors"))
    cfg = {"input_channels": small["in_channels"], "width": small["hidden_size"],
           "layers": small["depth"], "num_single_layers": small["depth_single_blocks"],
           "num_heads": small["num_heads"], "condition_dim": small["context_in_dim"],
           "multi_condition_type": "in_context", "use_visual_condition": False,
           "use_caption_condition": False, "use_label_condition": False}
    (folder / "transformer" / "config.json").write_text(json.dumps(cfg))
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "Step1X3DGeometryPipeline",
        "transformer": ["step1x3d_geometry.models.transformers.flux_transformer_1d", "FluxDenoiser"],
        "vae": ["step1x3d_geometry.models.autoencoders.michelangelo_autoencoder",
                "MichelangeloAutoencoder"],
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"]}))
    return folder


def test_init_dit_refuses_a_step1x3d_release_saying_what_works(tmp_path):
    import shutil

    from safetensors.torch import load_file

    from vilearn.config import ConfigError
    from vilearn.dit import load_released
    from vilearn.dit.conditioner import ConditionerConfig
    from vilearn.train.config import InitConfig, TrainConfig
    from vilearn.train.trainer import build_model

    small, _, ref = read_fixture()

    def config(init: Path) -> TrainConfig:
        return TrainConfig(model={"preset": "step1x-3d", **small}, init=InitConfig(dit=str(init)),
                           conditioner=ConditionerConfig(width=small["context_in_dim"]))

    release = save_step1x3d_release(tmp_path / "Step1X-3D-Geometry-1300m")
    alone = tmp_path / "copied-transformer"  # transformer/ away from its model_index.json
    shutil.copytree(release / "transformer", alone)
    for folder, what in ((release, "Step1X3DGeometryPipeline"),
                         (release / "transformer", "Step1X3DGeometryPipeline"),
                         (alone, "its FluxDenoiser")):
        with pytest.raises(ConfigError, match=rf"init.dit: {folder} is a Step1X-3D release \({what}\); "
                                              r"fine-tuning from it is not supported: .* no latents .*"
                                              r"Supported: .* MMDiT with model preset step1x-3d "
                                              r"through vilearn.dit.load_released"):
            build_model(config(folder))
    # what the message says works: the folder's denoiser weights in that MMDiT
    model = MMDiT(dit_config("step1x-3d", **small)).eval()
    weights = load_file(str(release / "transformer" / "diffusion_pytorch_model.safetensors"))
    assert load_released(model, weights) == []
    with torch.no_grad():
        torch.testing.assert_close(model(ref["x"], ref["t"], ref["cond"]), -ref["prediction"],
                                   atol=2e-5, rtol=1e-5)
    # another diffusers pipeline is named as such
    other = tmp_path / "other"
    other.mkdir()
    (other / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    with pytest.raises(ConfigError, match=r"init.dit: .*other is a diffusers pipeline folder "
                                          r"\(FluxPipeline\), not a released Hunyuan3D-2 DiT folder"):
        build_model(config(other))
