"""The condition gap: held-out loss with the item's own condition, another object's and the null one."""

import json
import shutil

import pytest
import torch

from test_train import make_config
from vilearn.train.trainer import build_model, train
from vilearn.train.validation import (
    Validator,
    condition_gap_record,
    condition_gap_verdict,
    other_object_order,
)


def test_another_objects_condition_never_comes_from_the_same_object():
    items = [{"id": i} for i in ("a~0", "a~1", "b~0", "b~1", "c~2")]
    assert other_object_order(items) == [2, 2, 4, 4, 0]
    assert other_object_order([{"id": "a~0"}, {"id": "a~1"}]) is None
    assert other_object_order([{"id": "x"}, {"id": "y"}]) == [1, 0]  # object frame: ids are objects


def test_the_record_holds_each_loss_the_gap_and_its_fraction():
    record = condition_gap_record({"own": [1.0, 3.0], "other": [1.5, 3.5], "null": [2.0, 4.0]}, 2)
    assert record["loss"] == 2.0 and record["loss_other"] == 2.5 and record["loss_null"] == 3.0
    assert record["condition_gap"] == pytest.approx(0.5)
    assert record["condition_gap_fraction"] == pytest.approx(0.25)
    assert record["t"] == [0.25, 0.75] and record["loss_other_by_t"] == [1.5, 3.5]
    assert "barely" in condition_gap_verdict(0.004) and "reads its image" in condition_gap_verdict(0.25)


def _validator_and_model(encoded, tmp_path, zero_condition: bool):
    config = make_config(encoded, stages=[{"tokens": 32, "steps": 2, "batch_size": 2}],
                         val={"every": 2, "shapes": 4, "timesteps": 2})
    torch.manual_seed(0)
    model = build_model(config).eval()
    with torch.no_grad():  # random weights everywhere: the zero-initialised output hides nothing
        for param in model.dit.parameters():
            param.copy_(torch.randn_like(param) * 0.1)
        if zero_condition:  # the image tokens cannot reach the shape stream
            model.dit.cond_in.weight.zero_()
            model.dit.cond_in.bias.zero_()
    from vilearn.flow.normalize import LatentStats
    from vilearn.vae.encode import latents_dir
    from vilearn.vae.identity import load_identified

    key = load_identified(encoded / "vae")[1].key  # the latents folder: vae-<hash8>
    stats = LatentStats.load(latents_dir(config.dataset, key, 32) / "stats.json")
    validator = Validator(config, key, {32: stats}, tmp_path)
    items = validator.held_out(32, model.conditioner.image_size, model.conditioner.crop, split=None)
    return validator, model, items, stats


def test_a_model_that_cannot_see_its_condition_has_no_gap(encoded, tmp_path):
    validator, model, items, stats = _validator_and_model(encoded, tmp_path, zero_condition=True)
    record = validator.condition_gap(model, items, stats)
    assert record["condition_gap"] == pytest.approx(0.0, abs=1e-6)
    assert record["loss_null"] == pytest.approx(record["loss"], abs=1e-6)


def test_a_model_that_reads_its_condition_has_a_gap_and_each_condition_is_what_it_says(encoded, tmp_path):
    validator, model, items, stats = _validator_and_model(encoded, tmp_path, zero_condition=False)
    record = validator.condition_gap(model, items, stats)
    assert abs(record["condition_gap"]) > 1e-4 and record["loss_null"] != pytest.approx(record["loss"])
    # the "other" loss is the own loss of the same set with the images moved as documented
    order = other_object_order(items)
    moved = [{**item, "image": items[j]["image"]} for item, j in zip(items, order)]
    assert record["loss_other"] == pytest.approx(validator.flow_loss(model, moved, stats, False), rel=1e-6)


@pytest.mark.parametrize("held_out", [1, 2], ids=["one object", "two objects"])
def test_training_logs_the_condition_gap_per_timestep(encoded, tmp_path, held_out):
    data = tmp_path / "data"
    shutil.copytree(encoded / "data", data)
    rows = [json.loads(line) for line in (data / "manifest.jsonl").read_text().splitlines()]
    for row in rows:  # hold out the first ``held_out`` shapes
        row["split"] = "val" if rows.index(row) < held_out else "train"
    (data / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = make_config(encoded, dataset=str(data), stages=[{"tokens": 32, "steps": 2, "batch_size": 2}],
                         val={"every": 2, "shapes": 4, "timesteps": 2})
    train(config, tmp_path / "run")
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    val = [r for r in log if r.get("split") == "val"][-1]
    assert len(val["loss_by_t"]) == len(val["loss_null_by_t"]) == 2
    assert val["loss"] == pytest.approx(sum(val["loss_by_t"]) / 2)
    assert isinstance(val["loss_null"], float)
    if held_out == 1:  # no other object's image to swap in, and the record says so
        assert "single object" in val["note"] and "condition_gap" not in val
        return
    assert val["condition_gap"] == pytest.approx(val["loss_other"] - val["loss"])
    assert val["condition_gap_fraction"] == pytest.approx(val["condition_gap"] / val["loss"])
    assert len(val["loss_other_by_t"]) == 2
