"""The `czii` command: every subcommand is registered, importable and documents its options."""

import subprocess
import sys

import pytest

from czii.cli import SUBCOMMANDS, main


def test_top_level_help_lists_every_subcommand_without_importing_them(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert all(name in out for name in SUBCOMMANDS)
    probe = ("import sys; from czii.cli import main\ntry: main(['--help'])\nexcept SystemExit: pass\n"
             "print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.stdout.strip().endswith("False")


@pytest.mark.parametrize("name", list(SUBCOMMANDS))
def test_each_subcommand_has_help(name, capsys):
    with pytest.raises(SystemExit) as exc:
        main([name, "--help"])
    assert exc.value.code == 0
    assert f"czii {name}" in capsys.readouterr().out


def test_unknown_subcommand_is_refused(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bogus"])
    assert exc.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_no_subcommand_help_imports_torch_or_copick():
    probe = ("import sys\nfrom czii.cli import SUBCOMMANDS, main\nheavy = set()\n"
             "for name in SUBCOMMANDS:\n"
             "    try: main([name, '--help'])\n"
             "    except SystemExit: pass\n"
             "print(sorted(m for m in ('torch', 'copick', 'segmentation_models_pytorch_3d') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_simulate_help_names_every_preset_and_tomogram_type(capsys):
    from czii.simulate.imaging import TOMO_TYPES
    from czii.simulate import PRESETS

    with pytest.raises(SystemExit):
        main(["simulate", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert all(name in out for name in (*PRESETS, *TOMO_TYPES))
