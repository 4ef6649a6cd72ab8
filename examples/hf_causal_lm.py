"""Your Hugging Face causal LM + a text file -> a per-layer precision Plan under a budget.

    python examples/hf_causal_lm.py --hf path/to/llama-folder --data texts.txt --max-drop 1%

The same as `quantbalance search --hf ... --data ... --max-drop 1%`, in Python: the model is
loaded by its architecture (config.json), the text file gives one sample a line, and the budget
protects perplexity on held-out lines the search never saw.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import quantbalance as qb
from quantbalance.search.holdout import split_eval


def main(argv: list[str] | None = None) -> qb.SearchResult:
    """Search, print the result, write the Plan.

    Args:
        argv: command-line arguments (default ``sys.argv[1:]``).

    Returns:
        The search result.
    """
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hf", required=True, help="model folder or cached hub id")
    ap.add_argument("--data", required=True, help="text file, one sample a line")
    ap.add_argument("--max-drop", type=float, default=1.0, help="percent of perplexity")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--out", type=Path, default=Path("out/hf-causal-lm"))
    ap.add_argument("--cache-dir", default="default", help="measurement cache folder")
    args = ap.parse_args(argv)

    llm = qb.from_pretrained(args.hf)  # AutoModelForCausalLM + its tokenizer; never downloads
    task = qb.tasks.from_model(llm, args.data, seq_len=args.seq_len)  # metric: perplexity
    half = task.n_eval_samples // 2
    split = split_eval(task, half, task.n_eval_samples - half)  # search half / held-out half
    res = qb.search(
        task.model,
        split.search,
        qb.Budget(max_drop=args.max_drop / 100, relative=True),
        holdout=split.holdout,
        cache_dir=args.cache_dir,
    )
    print(res.message)
    for name, spec in res.plan.layers.items():
        print(f"  {name}: {spec.weight if spec is not None else 'float'}")
    args.out.mkdir(parents=True, exist_ok=True)
    res.plan.save(args.out / "plan.json")
    return res


if __name__ == "__main__":
    main()
