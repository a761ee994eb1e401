"""Fine-tuning Hunyuan3D-2.0 and 2.1 from their released layouts, in full and with LoRA (peft):
tiny weights saved as released (tests/released.py), loaded, trained a few steps, resumed exactly,
sampled, evaluated and exported back; checked against the reference classes' outputs (hy3dgen's
Hunyuan3DDiT run here, HunYuanDiTPlain's saved in tests/fixtures) and peft's own loader."""

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import released
from vilearn.cli import app
from vilearn.config import ConfigError, load_config
from vilearn.engine.checkpoint import latest_checkpoint, load_checkpoint
from vilearn.train.config import TrainConfig
from vilearn.train.trainer import build_model, train

TOKENS = 16


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny_prepare_config):
    """Six shapes, their sharp-edge samples included."""
    import dataclasses

    from vilearn.data.prepare import prepare_dataset

    root = tmp_path_factory.mktemp("finetune-data")
    config = dataclasses.replace(tiny_prepare_config, val_fraction=0.34)
    assert prepare_dataset("pybullet:random_urdfs", root, config, limit=6).ok == 6
    return root


def encoded_with(data: Path, vae_folder: Path) -> None:
    """Latents and groups of ``data`` by a released VAE, as its input expects."""
    from vilearn.grouping.run import group_dataset
    from vilearn.vae.encode import encode_dataset
    from vilearn.vae.identity import load_identified

    vae, identity = load_identified(vae_folder)
    encode_dataset(data, vae, identity, [TOKENS])
    group_dataset(data, vae, identity, [TOKENS])


@pytest.fixture(scope="module")
def hub(tmp_path_factory, data):
    """Hunyuan3D-2.0's released folders, and the data encoded with its VAE."""
    paths = released.save_hunyuan3d_20(tmp_path_factory.mktemp("hub20"))
    encoded_with(data, paths["vae"])
    return {**paths, "data": data}


@pytest.fixture(scope="module")
def hub21(tmp_path_factory, data):
    """Hunyuan3D-2.1's released folders, and the data encoded with its VAE."""
    paths = released.save_hunyuan3d_21(tmp_path_factory.mktemp("hub21"))
    encoded_with(data, paths["vae"])
    return {**paths, "data": data}


def packaged_config(name: str, hub, model: dict, steps: int, *overrides: str) -> TrainConfig:
    """A packaged fine-tuning config pointed at ``hub``'s folders, tiny and a few steps long."""
    return load_config(TrainConfig, name, [
        f"dataset={hub['data']}", f"vae={hub['vae']}", f"init.dit={hub['dit']}",
        f"conditioner.model={hub['dinov2']}", f"conditioner.image_size={released.IMAGE}",
        f"model={json.dumps(model)}", f"stages=[{{tokens: {TOKENS}, steps: {steps}, batch_size: 2}}]",
        "train.precision=auto", "train.workers=0", "train.log_every=1", f"train.ckpt_every={steps // 2}",
        "train.gradient_checkpointing=false", "val.every=0", "val.sample_every=0", "optim.lr=1.0e-3",
        "optim.warmup_steps=1", *overrides])


def finetune_config(hub, tmp_path: Path, *overrides: str) -> TrainConfig:
    model = {**released.MODEL, "vape": "none"}
    return packaged_config("finetune-hunyuan3d-2.0", hub, model, 4, *overrides)


def inputs(seed=0, batch=2):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, TOKENS, 8, generator=g), torch.rand(batch, generator=g),
            torch.randn(batch, 5, 32, generator=g))


def reference_from(weights: Path):
    """hy3dgen's Hunyuan3DDiT with a released checkpoint's model part, as hy3dgen loads it."""
    return released.reference_dit(released.released_parts(weights)["model"])


def losses(run: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if "grad_norm" in r]


