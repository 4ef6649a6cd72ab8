"""SmolLM2-135M exported to compressed-tensors and GGUF: sizes, and whether the engines compute
what quantbalance simulated.

Usage:
    OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1 python bench/bench_exports.py \
        [--plan plan.json] [--windows 4] [--out bench/results/exports.json] \
        [--formats gguf,compressed-tensors]

Without ``--plan`` the GGUF Plan is a hand-made GGML-native mix (embedding Q4_0, attention Q4_0,
MLP Q5_0, ``down_proj`` Q8_0, LM head Q8_0). The Plan is written both as GGUF and as
compressed-tensors (a GGML mix with a quantized embedding is widened into one config group).

* GGUF: llama.cpp (``llama-cpp-python``, KV cache in F32) evaluates each window; perplexity vs
  the simulated one, and the KL per token. ``--uniform``: also each uniform GGML type (Q4_0,
  Q4_1, Q5_0, Q5_1, Q8_0, every layer, embedding and head included); and an all-F32 export of the
  float model (llama.cpp's own arithmetic vs PyTorch's).
* compressed-tensors, two folders Transformers 5.24 can load exactly: ``ct-mixed`` (symmetric
  4/8-bit mix on the Linear layers, embeddings float: the default loading path) and ``ct-q4``
  (one group: int4 g32 symmetric on every layer, embedding and head included, loaded with
  ``CompressedTensorsConfig(dequantize=True)``); KL(simulation ‖ Transformers) per token.

Perplexity uses the task's first ``--windows`` evaluation windows of 512 tokens.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

import quantbalance as qb
from quantbalance.formats.ggml import GGML_SCHEMES
from quantbalance.tasks.smollm import corpus_ids, load_smollm


def ggml_plan(types: dict[str, str]) -> qb.Plan:
    """A Plan from ``pattern -> ggml type`` (lm_head included, embedding too)."""
    layers = {k: qb.LayerSpec(weight=GGML_SCHEMES[v]) for k, v in types.items()}
    return qb.Plan(name="ggml-mix", layers=layers, layer_types=["Linear", "Embedding"])


MIX = {
    "lm_head": "Q8_0",
    "re:.*down_proj": "Q8_0",
    "re:.*mlp.*": "Q5_0",
    "re:.*": "Q4_0",
}


def nll_and_kl(logits: torch.Tensor, ref: torch.Tensor, ids: torch.Tensor) -> tuple[float, float]:
    """Summed next-token NLL of ``logits`` and mean per-token KL(ref ‖ logits)."""
    lp, rp = F.log_softmax(logits.float(), -1), F.log_softmax(ref.float(), -1)
    nll = float(F.nll_loss(lp[:-1], ids[1:], reduction="sum"))
    kl = float(F.kl_div(lp, rp, log_target=True, reduction="none").sum(-1).mean())
    return nll, kl


def sim_logits(model: torch.nn.Module, windows: list[torch.Tensor]) -> list[torch.Tensor]:
    with torch.inference_mode():
        return [model(w).logits[0].float() for w in windows]


CT_MIXED = {
    "re:.*down_proj": qb.LayerSpec(weight=qb.Scheme(8, granularity=qb.PerChannel())),
    "re:.*self_attn.*": qb.LayerSpec(weight=qb.Scheme(4, granularity=qb.PerGroup(size=64))),
    "re:.*": qb.LayerSpec(weight=qb.Scheme(4, granularity=qb.PerGroup(size=32))),
}


def check_ct(
    q: torch.nn.Module, task: Any, windows: list[torch.Tensor], sims: list[torch.Tensor], tmp: Path
) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    src = task.info["source"]
    res = qb.export(q, tmp / "ct", format="compressed-tensors", source=src, overwrite=True)
    one_group = len(set(res.layers.values())) == 1 and "model.embed_tokens" in res.layers
    kw = {"quantization_config": CompressedTensorsConfig(dequantize=True)} if one_group else {}
    hf = AutoModelForCausalLM.from_pretrained(str(tmp / "ct"), dtype=torch.float32, **kw).eval()
    kls, nll, n = [], 0.0, 0
    for w, s in zip(windows, sims, strict=True):
        with torch.inference_mode():
            lg = hf(w).logits[0]
        a, k = nll_and_kl(lg, s, w[0])
        nll, n = nll + a, n + w.shape[1] - 1
        kls.append(k)
    return {
        "bytes": res.nbytes,
        "files": res.files,
        "kl_vs_sim": float(np.mean(kls)),
        "perplexity": math.exp(nll / n),
        "notes": res.notes,
    }


class Q8Blocks(torch.nn.Module):
    """llama.cpp's on-the-fly activation quantization for quantized weights (``quantize_row_q8_0``):
    blocks of 32, ``d = amax / 127`` stored fp16, ``q = round(x / d)``. Used only here, to show
    that this rounding is the whole remaining difference between llama.cpp and the simulation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.float().reshape(-1, 32)
        d = b.abs().amax(1, keepdim=True) / 127
        inv = torch.where(d > 0, 1 / d, torch.zeros_like(d))
        return (torch.round(b * inv) * d.half().float()).reshape(x.shape).to(x.dtype)


