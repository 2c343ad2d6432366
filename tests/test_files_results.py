"""results.json: each script owns a section; scripts running at once lose none."""

from __future__ import annotations

import json
import multiprocessing as mp

import pytest

from lrpjax.files import read_results, update_results


def _writer(path: str, worker: int, sections: int, barrier) -> None:
    barrier.wait()  # all start together: without the lock, sections are lost (checked)
    for k in range(sections):
        update_results(f"w{worker}_s{k}", {"value": worker * 100 + k}, path=path)


def test_concurrent_writers_lose_no_section(tmp_path):
    path = tmp_path / "figures" / "results.json"
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(4)
    procs = [ctx.Process(target=_writer, args=(str(path), w, 40, barrier)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    got = read_results(path)
    assert got == {f"w{w}_s{k}": {"value": w * 100 + k} for w in range(4) for k in range(40)}


def test_sections_are_replaced_and_values_made_json(tmp_path):
    import numpy as np

    path = tmp_path / "results.json"
    update_results("a", {"x": np.float32(0.5), "v": np.arange(3)}, path=path)
    update_results("b", {"y": 1}, path=path)
    update_results("a", {"x": 2}, path=path)
    assert json.loads(path.read_text()) == {"a": {"x": 2}, "b": {"y": 1}}
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="results.json"):
        update_results("c", {}, path=path)
    assert path.read_text() == "[1, 2]"
