"""Bad input gets one clear line naming the field, value and fix, and a non-zero exit."""

from __future__ import annotations

import os
import subprocess

import pytest

from dlmbench.cli import main


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(args)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return exit_.value.code, err.strip().splitlines()


@pytest.mark.parametrize("args, first_line", [
    (["--device", "tpu"], "device = 'tpu': use auto, cpu, cuda, cuda:N or mps, e.g. --device cpu"),
    (["--set", "budget.seq_len=[1"], "error: --set 'budget.seq_len=[1': the value is not valid YAML"),
    (["--seeds", "0,0"], "budget.seeds = [0, 0]: seed(s) [0] appear more than once"),
    (["--set", "budget.num_samples=true"], "budget.num_samples = True: expected an integer, got the boolean True"),
    (["--train-tokens", "0"], "budget.train_tokens = 0: Input should be greater than 0"),
    (["--steps", ","], "budget.steps = []: List should have at least 1 item"),
    (["--threads", "0"], "threads = 0: Input should be greater than or equal to 1"),
    (["--name", "../x"], "name = '../x': the run name becomes a directory name"),
    (["--metrics", "bleu:lowercase"], "metric option 'lowercase' of 'bleu:lowercase': write NAME:KEY=VALUE"),
])
def test_a_bad_option_is_one_line_naming_field_value_and_fix(args, first_line, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, lines = run_cli(["validate-config", "--models", "ar", *args], capsys)
    assert code == 2
    assert any(first_line in line for line in lines), lines


def test_a_sampler_typo_in_the_last_model_stops_the_run_before_any_training(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, lines = run_cli(["run", "--set", "models=[ar, {name: mdlm, sampler: ddpm-cache}]", "--no-progress"], capsys)
    assert code == 2 and "unknown sampler 'ddpm-cache' for model 'mdlm'. Did you mean 'ddpm_cache'?" in lines[-1]
    assert not (tmp_path / ".dlmbench-cache" / "checkpoints").exists()  # nothing was trained


def test_a_model_tokenizer_on_the_grammar_is_refused_before_any_training(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, lines = run_cli(["run", "--set", "models=[ar, {name: mdlm, tokenizer: gpt2}]", "--no-progress"], capsys)
    assert code == 2 and len(lines) == 1
    assert lines[0].startswith("error: model 'mdlm' reads text through tokenizer 'gpt2', but task 'grammar' has "
                               "its own fixed vocabulary; remove the entry's tokenizer"), lines
    assert not (tmp_path / ".dlmbench-cache" / "checkpoints").exists()


def test_an_output_directory_below_a_regular_file_exits_5_with_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "file").write_text("x")
    code, lines = run_cli(["run", "--models", "ar", "--out", str(tmp_path / "file" / "run"), "--no-progress"], capsys)
    assert code == 5 and lines[-1].startswith(f"error: cannot write or read {tmp_path / 'file'}")
    assert "Not a directory" in lines[-1]


def test_a_read_only_output_directory_exits_5_with_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    locked = tmp_path / "locked"
    locked.mkdir()
    immutable = subprocess.run(["chattr", "+i", str(locked)], capture_output=True).returncode == 0  # binds root too
    if not immutable:
        locked.chmod(0o555)
    try:
        code, lines = run_cli(["run", "--models", "ar", "--out", str(locked / "run"), "--no-progress"], capsys)
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(locked)], check=True)
        locked.chmod(0o755)
    assert code == 5 and lines[-1].startswith(f"error: cannot write or read {locked / 'run'}")


def test_a_sequence_length_the_grammar_cannot_serve_is_refused_at_once(capsys, tmp_path, monkeypatch):
    """Once, --seq-len 100000 hung silently building the grammar's exact length tables."""
    import time

    monkeypatch.chdir(tmp_path)
    start = time.perf_counter()
    code, lines = run_cli(["run", "--models", "ar", "--seq-len", "100000", "--no-progress"], capsys)
    assert code == 2 and "budget.seq_len = 100000: the grammar tasks serve at most 2048 tokens" in lines[-1]
    assert time.perf_counter() - start < 30


def _full_disk(path):
    """A real full file system at ``path`` (a 64 KiB tmpfs filled up), or None without root."""
    path.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(path)],
                      capture_output=True).returncode != 0:
        return None
    with open(path / "fill", "wb", buffering=0) as fill:
        try:
            while True:
                fill.write(b"\0" * 4096)
        except OSError:
            pass
    return path


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a full tmpfs needs root (CI runs as root)")
def test_an_output_directory_on_a_full_disk_exits_5_with_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    full = _full_disk(tmp_path / "full")
    if full is None:
        pytest.skip("this machine refused to mount a tmpfs")
    try:
        code, lines = run_cli(["run", "--models", "ar", "--out", str(full / "run"), "--no-progress"], capsys)
    finally:
        subprocess.run(["umount", str(full)], check=True)
    assert code == 5 and lines[-1].startswith(f"error: cannot write or read {full / 'run'}")
    assert "No space left on device" in lines[-1] and len([x for x in lines if x.startswith("error")]) == 1