def with_ggml_activations(q: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``q`` whose quantized Linear layers round their inputs as llama.cpp does."""
    import copy

    from quantbalance.nn import QLinear

    out = copy.deepcopy(q)
    for m in out.modules():
        if isinstance(m, QLinear) and m.in_features % 32 == 0:
            m.input_quantizer = Q8Blocks()
    return out


def check_gguf(
    q: torch.nn.Module, task: Any, windows: list[torch.Tensor], sims: list[torch.Tensor], path: Path
) -> dict[str, Any]:
    res = qb.export(q, path, format="gguf", source=task.info["source"], tokenizer_pre="smollm")
    out: dict[str, Any] = {"bytes": res.nbytes, "files": res.files}
    try:
        from llama_cpp import Llama
    except ImportError:
        out["llama_cpp"] = "not installed (pip install llama-cpp-python)"
        return out
    llm = Llama(
        model_path=str(path),
        logits_all=True,
        n_ctx=windows[0].shape[1],
        n_threads=2,
        type_k=0,
        type_v=0,
        verbose=False,
    )  # fmt: skip  (KV cache in F32: ggml type 0)
    kls, act_kls, nll, n = [], [], 0.0, 0
    act_sims = sim_logits(with_ggml_activations(q), windows)
    for w, s, s_act in zip(windows, sims, act_sims, strict=True):
        llm.reset()
        llm.eval(w[0].tolist())
        lg = torch.tensor(np.array(llm.scores[: w.shape[1]]))
        a, k = nll_and_kl(lg, s, w[0])
        nll, n = nll + a, n + w.shape[1] - 1
        kls.append(k)
        act_kls.append(nll_and_kl(lg, s_act, w[0])[1])
    out |= {
        "kl_vs_sim": float(np.mean(kls)),
        "perplexity": math.exp(nll / n),
        "kl_vs_sim_with_q8_activations": float(np.mean(act_kls)),
    }
    return out


def ppl(sims: list[torch.Tensor], windows: list[torch.Tensor]) -> float:
    nll = sum(nll_and_kl(s, s, w[0])[0] for s, w in zip(sims, windows, strict=True))
    return math.exp(nll / sum(w.shape[1] - 1 for w in windows))


def run(
    plan: qb.Plan, task: Any, windows: list[torch.Tensor], tmp: Path, formats: list[str]
) -> dict[str, Any]:
    q = qb.quantize(task.model, plan, calib_data=task.calib_data, progress=False)
    sims = sim_logits(q, windows)
    row: dict[str, Any] = {
        "plan": plan.name,
        "sim_perplexity": ppl(sims, windows),
        "qb_bytes": qb.model_nbytes(q),
    }
    if "compressed-tensors" in formats:
        row["compressed-tensors"] = check_ct(q, task, windows, sims, tmp)
    if "gguf" in formats:
        row["gguf"] = check_gguf(q, task, windows, sims, tmp / f"{plan.name}.gguf")
    print(json.dumps(row, indent=1), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--plan", type=Path, default=None)
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--uniform", action="store_true", help="also each uniform GGML type")
    ap.add_argument("--out", type=Path, default=Path("bench/results/exports.json"))
    ap.add_argument(
        "--formats",
        default="gguf,compressed-tensors",
        help="formats of the --plan row (a --target transformers Plan: compressed-tensors)",
    )
    args = ap.parse_args()
    task = load_smollm()
    stream = corpus_ids(task)
    windows = [stream[i * 512 : (i + 1) * 512].unsqueeze(0) for i in range(args.windows)]
    float_sims = sim_logits(task.model, windows)
    rows: list[dict[str, Any]] = [
        {
            "plan": "float",
            "sim_perplexity": ppl(float_sims, windows),
            "float_bytes": qb.model_nbytes(task.model),
        }
    ]
    plan = qb.Plan.load(args.plan) if args.plan else ggml_plan(MIX)
    with tempfile.TemporaryDirectory() as d:
        rows.append(run(plan, task, windows, Path(d), args.formats.split(",")))
        mixed = qb.Plan(name="ct-mixed", layers=CT_MIXED, skip=["re:(.*\\.)?lm_head"])
        rows.append(run(mixed, task, windows, Path(d), ["compressed-tensors"]))
        q4 = qb.Plan(
            name="ct-q4", layers={"re:.*": CT_MIXED["re:.*"]}, layer_types=["Linear", "Embedding"]
        )
        rows.append(run(q4, task, windows, Path(d), ["compressed-tensors"]))
        if args.uniform:
            empty = qb.Plan(name="float-f32", layers={"re:.*": None})
            rows.append(run(empty, task, windows, Path(d), ["gguf"]))
            for t in ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"):
                p = ggml_plan({"re:.*": t}).model_copy(update={"name": f"uniform-{t}"})
                rows.append(run(p, task, windows, Path(d), ["gguf"]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"windows": args.windows, "window": 512, "rows": rows}, indent=1)
    )
    print(f"written {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
