"""Build the two built-in genomes shipped in indexer/data/genomes/ (run once, by hand).

    python scripts/make_genomes.py ANCHORS_DIR

`math`: 128 of the 4096 open-web-math prefixes of the PhyloLM paper's hyper-parameter study
(ANCHORS_DIR/phylolm/math_params_genes_4096.json), drawn without replacement with a fixed
seed. `code`: 128 prefixes of permissively licensed source code found in the build
environment (CPython's standard library, NumPy's C headers, PyTorch's C++ headers, SciPy's
Cython, npm's MIT/ISC JavaScript dependencies), each starting at a code line and cut at a
random length of 20-99 characters, as the math genes are. Both are deterministic given
the same inputs; each gene records where it came from and under which licence.
"""
from __future__ import annotations

import json
import random
import sys
import sysconfig
from pathlib import Path

import numpy as np

SEED = 20240601
OUT = Path(__file__).resolve().parents[1] / "indexer" / "data" / "genomes"


def write(name: str, header: dict, genes: list[dict]) -> None:
    lines = [json.dumps(header, ensure_ascii=False)] + [json.dumps(g, ensure_ascii=False) for g in genes]
    (OUT / f"{name}.jsonl").write_text("\n".join(lines) + "\n", "utf-8")


def make_math(anchors: Path) -> None:
    pool = json.loads((anchors / "phylolm" / "math_params_genes_4096.json").read_text("utf-8"))
    idx = np.random.default_rng(SEED).choice(len(pool), size=128, replace=False)
    genes = [{"text": pool[i], "origin": f"math_params_genes_4096[{int(i)}]"} for i in idx]
    write("math", {"genome": "math", "license": "ODC-By-1.0",
                   "source": "open-web-math prefixes (proof-pile-2 test split) from the PhyloLM paper's "
                             "gene pool, 128 drawn with seed %d" % SEED}, genes)


def _code_lines(path: Path, comment: tuple[str, ...]) -> list[int]:
    try:
        text = path.read_text("utf-8")
    except (UnicodeDecodeError, OSError):
        return []
    starts, pos = [], 0
    for line in text.splitlines(keepends=True):
        s = line.strip()
        if s and not s.startswith(comment) and len(s) > 8 and "copyright" not in s.lower() \
                and "license" not in s.lower():
            starts.append(pos)
        pos += len(line)
    return starts


def _js_files(root: Path) -> list[tuple[Path, str]]:
    out = []
    for pkg in sorted(root.rglob("package.json")):
        try:
            lic = json.loads(pkg.read_text("utf-8")).get("license")
        except (ValueError, OSError):
            continue
        if lic in ("MIT", "ISC", "BSD-2-Clause", "BSD-3-Clause", "Apache-2.0"):
            out += [(f, lic) for f in sorted(pkg.parent.glob("lib/*.js"))]
    return out


def make_code() -> None:
    site = Path(sysconfig.get_paths()["purelib"])
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    groups = [  # (language, files with licence, comment prefixes, how many genes)
        ("python", [(f, "PSF-2.0") for f in sorted(stdlib.glob("*.py"))], ("#", '"""', "'''"), 32),
        ("c", [(f, "BSD-3-Clause") for f in sorted((site / "numpy/_core/include/numpy").glob("*.h"))],
         ("/*", "*", "//", "#include"), 24),
        ("c++", [(f, "BSD-3-Clause") for f in sorted((site / "torch/include/c10/util").glob("*.h"))],
         ("/*", "*", "//", "#include", "#pragma"), 24),
        ("cython", [(f, "BSD-3-Clause") for f in sorted(site.glob("scipy/**/*.pyx"))], ("#",), 24),
        ("javascript", _js_files(Path("/usr/lib/node_modules/npm/node_modules")), ("/*", "*", "//"), 24),
    ]
    rng = random.Random(SEED)
    genes = []
    for lang, files, comment, n in groups:
        if not files:
            raise SystemExit(f"no {lang} sources found")
        got = 0
        while got < n:
            path, lic = rng.choice(files)
            starts = _code_lines(path, comment)
            if not starts:
                continue
            text = path.read_text("utf-8")
            start = rng.choice(starts)
            length = rng.randint(20, 99)
            gene = text[start:start + length]
            if len(gene) < 20 or gene in (g["text"] for g in genes):
                continue
            rel = path.name if lang != "javascript" else "/".join(path.parts[-3:])
            genes.append({"text": gene, "language": lang, "origin": rel, "license": lic})
            got += 1
    write("code", {"genome": "code", "license": "permissive (per gene: PSF-2.0, BSD-3-Clause, MIT, ISC)",
                   "source": "prefixes of permissively licensed source code (Python, C, C++, Cython, "
                             "JavaScript) starting at code lines, cut at 20-99 characters, seed %d" % SEED},
          genes)


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    make_math(Path(sys.argv[1]))
    make_code()
