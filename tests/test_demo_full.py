"""`lyagym demo` with the world-model stages at --size tiny: every stage runs and
its outputs are valid (GIF, plots, a loadable stable model whose certificate applies to it,
a summary with the rollout-error table)."""

from __future__ import annotations

from PIL import Image

from lyagym.agents import cli
from lyagym.agents.demo import MODEL_OUTPUTS, OUTPUTS


def test_demo_tiny_runs_every_stage(tmp_path, capsys):
    from lyagym.learned_models import Certificate, load_model

    out = tmp_path / "demo"
    assert cli.main(["demo", "--size", "tiny", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    for name in OUTPUTS + MODEL_OUTPUTS:
        assert (out / name).exists(), name
        assert str(out / name) in printed
    assert "[8/8]" in printed and "| simple |" in printed and "| stable |" in printed
    with Image.open(out / "mpc_stable_model.gif") as im:
        assert im.format == "GIF" and im.n_frames >= 2
    with Image.open(out / "rollout_error.png") as im:
        assert im.format == "PNG"
    model = load_model(out / "stable_model.pt")
    cert = Certificate.load(out / "stable_certificate.json")
    assert cert.applies_to(model)  # the certificate is about exactly the saved weights
    assert cert.claim == "input_to_state_stability"
    summary = (out / "summary.md").read_text()
    assert "## Rollout error" in summary and "falsification: passed" in summary
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temp files left


def test_demo_basic_stages_only(tmp_path):
    out = tmp_path / "basic"
    assert cli.main(["demo", "--size", "tiny", "--out", str(out), "--stages", "basic", "--no-progress"]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUTS)
