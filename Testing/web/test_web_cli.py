"""`medsam-adapter serve` refuses unsafe or broken start-ups with exit code 2 and one clear line."""

from __future__ import annotations

import pytest

from MedSAMAdapterLib.cli import main


@pytest.mark.parametrize("argv,message", [
    (["serve", "--host", "0.0.0.0"], "--token"),
    (["serve", "--host", "192.168.0.7", "--port", "9000"], "--token"),
    (["serve", "--host", "0.0.0.0", "--token", "short"], "at least 8"),
    (["serve", "--host", ""], "empty"),
])
def test_exposed_bind_without_a_good_token_exits_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_bad_volume_data_dir_port_and_upload_limit_exit_2_before_listening(tmp_path, capsys):
    cases = [
        (["serve", str(tmp_path / "missing.nii.gz")], "no such file"),
        (["serve", "--data-dir", str(tmp_path / "nope")], "not a folder"),
        (["serve", "--port", "70000"], "--port"),
        (["serve", "--max-upload-mb", "0"], "--max-upload-mb"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err


def test_serve_is_listed_in_help(capsys):
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = capsys.readouterr().out
    assert "--token" in out and "--data-dir" in out and "127.0.0.1" in out