@pytest.mark.hy3dgen
def test_the_released_folder_loads_exactly(hub, tmp_path):
    config = finetune_config(hub, tmp_path)
    assert config.stages[0].tokens == TOKENS and config.latent_norm == "vae"
    model = build_model(config).eval()
    assert model.init_report["new"] == [] and model.init_report["conditioner"]
    assert model.init_report["conditioner_differs"]  # the checkpoint's DINOv2 is another one
    reference = reference_from(hub["dit"] / "model.fp16.safetensors")
    x, t, cond = inputs()
    with torch.no_grad():
        expected = reference(x, t, {"main": cond})
        assert (model.dit(x, t, cond) - expected).abs().max() < 1e-5 * expected.abs().max()
    # the image encoder is the checkpoint's DINOv2, not conditioner.model's
    parts = released.released_parts(hub["dit"] / "model.fp16.safetensors")["conditioner"]
    key = "embeddings.patch_embeddings.projection.weight"
    assert torch.equal(model.conditioner.encoder.model.state_dict()[key],
                       parts[f"main_image_encoder.model.{key}"].float())


@pytest.mark.hy3dgen
def test_lora_trains_only_adapters_and_vape(hub, tmp_path):
    config = finetune_config(hub, tmp_path, "train.lora={rank: 4, alpha: 8, targets: [attention, mlp]}",
                             f"model={json.dumps({**released.MODEL, 'vape': 'va-lpe'})}")
    model = build_model(config)
    trained = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert sorted(model.init_report["new"]) == ["vape.invisible_embed", "vape.visible_embed"]
    assert [n for n in trained if ".lora_" not in n] == ["dit.vape.invisible_embed", "dit.vape.visible_embed"]
    # double-stream qkv + proj (2 streams) and mlp (2 layers, 2 streams), single linear1/2: 2 blocks each
    adapted = {n.split(".lora_")[0] for n in trained if ".lora_" in n}
    assert len(adapted) == 2 * (4 + 4) + 2 * 2
    assert "dit.double_blocks.0.img_mod.lin" not in adapted  # modulation was not a target
    # what a checkpoint keeps: the adapters, VAPE's embeddings and the (zero) null condition
    assert set(model.trainable_state()) == {
        k for k in model.state_dict() if ".lora_" in k or k.startswith(("dit.vape.", "conditioner.null"))}


