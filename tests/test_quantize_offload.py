"""Quantizing an HF checkpoint block by block (``offload=``): same codes, bounded memory."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

import quantbalance as qb
from quantbalance.deploy.sharded import read_sharded
from quantbalance.errors import CheckpointError, ConfigError, UnsupportedError
from quantbalance.nn import QuantModule

pytest.importorskip("transformers")
pytest.importorskip("accelerate")
from llama_ckpt import calib_batches, make_llama_checkpoint

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_offload.py"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 blocks, 128 hidden: ~16 MB of float32 in several shards."""
    return make_llama_checkpoint(tmp_path_factory.mktemp("hf") / "llama", layers=24)


def _full(folder: Path) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


@pytest.mark.parametrize("algorithm", ["rtn", "gptq", "awq"])
def test_offloaded_equals_fully_loaded(ckpt: Path, tmp_path: Path, algorithm: str) -> None:
    torch.set_num_threads(1)
    assert len(list(ckpt.glob("*.safetensors"))) >= 2  # really sharded
    calib = calib_batches()
    out = qb.quantize(str(ckpt), "w4-g128", calib, algorithm=algorithm, offload="disk",
                      save_to=tmp_path / "q", progress=False)  # fmt: skip
    assert out == tmp_path / "q"
    meta, tensors = read_sharded(out)
    full = qb.quantize(_full(ckpt), "w4-g128", calib, algorithm=algorithm, progress=False)
    qmods = {n: m for n, m in full.named_modules() if isinstance(m, QuantModule)}
    assert len(qmods) >= 24 * 7  # every Linear of every block (+ what the preset adds)
    assert set(json.loads(meta["layers"])) == set(qmods)
    for name, mod in qmods.items():
        for part, t in mod.qweight.parts().items():  # the qweight_* buffers of the layer
            assert torch.equal(tensors[f"{name}.qweight_{part}"], t), (name, part)
    # the float state too (norms), and the whole model through qb.load
    loaded = qb.load(out, _full(ckpt))
    x = calib[0]
    assert torch.equal(loaded(**x).logits, full(**x).logits)
    assert loaded.qb_info.layers == full.qb_info.layers


@pytest.mark.parametrize("algorithm", ["rtn", "gptq"])
def test_a_bfloat16_checkpoint_is_quantized_as_the_whole_folder(
    tmp_path: Path, algorithm: str
) -> None:
    """The model quantbalance loads from a folder (float32, ``frontends.hf``) with and without
    offload: offloading used to compute in the checkpoint's bf16, another model's codes."""
    torch.set_num_threads(1)
    folder = make_llama_checkpoint(tmp_path / "bf16", layers=2, dtype=torch.bfloat16)
    calib = calib_batches()
    out = qb.quantize(str(folder), "w4-g128", calib, algorithm=algorithm, offload="disk",
                      save_to=tmp_path / "q", progress=False)  # fmt: skip
    whole = qb.quantize(_full(folder), "w4-g128", calib, algorithm=algorithm, progress=False)
    _, tensors = read_sharded(out)
    qmods = {n: m for n, m in whole.named_modules() if isinstance(m, QuantModule)}
    assert len(qmods) == 2 * 7 + 1  # and the embedding
    for name, mod in qmods.items():
        for part, t in mod.qweight.parts().items():
            assert torch.equal(tensors[f"{name}.qweight_{part}"], t), (name, part)
    x = calib[0]
    assert torch.equal(qb.load(out, folder)(**x).logits, whole(**x).logits)


def test_cpu_offload_equals_disk(ckpt: Path, tmp_path: Path) -> None:
    a = qb.quantize(str(ckpt), "w4-g128", offload="disk", save_to=tmp_path / "a", progress=False)
    b = qb.quantize(str(ckpt), "w4-g128", offload="cpu", save_to=tmp_path / "b", progress=False)
    ta, tb = read_sharded(a)[1], read_sharded(b)[1]
    assert sorted(ta) == sorted(tb)
    assert all(torch.equal(ta[k], tb[k]) for k in ta)


def test_altered_part_is_refused(ckpt: Path, tmp_path: Path) -> None:
    out = qb.quantize(str(ckpt), "w4-g128", offload="disk", save_to=tmp_path / "q",
                      progress=False)  # fmt: skip
    part = sorted(out.glob("part-*.safetensors"))[3]
    data = bytearray(part.read_bytes())
    data[-1] ^= 1
    part.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        qb.load(out, _full(ckpt))


