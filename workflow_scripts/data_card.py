"""Data card: question + instruction tokens per task (the prompt without its context), like paper Table 2.

    python -m workflow_scripts.data_card --tokenizer DIR --md card.md --parquet card.parquet samples.parquet ...

For every sample the context body (between ``<context>\\n`` and ``\\n</context>``) is cut out of the stored
final prompt and the rest — chat template, task intro, question(s) before and after the context,
instructions, ``<context>`` tags — is counted with the tokenizer (``add_special_tokens=False``). Rows are
grouped by (task, prompt mode): mean / min / max tokens, number of samples and the lengths they came from.
The task, length and mode of a sample file are read from the ``spec`` metadata that ``make_data`` writes
(falling back to ``task=`` / ``length=`` / ``mode=`` path components).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

OPEN, CLOSE = "<context>\n", "\n</context>"
COLUMNS = ["task", "mode", "samples", "lengths", "mean_tokens", "min_tokens", "max_tokens"]


def strip_context(prompt: str) -> str:
    """The prompt with the body of its ``<context>`` block removed (tags kept)."""
    a = prompt.find(OPEN)
    b = prompt.rfind(CLOSE)
    if a < 0 or b < a + len(OPEN):
        raise ValueError("prompt has no <context> block")
    return prompt[: a + len(OPEN)] + prompt[b:]


def overhead_tokens(prompts: list[str], tokenizer) -> list[int]:
    """Tokens of each prompt without its context."""
    texts = [strip_context(p) for p in prompts]
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def _file_keys(path: str) -> dict:
    from .io import read_metadata

    keys: dict = {}
    try:
        spec = read_metadata(path).get("spec", {})
    except Exception:  # noqa: BLE001 - not written by make_data: rely on the path
        spec = {}
    for k in ("task", "length", "mode"):
        if k in spec:
            keys[k] = spec[k]
        else:
            m = re.search(rf"(?:^|/){k}=([^/]+)", str(path))
            keys[k] = m.group(1) if m else "?"
    keys["length"] = int(keys["length"]) if str(keys["length"]).isdigit() else keys["length"]
    return keys


def _length_key(x):
    return (isinstance(x, str), str(x).zfill(12))     # numeric order, unknown ("?") last


def card_rows(sample_parquet_paths: list[str], tokenizer) -> list[dict]:
    """One row per (task, mode): mean/min/max question+instruction tokens over all samples of the files."""
    import pyarrow.parquet as pq

    groups: dict[tuple[str, str], dict] = {}
    for path in sample_parquet_paths:
        keys = _file_keys(path)
        prompts = pq.read_table(path, columns=["prompt"]).column("prompt").to_pylist()
        g = groups.setdefault((keys["task"], keys["mode"]), {"tokens": [], "lengths": set()})
        g["tokens"] += overhead_tokens(prompts, tokenizer)
        g["lengths"].add(keys["length"])
    rows = []
    for (task, mode), g in sorted(groups.items()):
        t = g["tokens"]
        rows.append({
            "task": task, "mode": mode, "samples": len(t),
            "lengths": ",".join(str(x) for x in sorted(g["lengths"], key=_length_key)),
            "mean_tokens": round(sum(t) / len(t), 1) if t else float("nan"),
            "min_tokens": min(t) if t else -1, "max_tokens": max(t) if t else -1,
        })
    return rows


def markdown(rows: list[dict]) -> str:
    out = ["| task | mode | question + instruction tokens, mean [min–max] | samples | lengths |",
           "|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['task']} | {r['mode']} | {r['mean_tokens']:.1f} [{r['min_tokens']}–{r['max_tokens']}] "
                   f"| {r['samples']} | {r['lengths']} |")
    return "\n".join(out) + "\n"


def data_card(sample_parquet_paths: list[str], tokenizer_path: str, out_md: str, out_parquet: str) -> list[dict]:
    """Write the data card of the given sample files as markdown and parquet; returns the rows."""
    import pyarrow as pa
    from transformers import AutoTokenizer

    from .io import atomic_path, write_parquet

    tok = AutoTokenizer.from_pretrained(tokenizer_path)
    rows = card_rows(list(sample_parquet_paths), tok)
    table = pa.Table.from_pylist(rows, schema=pa.schema([
        ("task", pa.string()), ("mode", pa.string()), ("samples", pa.int64()), ("lengths", pa.string()),
        ("mean_tokens", pa.float64()), ("min_tokens", pa.int64()), ("max_tokens", pa.int64())]))
    write_parquet(table, out_parquet, {"tokenizer": str(tokenizer_path)})
    header = ("# Data card: question + instruction tokens per task\n\n"
              f"Tokenizer: `{tokenizer_path}`. Tokens of each final prompt without its context body "
              "(chat template included), over all samples of the listed files.\n\n")
    with atomic_path(out_md) as tmp:
        Path(tmp).write_text(header + markdown(rows), encoding="utf-8")
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--md", required=True)
    ap.add_argument("--parquet", required=True)
    ap.add_argument("samples", nargs="+")
    a = ap.parse_args(argv)
    rows = data_card(a.samples, a.tokenizer, a.md, a.parquet)
    print(markdown(rows))


if __name__ == "__main__":
    main()
