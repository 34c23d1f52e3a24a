"""The resume store of `czii infer`: exact round trip, another key starts over, changed inputs are predicted
again, a damaged file is named."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from czii.errors import DataError
from czii.inference.resume import RunStore, input_identity, work_dir

KEY = {"spec": {"tta": ["identity"]}, "thresholds": {"ribosome": 0.3}, "voxel_size_A": None}


def _picks(run: str) -> pd.DataFrame:
    return pd.DataFrame({"experiment": [run, run], "particle_type": ["ribosome", "apo-ferritin"],
                         "x": [1.0 / 3, 2e5 + 1e-9], "y": [0.1, 0.2], "z": [7.0, 8.0], "score": [0.123456789012, 1.0]})


def test_stored_picks_come_back_bit_for_bit_and_marked_resumed(tmp_path):
    assert work_dir(tmp_path / "a.csv") == tmp_path / "a.csv.work"
    store = RunStore(tmp_path / "w", KEY)
    assert store.done() == [] and not (tmp_path / "w").exists()
    identity = [["t.mrc", 10, 5]]
    store.save("TS_a", _picks("TS_a"), {"n_picks": 2}, identity)
    assert (tmp_path / "w" / "key.json").is_file()
    again = RunStore(tmp_path / "w", KEY)
    assert again.done() == ["TS_a"] and again.load("TS_b", identity) is None
    picks, info = again.load("TS_a", identity)
    pd.testing.assert_frame_equal(picks, _picks("TS_a"), check_exact=True)
    assert info == {"n_picks": 2, "resumed": True}


def test_another_key_discards_the_stored_runs(tmp_path, capsys):
    RunStore(tmp_path / "w", KEY).save("TS_a", _picks("TS_a"), {}, [])
    for changed in ({**KEY, "thresholds": {"ribosome": 0.31}}, {**KEY, "voxel_size_A": 12.0}):
        RunStore(tmp_path / "w", KEY).save("TS_a", _picks("TS_a"), {}, [])
        store = RunStore(tmp_path / "w", changed)
        assert "holds picks of another inference" in capsys.readouterr().err
        assert store.done() == []


def test_a_run_whose_input_files_changed_is_predicted_again(tmp_path, capsys):
    tomogram = tmp_path / "TS_a.zarr"
    (tomogram / "0").mkdir(parents=True)
    (tomogram / "0" / "0.0.0").write_bytes(b"1234")
    (tomogram / ".zattrs").write_text("{}")
    before = input_identity([tomogram])
    assert [(row[0], row[1]) for row in before] == [(str(tomogram / ".zattrs"), 2), (str(tomogram / "0" / "0.0.0"), 4)]
    store = RunStore(tmp_path / "w", KEY)
    store.save("TS_a", _picks("TS_a"), {}, before)
    assert store.load("TS_a", input_identity([tomogram])) is not None
    st = os.stat(tomogram / "0" / "0.0.0")
    os.utime(tomogram / "0" / "0.0.0", ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # rewritten, same size
    assert store.load("TS_a", input_identity([tomogram])) is None
    assert "run 'TS_a': its input files changed" in capsys.readouterr().err
    mrc = tmp_path / "TS_b.mrc"
    mrc.write_bytes(b"x" * 8)
    assert [row[:2] for row in input_identity([mrc])] == [[str(mrc), 8]]
    store.save("TS_b", _picks("TS_b"), {}, input_identity([mrc]))
    mrc.write_bytes(b"y" * 9)  # a file replaced by another
    assert store.load("TS_b", input_identity([mrc])) is None


def test_a_damaged_stored_run_is_named(tmp_path):
    store = RunStore(tmp_path / "w", KEY)
    store.save("TS_a", _picks("TS_a"), {}, [])
    (tmp_path / "w" / "TS_a.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="TS_a.npz: unreadable stored picks"):
        store.load("TS_a", [])
    np.testing.assert_array_equal(store.done(), ["TS_a"])
