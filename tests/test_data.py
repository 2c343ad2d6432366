"""Tests for lrpjax.lab.data: IDX parsing, verified download (simulated, no network), MNIST sources."""

from __future__ import annotations

import gzip
import hashlib
import logging
import urllib.error
from pathlib import Path

import numpy as np
import pytest

from lrpjax.lab import data
from lrpjax.lab.data import (
    MNIST_SHA256,
    MNISTChecksumError,
    MNISTUnavailableError,
    download_mnist,
    load_mnist,
    mnist_dir,
    read_idx,
    write_idx,
)

TRAIN_N, TEST_N = 20, 10


def _tiny(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random uint8 images (n, 28, 28) and labels (n,)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n, dtype=np.uint8)


def _write_tiny_mnist(folder: Path) -> dict[str, np.ndarray]:
    """Write four tiny MNIST IDX files (20 train, 10 test digits) into ``folder``."""
    (xtr, ytr), (xte, yte) = _tiny(TRAIN_N, 1), _tiny(TEST_N, 2)
    arrays = {
        "train-images-idx3-ubyte.gz": xtr,
        "train-labels-idx1-ubyte.gz": ytr,
        "t10k-images-idx3-ubyte.gz": xte,
        "t10k-labels-idx1-ubyte.gz": yte,
    }
    for name, array in arrays.items():
        write_idx(folder / name, array)
    return arrays


def _no_network(url: str) -> bytes:
    raise urllib.error.URLError(f"offline ({url})")


# ------------------------------------------------------------------------------- IDX format


@pytest.mark.parametrize("name", ["images-idx3-ubyte.gz", "images-idx3-ubyte"])
def test_idx_round_trip(tmp_path: Path, name: str) -> None:
    images, labels = _tiny(7, 0)
    write_idx(tmp_path / name, images)
    write_idx(tmp_path / ("labels-" + name), labels)
    raw = (tmp_path / name).read_bytes()
    assert (raw[:2] == b"\x1f\x8b") == name.endswith(".gz")
    back = read_idx(tmp_path / name)
    assert back.dtype == np.uint8 and back.shape == (7, 28, 28)
    np.testing.assert_array_equal(back, images)
    np.testing.assert_array_equal(read_idx(tmp_path / ("labels-" + name)), labels)
    np.testing.assert_array_equal(read_idx(raw), images)  # bytes input
    assert list(tmp_path.glob(".*.tmp")) == []  # atomic write leaves no temp file


def test_idx_header_layout(tmp_path: Path) -> None:
    write_idx(tmp_path / "l", np.array([3, 1, 4], dtype=np.uint8))
    assert (tmp_path / "l").read_bytes() == bytes.fromhex("00000801 00000003 030104")


def test_idx_truncated(tmp_path: Path) -> None:
    images, _ = _tiny(3, 0)
    write_idx(tmp_path / "x", images)
    raw = (tmp_path / "x").read_bytes()
    with pytest.raises(ValueError, match=r"truncated: expected 2352 bytes .* got 2342"):
        read_idx(raw[:-10])
    with pytest.raises(ValueError, match="truncated: expected 2352"):
        read_idx(gzip.compress(raw[:-10]))
    with pytest.raises(ValueError, match="truncated IDX header"):
        read_idx(raw[:10])
    with pytest.raises(ValueError, match="trailing bytes"):
        read_idx(raw + b"\0")
    with pytest.raises(ValueError, match="corrupt or truncated gzip"):
        read_idx(gzip.compress(raw)[:-20])


def test_idx_wrong_magic(tmp_path: Path) -> None:
    path = tmp_path / "bad"
    path.write_bytes(bytes.fromhex("00000d03") + b"\0" * 12)
    with pytest.raises(ValueError, match=r"wrong magic number 0x00000d03.*0x00000801"):
        read_idx(path)
    with pytest.raises(ValueError, match="1-dim labels or 3-dim images"):
        write_idx(tmp_path / "y", np.zeros((2, 2), np.uint8))
    with pytest.raises(ValueError, match=r"integer values in \[0, 255\]"):
        write_idx(tmp_path / "y", np.array([0.5]))


# -------------------------------------------------------------------------------- download


def test_checksum_mismatch_keeps_no_file(tmp_path: Path) -> None:
    name = "t10k-labels-idx1-ubyte.gz"
    with pytest.raises(MNISTChecksumError) as info:
        download_mnist(tmp_path, fetch=lambda url: b"not mnist", checksums={name: "ab" * 32})
    message = str(info.value)
    assert name in message and "ab" * 32 in message
    assert hashlib.sha256(b"not mnist").hexdigest() in message
    assert list(tmp_path.iterdir()) == []
    assert isinstance(info.value, MNISTUnavailableError) and isinstance(info.value, ValueError)


