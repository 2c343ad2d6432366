"""Issue 16, item 7: temporary files of killed writers are removed by the next save into their
folder; two trainings of one configuration take turns (the second loads the first's result)."""

from __future__ import annotations

import dataclasses
import fcntl
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax.numpy as jnp
import pytest
from flax import nnx

from lrpjax import files as lio
from lrpjax.lab import checkpoints as CK
from lrpjax.lab import train as T
from lrpjax.lab.models import build
from lrpjax.maximize import cache as C

TINY = T.TrainConfig(model="mlp", source="mnist5k", epochs=1, batch_size=32, n_train=64,
                     n_test=32)
IO_PY = Path(lio.__file__)
KILLED_WRITER = f"""
import importlib.util, os, signal
spec = importlib.util.spec_from_file_location("lrpjax_io", {str(IO_PY)!r})
io = importlib.util.module_from_spec(spec); spec.loader.exec_module(io)
with io.atomic_open({{path!r}}) as fh:
    fh.write(b"half a checkpoint")
    fh.flush()
    os.kill(os.getpid(), signal.SIGKILL)
"""


def _backdate(path: Path, seconds: float = 3600) -> None:
    past = time.time() - seconds
    os.utime(path, (past, past))


def test_stale_temporary_files_are_removed_by_the_next_save(tmp_path, caplog):
    target = tmp_path / "model.npz"
    proc = subprocess.run([sys.executable, "-c", KILLED_WRITER.format(path=str(target))],
                          check=False)
    assert proc.returncode == -9
    (killed,) = tmp_path.glob(".model.npz.*.tmp")  # what SIGKILL during a save leaves
    _backdate(killed)
    fresh = tmp_path / ".other.json.abcd1234.tmp"  # a write in progress elsewhere
    fresh.write_bytes(b"")
    held = tmp_path / ".held.npz.zzzz9999.tmp"  # old, but its writer is alive (holds the lock)
    held.write_bytes(b"")
    _backdate(held)
    unrelated = tmp_path / "notes.tmp"
    unrelated.write_bytes(b"")
    _backdate(unrelated)
    with open(held, "rb") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        with caplog.at_level(logging.WARNING, logger="lrpjax.files"):
            CK.save(tmp_path / "model", build("mlp", rngs=nnx.Rngs(0)), {})
    assert not killed.exists() and fresh.exists() and held.exists() and unrelated.exists()
    assert f"removed stale temporary file {killed}" in caplog.text
    assert sorted(p.name for p in tmp_path.glob("model.*")) == ["model.json", "model.npz"]


def _two_at_once(run, calls: list[int], release: threading.Event, started: threading.Event):
    """Start ``run`` in a thread; once it trains, start a second; return both results."""
    results: dict[str, object] = {}
    first = threading.Thread(target=lambda: results.__setitem__("first", run()))
    second = threading.Thread(target=lambda: results.__setitem__("second", run()))
    first.start()
    assert started.wait(10)
    second.start()
    time.sleep(0.3)
    assert second.is_alive() and len(calls) == 1  # waits for the lock, does not train
    release.set()
    first.join(10)
    second.join(10)
    return results


def test_concurrent_training_of_one_config_takes_turns(tmp_path, monkeypatch):
    calls: list[int] = []
    started, release = threading.Event(), threading.Event()

    def slow_train(config, *, verbose=True):
        calls.append(1)
        started.set()
        release.wait(10)
        return build("mlp", rngs=nnx.Rngs(0)), {"config": dataclasses.asdict(config)}

    monkeypatch.setattr(T, "train", slow_train)

    def run():
        return T.load_or_train("mlp", config=TINY, cache_dir=tmp_path, verbose=False)

    results = _two_at_once(run, calls, release, started)
    assert len(calls) == 1 and results["first"][1] == results["second"][1]
    stem = T.cache_path(TINY, tmp_path)
    assert stem.with_name(f".{stem.name}.lock").exists()


def test_concurrent_maximize_cache_takes_turns(tmp_path):
    calls: list[int] = []
    started, release = threading.Event(), threading.Event()

    def train():
        calls.append(1)
        started.set()
        release.wait(10)
        return {"w": jnp.ones(3)}, {}

    def run():
        return C.load_or_train("thing", {"a": 1}, train, lambda: {"w": jnp.zeros(3)}, tmp_path,
                               verbose=False)

    results = _two_at_once(run, calls, release, started)
    assert len(calls) == 1 and results["second"][1]["cached"]


@pytest.mark.parametrize("mode", ["w", "wb"])
def test_atomic_open_keeps_no_temporary_file_on_error(tmp_path, mode):
    with pytest.raises(RuntimeError), lio.atomic_open(tmp_path / "x", mode):
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_a_slow_live_writer_keeps_its_temporary_file(tmp_path):
    """A sharded run writing for longer than the stale age is not mistaken for a leftover."""
    with lio.atomic_open(tmp_path / "heatmaps.npy") as fh:
        fh.write(b"first rows")
        (tmp,) = tmp_path.glob(".heatmaps.npy.*.tmp")
        _backdate(tmp)
        lio.atomic_write_bytes(tmp_path / "other.bin", b"x")  # another save into the folder
        assert tmp.exists()
        fh.write(b", last rows")
    assert (tmp_path / "heatmaps.npy").read_bytes() == b"first rows, last rows"
