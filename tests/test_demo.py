"""`vilearn demo` end to end, at a small size (the full one is the README's first command)."""

import pytest
from typer.testing import CliRunner

from vilearn.cli import app


@pytest.mark.slow
def test_demo_runs_end_to_end_and_writes_the_report(tmp_path):
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "--shapes", "40", "--steps", "3",
                                      "--samples", "1", "--workers", "1"])
    assert result.exit_code == 0, result.output
    report = tmp_path / "report"
    summary = (report / "index.md").read_text()
    assert "| va-rope |" in summary and "| none |" in summary
    assert (report / "curves.png").stat().st_size > 0
    assert (report / "samples.png").is_file()  # 40 shapes hold at least one held-out shape
    for variant in ("va-rope", "none"):
        assert (tmp_path / "runs" / f"dit-{variant}" / "checkpoints" / "latest").is_file()
    assert f"report: {report.resolve() / 'index.md'}" in " ".join(result.output.split())