@pytest.mark.hy3dgen
def test_lora_run_resumes_exactly_generates_and_exports(hub, tmp_path):
    overrides = ["train.lora={rank: 4, alpha: 8}"]
    whole, split = tmp_path / "whole", tmp_path / "split"
    train(finetune_config(hub, tmp_path, *overrides), whole)
    train(finetune_config(hub, tmp_path, *overrides), split, max_steps=3)
    train(finetune_config(hub, tmp_path, *overrides), split, resume="latest")
    assert losses(split) == losses(whole) and [s for s, _ in losses(whole)] == [1, 2, 3, 4]

    groups, _ = load_checkpoint(latest_checkpoint(whole / "checkpoints"))
    assert groups["ema"] and all(".lora_" in k or k.startswith("conditioner.null") for k in groups["ema"])
    assert json.loads((whole / "init.json").read_text())["dit"] == str(hub["dit"])

    # peft's own loader puts the run's adapters on hy3dgen's own class: the same velocity
    from peft import PeftModel

    from vilearn.train.loading import load_trained

    ours = load_trained(whole).model.dit
    reference = PeftModel.from_pretrained(reference_from(hub["dit"] / "model.fp16.safetensors"),
                                          str(whole / "adapter")).eval()
    x, t, cond = inputs(1)
    with torch.no_grad():
        expected = reference(x, t, {"main": cond})
        before = reference_from(hub["dit"] / "model.fp16.safetensors")(x, t, {"main": cond})
        assert (ours(x, t, cond) - expected).abs().max() < 1e-5 * expected.abs().max()
    assert (expected - before).abs().max() > 1e-4  # the adapters changed the prediction

    image = sorted((hub["data"] / "shapes").glob("*/views/000.png"))[0]
    result = CliRunner().invoke(app, ["generate", str(image), "--model", str(whole), "--out",
                                      str(tmp_path / "meshes"), "--steps", "2", "--resolution", "24"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, ["evaluate", str(whole), "--n", "1", "--steps", "2",
                                      "--resolution", "24", "--no-references", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert (whole / "eval" / "step-0000004" / "eval.json").is_file()

    # merged and exported in the released layout: hy3dgen's class loads it and agrees
    out = tmp_path / "export"
    result = CliRunner().invoke(app, ["export", str(whole), "--out", str(out), "--fp32"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "model.safetensors", "vilearn.json"]
    parts = released.released_parts(out / "model.safetensors")
    assert set(parts) == {"model", "vae", "conditioner"}
    with torch.no_grad():
        merged = released.reference_dit(parts["model"])(x, t, {"main": cond})
    assert (merged - expected).abs().max() < 1e-5 * expected.abs().max()
    # and fine-tuning can start from the export
    again = build_model(finetune_config(hub, tmp_path, f"init.dit={out}")).eval()
    with torch.no_grad():
        assert (again.dit(x, t, cond) - expected).abs().max() < 1e-5 * expected.abs().max()
    result = CliRunner().invoke(app, ["export", str(whole), "--out", str(out)])
    assert result.exit_code == 2 and "not empty" in result.output


@pytest.mark.hy3dgen
def test_full_finetune_moves_the_released_weights(hub, tmp_path):
    run = tmp_path / "full"
    train(finetune_config(hub, tmp_path, f"model={json.dumps({**released.MODEL, 'vape': 'va-rope'})}"), run)
    groups, _ = load_checkpoint(latest_checkpoint(run / "checkpoints"))
    start = released.released_parts(hub["dit"] / "model.fp16.safetensors")["model"]
    key = "double_blocks.0.img_attn.qkv.weight"
    assert not torch.equal(groups["model"][f"dit.{key}"], start[key].float())
    assert not any(k.startswith("conditioner.encoder.") for k in groups["model"])  # DINOv2 frozen
    out = tmp_path / "export"
    assert CliRunner().invoke(app, ["export", str(run), "--out", str(out)]).exit_code == 0
    assert (out / "model.fp16.safetensors").is_file()
    assert json.loads((out / "vilearn.json").read_text())["vape"] == "va-rope"


@pytest.mark.hy3dgen
def test_bad_fine_tuning_settings_name_the_key(hub, tmp_path):
    with pytest.raises(ConfigError, match="train.lora: LoRA adapts pretrained weights; set init.dit"):
        finetune_config(hub, tmp_path, "init.dit=''", "train.lora={rank: 4}")
    with pytest.raises(ConfigError, match="train.lora.rank: 0 is out of range, must be >= 1"):
        finetune_config(hub, tmp_path, "train.lora={rank: 0}")
    with pytest.raises(ConfigError, match=r"train.lora.targets\[1\]: 'atention' matches no linear layer"):
        build_model(finetune_config(hub, tmp_path, "train.lora={targets: [mlp, atention]}"))
    wide = json.dumps({**released.MODEL, "hidden_size": 128, "time_embedding": "step1x-3d"})
    with pytest.raises(ConfigError, match="does not fit the model section: hidden_size: 64 there, "
                                          "128 here; model.time_embedding: 'step1x-3d' here"):
        build_model(finetune_config(hub, tmp_path, f"model={wide}"))
    plain = json.dumps({"arch": "plain", "preset": "tiny", "context_dim": 32})
    with pytest.raises(ConfigError, match="holds a hy3dgen.shapegen.models.Hunyuan3DDiT, which does "
                                          "not load into a PlainDiT"):
        build_model(finetune_config(hub, tmp_path, f"model={plain}"))
    with pytest.raises(ConfigError, match="init.dit: .*nowhere: no config.yaml"):
        build_model(finetune_config(hub, tmp_path, f"init.dit={tmp_path / 'nowhere'}"))
    with pytest.raises(ConfigError, match="conditioner.cached: .* carries other DINOv2 weights"):
        train(finetune_config(hub, tmp_path, "conditioner.cached=true"), tmp_path / "cached")


@pytest.mark.hy3dgen
def test_hunyuan3d_20_refuses_the_21_vae(hub, hub21, tmp_path):
    from vilearn.train.trainer import check_inputs

    # 2.0's checkpoint holds the decoder only (safetensors, vae.*): 2.1's VAE has other shapes
    # and another scale_factor
    weights = hub["dit"] / "model.fp16.safetensors"
    with pytest.raises(ConfigError, match=rf"vae: {hub21['vae']} is not the VAE the denoiser of "
                                          rf"init.dit {hub['dit']} was trained with: \d+ of the \d+ "
                                          rf"tensors of the VAE part of {weights} differ from .*; its "
                                          rf"scale_factor is {released.VAE21['scale_factor']}"):
        check_inputs(finetune_config(hub, tmp_path, f"vae={hub21['vae']}"))


def finetune21_config(hub21, *overrides: str) -> TrainConfig:
    model = {"arch": "plain", "preset": "hunyuan3d-2.1", **released.plain_reference()[0], "vape": "none"}
    return packaged_config("finetune-hunyuan3d-2.1", hub21, model, 2, *overrides)


def test_hunyuan3d_21_loads_as_released(hub21):
    config = finetune21_config(hub21)
    assert config.conditioner.model and config.dit.num_moe_layers == 2 and config.latent_norm == "vae"
    model = build_model(config).eval()
    # every tensor is the reference's (tests/test_plain_dit.py: its maths), rounded to float16 as
    # released; outputs are not compared here: the rounding flips a few MoE routing choices
    _, weights, _ = released.plain_reference()
    state = model.dit.state_dict()
    assert set(state) == set(weights)
    assert all(torch.equal(state[k], v.half().float()) for k, v in weights.items())
    assert model.init_report["conditioner"] and model.init_report["conditioner_differs"]
    # the release's VAE (2.1: 20 points per token, no sharp ones, the sharp flag) made the latents
    (folder,) = (hub21["data"] / "latents").glob("hunyuan3d-vae-v2-1-*")  # <name>-<hash8>
    meta = json.loads((folder / "vae.json").read_text())
    assert meta["input"] == {"all_points": 0, "description": meta["input"]["description"],
                             "point_feats": 4, "points_per_token": 20, "sharp_fraction": 0.0}


def test_hunyuan3d_21_lora_with_moe_experts_then_generate_and_export(hub21, tmp_path):
    from peft import PeftModel

    from vilearn.dit import PlainDiT, load_released
    from vilearn.train.loading import load_trained

    run = tmp_path / "lora21"
    train(finetune21_config(hub21, "train.lora={rank: 2, alpha: 2, targets: [attention, mlp]}"), run)
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert all("aux_loss" in r for r in rows if "grad_norm" in r)  # the MoE's balancing loss
    groups, _ = load_checkpoint(latest_checkpoint(run / "checkpoints"))
    assert any(".moe.experts.0.net.2.lora_A" in k for k in groups["ema"])
    assert not any(".lora_" not in k and k.startswith("dit.") for k in groups["ema"])

    # peft's own loader puts the adapters on a PlainDiT holding the released weights
    ours = load_trained(run).model.dit
    base = PlainDiT(ours.config)
    load_released(base, torch.load(hub21["dit"] / "model.fp16.ckpt", weights_only=True))
    peft_model = PeftModel.from_pretrained(base, str(run / "adapter")).eval()
    _, _, ref = released.plain_reference()
    with torch.no_grad():
        expected = peft_model(ref["x"], ref["t"], ref["cond"])
        assert (ours(ref["x"], ref["t"], ref["cond"]) - expected).abs().max() < 1e-5

    image = sorted((hub21["data"] / "shapes").glob("*/views/000.png"))[0]
    result = CliRunner().invoke(app, ["generate", str(image), "--model", str(run), "--out",
                                      str(tmp_path / "meshes"), "--steps", "2", "--resolution", "24"])
    assert result.exit_code == 0, result.output

    out = tmp_path / "export21"
    assert CliRunner().invoke(app, ["export", str(run), "--out", str(out), "--fp32"]).exit_code == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "model.ckpt", "vilearn.json"]
    merged = torch.load(out / "model.ckpt", weights_only=True)
    assert set(merged) == {"model", "vae", "conditioner"}
    assert set(merged["model"]) == set(released.plain_reference()[1])  # the released names
    exported = PlainDiT(ours.config).eval()
    exported.load_hunyuan3d_state_dict(merged)
    with torch.no_grad():
        assert (exported(ref["x"], ref["t"], ref["cond"]) - expected).abs().max() < 1e-5


def test_hunyuan3d_21_lora_with_dropout_resumes_exactly_and_evaluates(hub21, tmp_path):
    from safetensors.torch import load_file

    model = {"arch": "plain", "preset": "hunyuan3d-2.1", **released.plain_reference()[0], "vape": "va-lpe"}
    lora = "train.lora={rank: 2, alpha: 2, dropout: 0.5, targets: [attention, mlp]}"
    config = lambda: packaged_config("finetune-hunyuan3d-2.1", hub21, model, 4, lora)  # noqa: E731
    dropout = [m for n, m in build_model(config()).named_modules() if n.endswith("lora_dropout.default")]
    assert dropout and {m.p for m in dropout} == {0.5}  # peft's dropout before every adapter
    # its masks are global RNG draws: a resumed run has to continue that RNG exactly
    whole, split = tmp_path / "whole", tmp_path / "split"
    train(config(), whole)
    train(config(), split, max_steps=3)
    train(config(), split, resume="latest")
    assert losses(split) == losses(whole) and [s for s, _ in losses(whole)] == [1, 2, 3, 4]

    (a, _), (b, _) = (load_checkpoint(latest_checkpoint(run / "checkpoints")) for run in (whole, split))
    assert any(".moe.experts.0.net.2.lora_A" in k for k in a["ema"]) and "dit.vape.visible_embed" in a["ema"]
    for group in ("ema", "model"):
        assert a[group].keys() == b[group].keys()
        assert all(torch.equal(a[group][k], b[group][k]) for k in a[group]), group
    files = sorted(p.name for p in (whole / "adapter").iterdir())
    assert files == ["adapter_config.json", "adapter_model.safetensors", "extra.safetensors"]
    assert (whole / "adapter" / files[0]).read_text() == (split / "adapter" / files[0]).read_text()
    for name in files[1:]:
        x, y = load_file(str(whole / "adapter" / name)), load_file(str(split / "adapter" / name))
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), name

    result = CliRunner().invoke(app, ["evaluate", str(whole), "--n", "1", "--steps", "2",
                                      "--resolution", "24", "--no-references", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    report = json.loads((whole / "eval" / "step-0000004" / "eval.json").read_text())
    assert len(report["model"]["rows"]) + len(report["model"]["skipped"]) == 1  # --n 1
    assert "loss" in report["condition_gap"]  # held-out flow loss through the LoRA model


def test_a_vae_other_than_the_releases_is_refused_naming_both(hub21, tmp_path):
    import shutil

    import yaml

    from vilearn.train.pretrained import Released, vae_differences
    from vilearn.train.trainer import check_inputs
    from vilearn.vae.identity import load_identified

    assert check_inputs(finetune21_config(hub21))  # the release's own VAE (the fixture) passes
    # one decoder tensor changed: the checkpoint's VAE part says it is not the release's
    other = tmp_path / "hunyuan3d-vae-v2-1"
    shutil.copytree(hub21["vae"], other)
    state = torch.load(other / "model.fp16.ckpt", weights_only=True)
    key = "geo_decoder.output_proj.weight"
    state[key] = state[key] + 0.01
    torch.save(state, other / "model.fp16.ckpt")
    with pytest.raises(ConfigError, match=rf"vae: {other} is not the VAE the denoiser of init.dit "
                                          rf"{hub21['dit']} was trained with: 1 of the \d+ tensors "
                                          rf"of the VAE part of {hub21['dit'] / 'model.fp16.ckpt'} "
                                          rf"differ from {other}'s \(e.g. {key}\)"):
        check_inputs(finetune21_config(hub21, f"vae={other}"))
    # the same weights with another scale_factor: what latent_norm: vae would scale by
    shutil.copy(hub21["vae"] / "model.fp16.ckpt", other / "model.fp16.ckpt")
    config = yaml.safe_load((other / "config.yaml").read_text())
    config["params"]["scale_factor"] = 0.5
    (other / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match=rf"its scale_factor is 0.5, the release's "
                                          rf"{released.VAE21['scale_factor']} \({hub21['dit']}/config.yaml"):
        check_inputs(finetune21_config(hub21, f"vae={other}"))
    vae = load_identified(other)[0]  # latent_norm: dataset does not use the scale_factor
    assert vae_differences(Released.read(hub21["dit"]), vae, str(other), "dataset") == []
    # init.check_vae: false warns, and the run goes on (to the next check: no latents of that VAE)
    with pytest.warns(UserWarning, match="scale_factor is 0.5"), pytest.raises(ConfigError, match="dataset:"):
        check_inputs(finetune21_config(hub21, f"vae={other}", "init.check_vae=false"))


def test_hunyuan3d_21_full_finetune(hub21, tmp_path):
    run = tmp_path / "full21"
    model = json.dumps({"arch": "plain", "preset": "hunyuan3d-2.1", **released.plain_reference()[0],
                        "vape": "va-lpe"})
    train(finetune21_config(hub21, f"model={model}"), run)
    report = json.loads((run / "init.json").read_text())
    assert sorted(report["new"]) == ["vape.invisible_embed", "vape.visible_embed"]
    groups, _ = load_checkpoint(latest_checkpoint(run / "checkpoints"))
    _, weights, _ = released.plain_reference()
    assert not torch.equal(groups["model"]["dit.blocks.4.moe.experts.0.net.2.weight"],
                           weights["blocks.4.moe.experts.0.net.2.weight"].half().float())


def test_every_linear_layer_is_in_one_layer_group():
    from torch import nn

    from vilearn.dit import MMDiT, PlainDiT, dit_config, plain_dit_config
    from vilearn.train.lora import target_modules

    for model in (MMDiT(dit_config("tiny", guidance_embed=True)), PlainDiT(plain_dit_config("tiny"))):
        linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        groups = [target_modules(model, [group]) for group in type(model).LAYER_GROUPS]
        assert sorted(sum(groups, [])) == sorted(linear), type(model).__name__


@pytest.mark.parametrize("name,tokens,context,dino", [
    ("finetune-hunyuan3d-2.0", 3072, 1536, "facebook/dinov2-giant"),
    ("finetune-hunyuan3d-2.1", 4096, 1024, "facebook/dinov2-large")])
def test_packaged_finetune_configs_are_the_releases(name, tokens, context, dino):
    config = load_config(TrainConfig, name)
    assert [s.tokens for s in config.stages] == [tokens] and config.dit.context_in_dim == context
    assert config.conditioner.model == dino and config.conditioner.kind == "dinov2"
    assert (config.conditioner.image_size // 14) ** 2 + 1 == 1370  # patch 14 at 518 px, with CLS
    assert config.latent_norm == "vae" and config.timesteps.density == "uniform"
    assert config.optim.lr == 1e-5 and config.optim.betas == [0.9, 0.99] and config.train.lora is None
    assert config.dit.vape == "va-rope" and config.dit.in_channels == 64
