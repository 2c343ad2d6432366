"""Issue 16, item 6: checkpoints follow the training data's content; IDX files on disk are
checked against the published sha256 once (cached); IDX header sizes never overflow."""

from __future__ import annotations

import dataclasses
import gzip
import logging
import os
import time
from pathlib import Path

import numpy as np
import pytest
from flax import nnx

from lrpjax import files as lio
from lrpjax.lab import data as D
from lrpjax.lab import train as T
from lrpjax.lab.models import build

NAMES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
         "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def _write_mnist(folder: Path, seed: int, n: int = 12) -> None:
    """Four tiny IDX files (random content from ``seed``)."""
    rng = np.random.default_rng(seed)
    for name in NAMES:
        shape = (n, 28, 28) if "images" in name else (n,)
        D.write_idx(folder / name, rng.integers(0, 10, shape, dtype=np.uint8))


def _age(folder: Path, seconds: float = 3600) -> None:
    """Backdate every file so its digest may be cached."""
    past = time.time() - seconds
    for path in folder.iterdir():
        os.utime(path, (past, past))


def test_swapped_idx_files_retrain(tmp_path, monkeypatch):
    """Same file names, other content: the old parameters must not load."""
    calls: list[T.TrainConfig] = []

    def fake_train(config, *, verbose=True):
        calls.append(config)
        return build("mlp", rngs=nnx.Rngs(0)), {"config": dataclasses.asdict(config)}

    monkeypatch.setattr(T, "train", fake_train)
    monkeypatch.setenv("LRPJAX_DATA", str(tmp_path / "data"))
    config = T.TrainConfig(model="mlp", source="full", epochs=1, batch_size=4)
    _write_mnist(tmp_path / "data", seed=1)
    T.load_or_train("mlp", config=config, cache_dir=tmp_path / "ckpt", verbose=False)
    T.load_or_train("mlp", config=config, cache_dir=tmp_path / "ckpt", verbose=False)
    assert len(calls) == 1
    _write_mnist(tmp_path / "data", seed=2)  # other digits under the same names
    T.load_or_train("mlp", config=config, cache_dir=tmp_path / "ckpt", verbose=False)
    assert len(calls) == 2
    assert D.source_digest("full") != D.source_digest("mnist5k")


def test_local_idx_files_are_checked_against_the_published_sha256_once(tmp_path, monkeypatch,
                                                                       caplog):
    _write_mnist(tmp_path, seed=3)
    _age(tmp_path)
    hashed: list[Path] = []
    real = lio.file_sha256
    monkeypatch.setattr(lio, "file_sha256", lambda p: hashed.append(Path(p)) or real(p))
    with caplog.at_level(logging.WARNING, logger="lrpjax.lab.data"):
        D.load_mnist("test", source="full", data_dir=tmp_path)
    assert "t10k-images-idx3-ubyte.gz: sha256" in caplog.text
    assert "not the published MNIST file's " + D.MNIST_SHA256[NAMES[2]] in caplog.text
    assert len(hashed) == 2 and (tmp_path / ".lrpjax-sha256.json").is_file()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="lrpjax.lab.data"):
        D.load_mnist("test", source="full", data_dir=tmp_path)
    assert len(hashed) == 2 and caplog.text == ""  # cached digest, warned once
    assert list(tmp_path.glob(".*.tmp")) == []


def test_sha256_sidecar_sees_a_rewrite_with_equal_size_and_mtime(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"a" * 100)
    _age(tmp_path)
    first = lio.cached_sha256(path)
    st = path.stat()
    lio.atomic_write_bytes(path, b"b" * 100)  # same size, mtime restored below
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert lio.cached_sha256(path) != first
    (tmp_path / ".lrpjax-sha256.json").write_text("[]")  # a broken sidecar is only a cache
    assert lio.cached_sha256(path) == lio.file_sha256(path)


def test_fresh_files_are_hashed_but_not_cached(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"x")
    lio.cached_sha256(path)
    assert not (tmp_path / ".lrpjax-sha256.json").exists()


HUGE = (2**32 - 1) ** 3


def test_idx_header_sizes_are_python_ints(tmp_path):
    header = bytes.fromhex("00000803") + (2**32 - 1).to_bytes(4, "big") * 3
    with pytest.raises(ValueError, match=f"truncated: expected {HUGE} bytes"):
        D.read_idx(header + b"\0" * 64)
    wraps = bytes.fromhex("00000803") + b"".join(d.to_bytes(4, "big") for d in (2**31, 2**31, 4))
    (tmp_path / "wraps").write_bytes(wraps)  # 2**64 bytes: wraps to 0 in int64
    with pytest.raises(ValueError, match=f"wraps: truncated: expected {2**64} bytes.*got 0"):
        D.read_idx(tmp_path / "wraps")
    with pytest.raises(ValueError, match=f"truncated: expected {HUGE} bytes.*got at most"):
        D.read_idx(gzip.compress(header))  # checked against the .gz length, nothing inflated
