"""explain_dataset: streamed, atomic .npy output equal to explaining everything at once; the
4-device run (host devices, in a subprocess: the XLA flag must precede jax's start) agrees with
the 1-device run to float32 rounding.

No comparison here is bit for bit across shardings or batch sizes: XLA may sum a sharded or
differently sized batch in another order (seen: 3.5e-10 on values of 3.7e-3, 4 host devices vs 1,
on an AMD EPYC), so heatmaps agree to RTOL = 1e-6 -- a few float32 ulps (2^-23 = 1.2e-7) of
reordering -- with an absolute floor of RTOL times the largest |R| for entries near zero."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from lrp_nets import SpecNet, random_net

import lrpjax
from lrpjax import composites as C
from lrpjax import sharded

TESTS = Path(__file__).resolve().parent
RTOL = 1e-6  # float32 reorderings: a few ulps (2^-23 = 1.2e-7) of the result


def assert_close(actual, desired, rtol: float = RTOL) -> None:
    """Equal up to float32 reorderings: ``rtol`` of each value, and ``rtol`` of the largest
    magnitude as the absolute floor (entries near zero cancel and keep only absolute accuracy)."""
    desired = np.asarray(desired)
    np.testing.assert_allclose(actual, desired, rtol=rtol, atol=rtol * np.abs(desired).max())


def _setup():
    """The model, data and explain function shared with the 4-device subprocess."""
    rng = np.random.default_rng(0)
    net, shape = random_net(rng, "cnn")
    model = SpecNet(net)
    x = rng.uniform(0, 1, size=(30, *shape)).astype(np.float32)
    t = (np.arange(30) % 5).astype(np.int32)
    comp = C.EpsilonGammaBox(0.0, 1.0)

    def explain(a, tt):
        return lrpjax.relevance(model, a, composite=comp, target=tt)

    def batches():  # uneven sizes: regrouped to batch_size
        for i in range(0, 30, 7):
            yield x[i:i + 7], t[i:i + 7]

    return {"x": x, "t": t, "explain": explain, "batches": batches}


FOUR_DEVICES = """
import json, os, sys
import jax
import numpy as np
from lrpjax import sharded
from test_sharded import _setup
s, out = _setup(), sys.argv[1]
p4 = sharded.explain_dataset(s["explain"], s["batches"](), out + "/four.npy", batch_size=8)
one = sharded.data_mesh(jax.devices()[:1])
p1 = sharded.explain_dataset(s["explain"], s["batches"](), out + "/one.npy", batch_size=8,
                             mesh=one)
a4, a1 = np.load(p4), np.load(p1)
try:
    sharded.explain_dataset(s["explain"], s["batches"](), out + "/bad.npy", batch_size=6)
    error = ""
except ValueError as err:
    error = str(err)
print(json.dumps({"devices": jax.device_count(), "shape": list(a4.shape),
                  "mesh_devices": sharded.data_mesh().devices.size, "error": error,
                  "files": sorted(os.listdir(out))}))
"""


def test_streams_in_order_and_matches_one_big_batch(tmp_path):
    s = _setup()
    path = sharded.explain_dataset(s["explain"], s["batches"](), tmp_path / "R.npy",
                                   batch_size=8)
    R = np.load(path, mmap_mode="r")
    assert path == tmp_path / "R.npy" and R.shape == (30, 8, 8, 1) and R.dtype == np.float32
    ref = np.asarray(s["explain"](jnp.asarray(s["x"]), jnp.asarray(s["t"])))
    np.testing.assert_allclose(R, ref, rtol=1e-5, atol=1e-7)
    assert sorted(os.listdir(tmp_path)) == ["R.npy"]  # no temporary file left
    # plain arrays (no extras) and a batch size that divides the data
    single = sharded.explain_dataset(lambda a: 2.0 * a, (s["x"][i:i + 10] for i in (0, 10, 20)),
                                     tmp_path / "x2.npy", batch_size=5)
    np.testing.assert_array_equal(np.load(single), 2.0 * s["x"])


def test_failures_leave_no_file_and_errors_are_clear(tmp_path):
    def boom(a):
        raise RuntimeError("explain failed")

    with pytest.raises(RuntimeError, match="explain failed"):
        sharded.explain_dataset(boom, [np.ones((4, 2))], tmp_path / "R.npy", batch_size=4)
    with pytest.raises(ValueError, match="empty"):
        sharded.explain_dataset(lambda a: a, [], tmp_path / "R.npy", batch_size=4)
    with pytest.raises(ValueError, match="positive integer"):
        sharded.explain_dataset(lambda a: a, [np.ones((4, 2))], tmp_path / "R.npy",
                                batch_size=0)
    with pytest.raises(ValueError, match="same leading size"):
        sharded.explain_dataset(lambda a, b: a, [(np.ones((4, 2)), np.ones(3))],
                                tmp_path / "R.npy", batch_size=4)
    with pytest.raises(ValueError, match="'data' axis"):
        mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("batch",))
        sharded.explain_dataset(lambda a: a, [np.ones((4, 2))], tmp_path / "R.npy",
                                batch_size=4, mesh=mesh)
    assert os.listdir(tmp_path) == []


def test_four_host_devices_equal_one_device(tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
               JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", FOUR_DEVICES, str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["devices"] == 4 and result["mesh_devices"] == 4
    assert result["shape"] == [30, 8, 8, 1]
    assert_close(np.load(tmp_path / "four.npy"), np.load(tmp_path / "one.npy"))
    assert "multiple of the 4 devices" in result["error"]
    assert result["files"] == ["four.npy", "one.npy"]
    s = _setup()
    ref = np.asarray(s["explain"](jnp.asarray(s["x"]), jnp.asarray(s["t"])))
    np.testing.assert_allclose(np.load(tmp_path / "four.npy"), ref, rtol=1e-5, atol=1e-7)
