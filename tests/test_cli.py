"""The command-line entry point: help, one-line errors, data check."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from pumamed.cli import main

ROOT = Path(__file__).resolve().parent.parent


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for command in ("data", "train", "evaluate", "audit", "epi", "bench"):
        assert command in out


def test_data_check_json_reports_real_datasets(data_root, capsys):
    code = main(["data", "check", "--data-dir", str(data_root), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0, [d for d in report["datasets"] if d["status"] == "broken"]
    names = {d["name"]: d for d in report["datasets"]}
    for name in ("nih_cxr14_1000", "pneumoniamnist", "brain_tumor_mri", "busi", "breastmnist", "mini_mias"):
        assert names[name]["status"] == "ok", names[name]
    assert report["n_broken"] == 0


def test_data_check_on_empty_folder_reports_missing_not_error(tmp_path, capsys):
    code = main(["data", "check", "--data-dir", str(tmp_path), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    assert report["datasets"] and all(d["status"] == "missing" for d in report["datasets"])


def test_broken_dataset_makes_check_fail(tmp_path, capsys):
    imaging = tmp_path / "imaging"
    imaging.mkdir()
    (imaging / "pneumoniamnist.npz").write_bytes(b"this is not a zip archive")
    code = main(["data", "check", "--data-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert code != 0
    assert "pneumoniamnist" in out and "broken" in out


def test_cli_module_runs_as_script():
    proc = subprocess.run([sys.executable, "-m", "pumamed", "data", "check", "--data-dir", "/nonexistent/x"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "missing" in proc.stdout


def test_library_errors_name_parameters_and_the_cli_names_flags(tmp_path, capsys):
    """A library error names the parameter (`out`, for a page or a caller); the CLI shows the flag."""
    from pumamed.cli import build_parser, cli_message, parameter_flags
    from pumamed.epi.panel import write_panel
    from pumamed.errors import DataError

    with pytest.raises(DataError, match="`out` must end in .csv or .parquet"):
        write_panel(pd.DataFrame({"a": [1]}), tmp_path / "p.xlsx")
    flags = parameter_flags(build_parser())
    assert cli_message("`out` must end in .csv", flags) == "--out must end in .csv"
    assert cli_message("`source` is not a folder; `detail_channels` 4", flags) == \
        "--from is not a folder; --detail-channels 4"
    assert cli_message("`not_a_parameter` stays", flags) == "`not_a_parameter` stays"
