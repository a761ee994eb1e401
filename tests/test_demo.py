"""`vilearn demo` end to end, at a small size (the full one is the README's first command)."""

import json

import pytest
from typer.testing import CliRunner

from vilearn.cli import app


def test_the_demo_takes_the_furniture_when_installed_and_random_urdfs_otherwise(monkeypatch):
    from vilearn import demo
    from vilearn.data import sweethome3d

    monkeypatch.setattr(sweethome3d, "DEFAULT_ROOTS", (sweethome3d.Path("/no/such/folder"),))
    assert demo.demo_source("auto") == demo.URDFS
    assert demo.demo_source("sweethome3d:/some/folder") == "sweethome3d:/some/folder"  # as given
    monkeypatch.setattr(sweethome3d, "find_catalogs", lambda spec: [sweethome3d.Path("x.sh3f")])
    assert demo.demo_source("auto") == demo.FURNITURE


@pytest.mark.slow
def test_demo_runs_end_to_end_and_writes_the_report(tmp_path):
    from vilearn.demo import demo_source

    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "--shapes", "12", "--steps", "3",
                                      "--samples", "1", "--eval-views", "2", "--workers", "1"])
    assert result.exit_code == 0, result.output
    report = tmp_path / "report"
    summary = (report / "index.md").read_text()
    for row in ("| va-rope |", "| none |", "| chance |", "| ceiling |", "| va-rope: share |"):
        assert row in summary
    assert "## Does the model read its image?" in summary and "What this shows" in summary
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["source"] == demo_source("auto") and metrics["views"] == 2
    for row in (*metrics["variants"].values(), metrics["chance"], metrics["ceiling"]):
        assert 0.0 <= row["iou"] <= 1.0 and 0.0 <= row["fscore@0.05"] <= 1.0
    assert set(metrics["condition_gap"]) == {"va-rope", "none"}
    assert (report / "curves.png").stat().st_size > 0
    assert (report / "samples.png").is_file()  # 12 shapes hold at least one held-out shape
    for variant in ("va-rope", "none"):
        run = tmp_path / "runs" / f"dit-{variant}"
        assert (run / "checkpoints" / "latest").is_file()
        config = (run / "config.yaml").read_text()
        assert "efficientnet-lite0" in config and "crop: false" in config and f"vape: {variant}" in config
    # view frame: every trained shape is one view of a prepared shape, in its camera's frame
    manifest = (tmp_path / "dataset" / "manifest.jsonl").read_text().splitlines()
    ids = [json.loads(line)["id"] for line in manifest]
    assert ids and all("~" in i for i in ids)
    assert f"report: {report.resolve() / 'index.md'}" in " ".join(result.output.split())