def test_offline_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(MNISTUnavailableError, match="train-images-idx3-ubyte.gz") as info:
        load_mnist("train", source="full", data_dir=tmp_path, fetch=_no_network)
    assert str(tmp_path) in str(info.value) and "mnist5k" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_download_tries_mirrors_and_verifies(tmp_path: Path) -> None:
    source = tmp_path / "server"
    arrays = _write_tiny_mnist(source)
    blobs = {name: (source / name).read_bytes() for name in arrays}
    checksums = {name: hashlib.sha256(blob).hexdigest() for name, blob in blobs.items()}
    calls: list[str] = []

    def fetch(url: str) -> bytes:
        calls.append(url)
        if url.startswith("https://down/"):
            raise OSError("connection refused")
        if url.startswith("https://corrupt/"):
            return b"garbage"
        return blobs[url.rsplit("/", 1)[1]]

    mirrors = ("https://down/", "https://corrupt", "https://good/mnist/")
    folder = download_mnist(tmp_path / "cache", fetch=fetch, mirrors=mirrors, checksums=checksums)
    assert sorted(p.name for p in folder.iterdir()) == sorted(checksums)
    assert len(calls) == 12 and calls[2] == "https://good/mnist/train-images-idx3-ubyte.gz"
    calls.clear()
    download_mnist(folder, fetch=fetch, mirrors=mirrors, checksums=checksums)
    assert calls == []  # files present: nothing fetched
    test = load_mnist("test", source="full", data_dir=folder, fetch=_no_network)
    np.testing.assert_array_equal(test.labels, arrays["t10k-labels-idx1-ubyte.gz"])


# ------------------------------------------------------------------------------ full source


def test_full_from_local_files(tmp_path: Path) -> None:
    arrays = _write_tiny_mnist(tmp_path)
    train = load_mnist("train", source="full", data_dir=tmp_path, fetch=_no_network)
    assert train.source == "full"
    assert train.images.shape == (TRAIN_N, 28, 28, 1) and train.images.dtype == np.float32
    assert train.labels.shape == (TRAIN_N,) and train.labels.dtype == np.int32
    np.testing.assert_allclose(train.images[..., 0] * 255, arrays["train-images-idx3-ubyte.gz"])
    np.testing.assert_array_equal(train.labels, arrays["train-labels-idx1-ubyte.gz"])
    test = load_mnist("test", source="auto", data_dir=tmp_path)
    assert test.source == "full" and len(test.labels) == TEST_N


def test_full_accepts_gunzipped_files_and_checks_pairs(tmp_path: Path) -> None:
    arrays = _write_tiny_mnist(tmp_path)
    for name in arrays:  # replace the .gz files by raw IDX files
        write_idx(tmp_path / name.removesuffix(".gz"), arrays[name])
        (tmp_path / name).unlink()
    assert load_mnist("test", source="auto", data_dir=tmp_path).source == "full"
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(TEST_N + 1, np.uint8))
    with pytest.raises(ValueError, match=f"expected {TEST_N} labels"):
        load_mnist("test", source="full", data_dir=tmp_path)


def test_mnist_dir_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LRPJAX_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert mnist_dir() == tmp_path / "xdg" / "lrpjax" / "mnist"
    monkeypatch.setenv("LRPJAX_DATA", str(tmp_path / "env"))
    assert mnist_dir() == tmp_path / "env"
    assert mnist_dir(tmp_path / "arg") == tmp_path / "arg"


# --------------------------------------------------------------------------- mnist5k source


def test_mnist5k_splits() -> None:
    train, test = load_mnist("train", source="mnist5k"), load_mnist("test", source="mnist5k")
    for split, n in ((train, 4000), (test, 1000)):
        assert split.source == "mnist5k"
        assert split.images.shape == (n, 28, 28, 1) and split.images.dtype == np.float32
        assert split.labels.shape == (n,) and split.labels.dtype == np.int32
        assert split.images.min() == 0.0 and split.images.max() == 1.0
        np.testing.assert_array_equal(np.bincount(split.labels, minlength=10), [n // 10] * 10)
    rows = [{r.tobytes() for r in s.images.reshape(len(s.images), -1)} for s in (train, test)]
    assert rows[0].isdisjoint(rows[1]) and len(rows[0]) == 4000
    assert not np.all(np.diff(train.labels) >= 0)  # shuffled, not sorted by class


def test_mnist5k_deterministic_and_independent_of_global_rng() -> None:
    first = load_mnist("train", source="mnist5k")
    first.images[0] = -1.0  # callers get copies; the cache stays intact
    data._mnist5k_splits.cache_clear()
    np.random.seed(123)
    second = load_mnist("train", source="mnist5k")
    assert second.images.min() == 0.0
    np.testing.assert_array_equal(first.labels, second.labels)
    np.testing.assert_array_equal(first.images[1:], second.images[1:])


def test_auto_falls_back_to_mnist5k(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"")  # 1 of 4 files is not enough
    calls: list[str] = []
    with caplog.at_level(logging.WARNING, logger="lrpjax.lab.data"):
        out = load_mnist("test", data_dir=tmp_path, fetch=calls.append)
    assert out.source == "mnist5k" and len(out.labels) == 1000
    assert calls == [] and "5k" in caplog.text


def test_bad_split_or_source() -> None:
    with pytest.raises(ValueError, match="unknown split 'valid'"):
        load_mnist("valid")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown source 'emnist'"):
        load_mnist("train", source="emnist")  # type: ignore[arg-type]


def test_published_checksums_are_well_formed() -> None:
    assert len(MNIST_SHA256) == 4
    assert all(len(h) == 64 and int(h, 16) >= 0 for h in MNIST_SHA256.values())
    assert data.data_range() == (0.0, 1.0)
    x = np.stack([np.zeros((28, 28, 1)), np.ones((28, 28, 1))]).astype(np.float32)
    np.testing.assert_allclose(data.mean_image(x), 0.5)
    np.testing.assert_allclose(data.standardize(x), np.where(x > 0, 1.0, -1.0))
