"""Issue 16, item 5: broken, forged or tampered checkpoints and caches are reported and retrained
(``load_or_train``) or raise a ValueError naming the file (``load``), never crash or load."""

from __future__ import annotations

import dataclasses
import io
import json
import tracemalloc
import zipfile
from collections.abc import Callable
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lrpjax import files as lio
from lrpjax.lab import checkpoints as CK
from lrpjax.lab import train as T
from lrpjax.lab.models import build
from lrpjax.maximize import cache as C

TINY = T.TrainConfig(model="mlp", source="mnist5k", epochs=1, batch_size=32, n_train=64,
                     n_test=32)


@pytest.fixture
def fake_train(monkeypatch: pytest.MonkeyPatch) -> list[T.TrainConfig]:
    """Replace the trainer by an instant one; the list records each training."""
    calls: list[T.TrainConfig] = []

    def train(config: T.TrainConfig, *, verbose: bool = True):
        calls.append(config)
        model = build(config.model, rngs=nnx.Rngs(len(calls)))
        return model, {"config": dataclasses.asdict(config), "test_accuracy": 1.0 / len(calls)}

    monkeypatch.setattr(T, "train", train)
    return calls


def _npy(shape: tuple[int, ...], descr: str = "<f8", data: bytes = b"\0" * 8) -> bytes:
    """An .npy member whose header claims ``shape`` but which holds only ``data``."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False,
                                               "shape": shape})
    return buf.getvalue() + data


def _rewrite(npz: Path, change: Callable[[dict[str, np.ndarray]], None]) -> None:
    """Rewrite ``npz`` as a well-formed archive after ``change`` edits its arrays."""
    with np.load(npz) as f:
        arrays = {k: f[k] for k in f.files}
    change(arrays)
    np.savez(npz, **arrays)


def _flip(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x10
    path.write_bytes(bytes(raw))


def _add_member(npz: Path, name: str, blob: bytes) -> None:
    with zipfile.ZipFile(npz, "a") as zf:
        zf.writestr(name, blob)


def _replace_member(npz: Path, name: str, blob: bytes) -> None:
    with zipfile.ZipFile(npz) as zf:
        members = {i.filename: zf.read(i) for i in zf.infolist()}
    members[name] = blob
    with zipfile.ZipFile(npz, "w") as zf:
        for key, value in members.items():
            zf.writestr(key, value)


KERNEL = "dense1/kernel"
BROKEN: dict[str, tuple[Callable[[Path], None], str]] = {  # stem -> (damage, expected message)
    "truncated": (lambda s: s.with_suffix(".npz").write_bytes(
        s.with_suffix(".npz").read_bytes()[:5000]), "sha256"),
    "bit-flip": (lambda s: _flip(s.with_suffix(".npz")), "sha256"),
    "empty": (lambda s: s.with_suffix(".npz").write_bytes(b""), "sha256"),
    "card-list": (lambda s: s.with_suffix(".json").write_text("[]"), "JSON object"),
    "card-null": (lambda s: s.with_suffix(".json").write_text("null"), "JSON object"),
    "card-bad-utf8": (lambda s: s.with_suffix(".json").write_bytes(b'{"a": "\xff"}'), "UTF-8"),
    "card-missing": (lambda s: s.with_suffix(".json").unlink(), "missing"),
    "nan": (lambda s: _rewrite(s.with_suffix(".npz"),
                               lambda a: a[KERNEL].__setitem__((0, 0), np.nan)), "sha256"),
    "zeros": (lambda s: _rewrite(s.with_suffix(".npz"),
                                 lambda a: a.__setitem__(KERNEL, 0 * a[KERNEL])), "sha256"),
    "int8": (lambda s: _rewrite(s.with_suffix(".npz"), lambda a: a.__setitem__(
        KERNEL, a[KERNEL].astype(np.int8))), "sha256"),
}


@pytest.mark.parametrize("damage", list(BROKEN))
def test_broken_checkpoint_warns_and_retrains(tmp_path, fake_train, damage):
    _model, card = T.load_or_train("mlp", config=TINY, cache_dir=tmp_path, verbose=False)
    stem = T.cache_path(TINY, tmp_path)
    assert card["weights_sha256"] == lio.file_sha256(stem.with_suffix(".npz"))
    func, message = BROKEN[damage]
    func(stem)
    with pytest.warns(UserWarning, match=f"unusable checkpoint.*{message}.*retraining"):
        _model, card2 = T.load_or_train("mlp", config=TINY, cache_dir=tmp_path, verbose=False)
    assert len(fake_train) == 2 and card2["test_accuracy"] == 0.5  # the card is the new one
    _model, card3 = T.load_or_train("mlp", config=TINY, cache_dir=tmp_path, verbose=False)
    assert len(fake_train) == 2 and card3 == card2  # the new checkpoint loads


@pytest.mark.parametrize("forge", ["extra member", "expected member"])
def test_forged_npy_header_is_rejected_before_any_allocation(tmp_path, fake_train, forge):
    """A few hundred bytes claiming shape (2**40,): 8 TiB, never allocated."""
    T.load_or_train("mlp", config=TINY, cache_dir=tmp_path, verbose=False)
    stem = T.cache_path(TINY, tmp_path)
    if forge == "extra member":
        _add_member(stem.with_suffix(".npz"), "evil.npy", _npy((2**40,)))
        message = "unexpected key 'evil'"
    else:
        _replace_member(stem.with_suffix(".npz"), "dense3/bias.npy", _npy((2**40,), "<f4"))
        message = r"shape mismatch for 'dense3/bias': file \(1099511627776,\)"
    card = json.loads(stem.with_suffix(".json").read_text())
    card.pop("weights_sha256")  # let the archive itself be judged, not only its digest
    stem.with_suffix(".json").write_text(json.dumps(card))
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=message):
            CK.load(stem, build("mlp", rngs=nnx.Rngs(0)))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50e6
    with pytest.warns(UserWarning, match="unusable checkpoint"):
        T.load_or_train("mlp", config=TINY, cache_dir=tmp_path, verbose=False)
    assert len(fake_train) == 2


@pytest.mark.parametrize("damage", ["truncated", "empty", "card-list", "card-bad-utf8", "nan",
                                    "int8"])
def test_load_of_a_broken_file_names_file_and_problem(tmp_path, damage):
    model = build("mlp", rngs=nnx.Rngs(0))
    stem = CK.save(tmp_path / "mine", model, {"note": "user file"})
    if damage in ("nan", "int8"):
        stem.with_suffix(".json").unlink()  # no card: the content itself must be judged
    BROKEN[damage][0](stem)
    problem = {"truncated": "sha256", "empty": "sha256", "card-list": "JSON object",
               "card-bad-utf8": "UTF-8", "nan": "non-finite values in dense1/kernel",
               "int8": "dtype of 'dense1/kernel' is int8"}[damage]
    with pytest.raises(ValueError, match=f"mine.*{problem}"):
        CK.load(stem, build("mlp", rngs=nnx.Rngs(1)))
    if damage in ("truncated", "empty"):  # without the card: the archive is unreadable
        stem.with_suffix(".json").unlink()
        with pytest.raises(ValueError, match=r"mine\.npz: not a readable \.npz archive"):
            CK.load(stem, build("mlp", rngs=nnx.Rngs(1)))


# ------------------------------------------------------------------- the maximize cache
def _cache_call(tmp_path: Path, calls: list[int]):
    def train():
        calls.append(1)
        return {"w": jnp.full(3, float(len(calls))), "b": jnp.ones(2)}, {}

    def like():
        return {"w": jnp.zeros(3), "b": jnp.zeros(2)}

    return C.load_or_train("thing", {"a": 1}, train, like, tmp_path, verbose=False)


def _meta(blob: bytes) -> Callable[[Path], None]:
    return lambda p: _rewrite(p, lambda a: a.__setitem__("meta", np.frombuffer(blob, np.uint8)))


CACHE_BROKEN: dict[str, tuple[Callable[[Path], None], str]] = {
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[:300]), "not a readable"),
    "bit-flip": (_flip, "not a readable"),
    "empty": (lambda p: p.write_bytes(b""), "not a readable"),
    "meta-list": (_meta(b"[]"), "not an object"),
    "meta-null": (_meta(b"null"), "not an object"),
    "meta-bad-utf8": (_meta(b'{"a": "\xff"}'), "unreadable record"),
    "huge-extra-member": (lambda p: _add_member(p, "evil.npy", _npy((2**40,))),
                          "unexpected key 'evil'"),
    "huge-leaf": (lambda p: _replace_member(p, "leaf_0000.npy", _npy((2**40,), "<f4")),
                  "shape mismatch for 'leaf_0000'"),
    "nan": (lambda p: _rewrite(p, lambda a: a["leaf_0001"].__setitem__(0, np.nan)),
            "non-finite"),
    "zeros": (lambda p: _rewrite(p, lambda a: a.__setitem__("leaf_0001", 0 * a["leaf_0001"])),
              "differ from the recorded sha256"),
    "int8": (lambda p: _rewrite(p, lambda a: a.__setitem__(
        "leaf_0001", a["leaf_0001"].astype(np.int8))), "dtype of 'leaf_0001' is int8"),
}


@pytest.mark.parametrize("damage", list(CACHE_BROKEN))
def test_broken_maximize_cache_warns_and_retrains(tmp_path, damage):
    calls: list[int] = []
    _params, info = _cache_call(tmp_path, calls)
    path = Path(info["path"])
    func, message = CACHE_BROKEN[damage]
    func(path)
    with pytest.warns(UserWarning, match=f"unusable cache.*{message}.*retraining"):
        params, info2 = _cache_call(tmp_path, calls)
    assert len(calls) == 2 and not info2["cached"] and float(params["w"][0]) == 2.0
    params, info3 = _cache_call(tmp_path, calls)
    assert len(calls) == 2 and info3["cached"] and float(params["w"][0]) == 2.0