def test_bad_requests(ckpt: Path, tmp_path: Path) -> None:
    with pytest.raises(UnsupportedError, match=r"nn\.Module, got the path"):
        qb.quantize(str(ckpt), "w4-g128")
    with pytest.raises(ConfigError, match="offload='disk' or 'cpu' and save_to"):
        qb.quantize(str(ckpt), "w4-g128", offload="disk")
    with pytest.raises(ConfigError, match="accepted disk, cpu"):
        qb.quantize(str(ckpt), "w4-g128", offload="ram", save_to=tmp_path / "q")
    with pytest.raises(UnsupportedError, match="static activation ranges"):
        qb.quantize(str(ckpt), "w8a8", calib_batches(), offload="disk", save_to=tmp_path / "q")
    with pytest.raises(UnsupportedError, match="awq\\+gptq cannot run with offloaded blocks"):
        qb.quantize(str(ckpt), "w4-g128", calib_batches(), algorithm="awq+gptq",
                    offload="disk", save_to=tmp_path / "q")  # fmt: skip
    with pytest.raises(ConfigError, match=r"no config\.json"):
        qb.quantize(str(tmp_path), "w4-g128", offload="disk", save_to=tmp_path / "q")
    with pytest.raises(ConfigError, match="apply to a Hugging Face checkpoint folder"):
        qb.quantize(torch.nn.Linear(4, 4), "int8-weight", save_to=tmp_path / "q")
    assert not (tmp_path / "q").exists()  # nothing half-written


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
@pytest.mark.parametrize("algorithm", ["rtn", "gptq"])
def test_peak_memory_does_not_grow_with_blocks(tmp_path: Path, algorithm: str) -> None:
    """Peak RSS (VmHWM, in a fresh process) of 12 vs 48 blocks: the extra 36 blocks cost ~0."""
    spec = importlib.util.spec_from_file_location("bench_offload", BENCH)
    assert spec and spec.loader
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = {}
    for n in (12, 48):
        ck = make_llama_checkpoint(tmp_path / f"m{n}", layers=n, hidden=256, intermediate=512,
                                   shard="20MB")  # fmt: skip
        rows[n] = bench.run_child(ck, tmp_path / f"q{n}", algorithm, n_calib=2, seq=32, threads=1)
    grown = (rows[48]["checkpoint_bytes"] - rows[12]["checkpoint_bytes"]) / 2**20  # ~81 MiB
    assert grown > 75
    # fully loaded, the peak would grow by `grown`; offloaded it stays within allocator noise
    assert rows[48]["extra_mb"] - rows[12]["extra_mb"] < 0.25 * grown, rows
    # and it stays below the float model (loading it would add all of it; 0.57x measured)
    assert rows[48]["extra_mb"] < 0.75 * rows[48]["checkpoint_bytes"] / 2**20, rows


def test_load_on_a_meta_skeleton_equals_the_in_memory_model(ckpt: Path, tmp_path: Path) -> None:
    """A sharded checkpoint rebuilt on a ``meta`` skeleton: no float model is materialised."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from quantbalance.quantize_offload import skeleton

    torch.set_num_threads(1)
    calib = calib_batches()
    out = qb.quantize(str(ckpt), "w4-g128", calib, algorithm="gptq", offload="disk",
                      save_to=tmp_path / "q", progress=False)  # fmt: skip
    full = qb.quantize(_full(ckpt), "w4-g128", calib, algorithm="gptq", progress=False)
    empty = skeleton(ckpt, calibration=False)
    assert all(p.is_meta for p in empty.parameters())
    x = {"input_ids": torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(3))}
    want = full(**x).logits
    for skel in (empty, str(ckpt)):  # a meta module, or the HF folder (its meta skeleton)
        loaded = qb.load(out, skel)
        assert not any(t.is_meta for t in [*loaded.parameters(), *loaded.buffers()])
        assert torch.equal(loaded(**x).logits, want)
        assert loaded.qb_info.layers == full.qb_info.layers
    assert all(p.is_meta for p in empty.parameters())  # the skeleton itself is left empty
    with torch.device("meta"):  # buffers on meta too (rotary frequencies): refused, named
        bare = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(ckpt))
    with pytest.raises(CheckpointError, match="meta device and the checkpoint does not store"):
        qb.load(out, bare)
