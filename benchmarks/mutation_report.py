"""Mutation score of the pure core after `make mutate` (mutmut run + export-cicd-stats) → results/mutation.md.

    .venv/bin/python benchmarks/mutation_report.py [--seconds S]

Reads ``mutants/mutmut-cicd-stats.json`` and every survivor's change, and sorts the survivors by what they
change: the text of a message (only string literals differ, or the changed line is an error, note or progress
bar), which input is refused (the changed line is an ``if`` whose body raises), or a rule of
``mutation_verdicts.toml`` (each written after reading every survivor it matches: why the mutant gives the
same numbers). A survivor no rule explains is listed as *unreviewed*: a test is missing or a rule is.
"""

from __future__ import annotations

import argparse
import collections
import io
import json
import platform
import re
import subprocess
import sys
import tokenize
import tomllib
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MESSAGE_LINE = re.compile(r"raise |Error\(|\) from None$|print\(|file=sys\.stderr|tqdm\(|bar\.update|progress")


def _tokens(line: str) -> list[str] | None:
    """The line's tokens with every string literal as one placeholder; None when it does not tokenize alone."""
    try:
        toks = list(tokenize.generate_tokens(io.StringIO(line.strip() + "\n").readline))
    except (tokenize.TokenError, SyntaxError, IndentationError):
        return None
    strings = {tokenize.STRING, *(getattr(tokenize, n) for n in ("FSTRING_START", "FSTRING_MIDDLE", "FSTRING_END")
                                  if hasattr(tokenize, n))}
    out: list[str] = []
    for t in toks:
        if t.type in (tokenize.NEWLINE, tokenize.NL, tokenize.ENDMARKER, tokenize.INDENT, tokenize.DEDENT):
            continue
        word = "<str>" if t.type in strings else t.string
        if not (word == "<str>" and out and out[-1] == "<str>"):
            out.append(word)
    return out


def _change(diff: str) -> tuple[list[str], list[str], list[str]]:
    """(removed lines, added lines, context lines after the change) of a unified diff."""
    lines = [line for line in diff.splitlines() if not line.startswith(("---", "+++", "@@", "#"))]
    removed = [line[1:] for line in lines if line.startswith("-")]
    added = [line[1:] for line in lines if line.startswith("+")]
    last = max((i for i, line in enumerate(lines) if line[:1] in "-+"), default=-1)
    after = [line[1:] for line in lines[last + 1:] if line.startswith(" ")]
    return removed, added, after


def classify(name: str, diff: str, rules: list[dict]) -> tuple[str, str]:
    """(verdict, why) of one survivor."""
    removed, added, after = _change(diff)
    if len(removed) == 1 and len(added) == 1:
        old, new = _tokens(removed[0]), _tokens(added[0])
        if old is not None and old == new:
            return "message", "only a string literal differs"
    if any(MESSAGE_LINE.search(line) for line in removed):
        return "message", "the changed line is an error, note or progress bar"
    if removed and removed[-1].strip().startswith(("if ", "elif ")) and after and "raise " in after[0]:
        return "refused input", ("the condition of an error: which edge value is refused changes (each read: "
                                 "none lets a bad value through to the numbers)")
    text = f"{name} :: {' / '.join(s.strip() for s in removed)} ⟶ {' / '.join(s.strip() for s in added)}"
    for rule in rules:
        if re.search(rule["match"], text):
            return rule["verdict"], rule["why"]
    return "unreviewed", text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, help="wall time of the mutmut run, to record")
    args = parser.parse_args()
    from mutmut.__main__ import find_mutant, get_diff_for_mutant  # the tool's own diff of a mutant

    stats = json.loads((ROOT / "mutants" / "mutmut-cicd-stats.json").read_text())
    results = subprocess.run([str(Path(sys.executable).parent / "mutmut"), "results"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout
    survivors = [line.split(":")[0].strip() for line in results.splitlines() if line.strip().endswith("survived")]
    rules = tomllib.loads((ROOT / "benchmarks" / "mutation_verdicts.toml").read_text())["rule"]
    verdicts = {n: classify(n, get_diff_for_mutant(n, path=find_mutant(n).path), rules) for n in survivors}
    by_module = collections.Counter(name.rsplit(".", 1)[0].rsplit(".x_", 1)[0] for name in survivors)
    by_verdict = collections.Counter(v for v, _ in verdicts.values())
    why = collections.Counter((v, w) for v, w in verdicts.values() if v != "unreviewed")
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mutmut"]
    judged = stats["killed"] + stats["survived"] + stats["timeout"]
    score = (stats["killed"] + stats["timeout"]) / judged if judged else float("nan")
    unreviewed = sorted((n, w) for n, (v, w) in verdicts.items() if v == "unreviewed")
    lines = [
        "# Mutation score of the pure core (`make mutate`)",
        "",
        f"{date.today().isoformat()}, {platform.processor() or platform.machine()}, mutmut on "
        f"{len(config['source_paths'])} source paths with their fast unit tests"
        + (f", {args.seconds / 60:.1f} min" if args.seconds else "") + ".",
        "",
        "| mutants | killed | survived | timeout (counted as killed) | no tests | score |",
        "|---|---|---|---|---|---|",
        f"| {stats['total']} | {stats['killed']} | {stats['survived']} | {stats['timeout']} | {stats['no_tests']} "
        f"| **{score:.1%}** |",
        "",
        "Modules: " + ", ".join(f"`{p.removeprefix('src/')}`" for p in config["source_paths"]) + ".",
        "",
        "## What the survivors change",
        "",
        "Sorted by `benchmarks/mutation_report.py`; the rules (and why each survivor they match gives the same "
        "numbers) are in `benchmarks/mutation_verdicts.toml`.",
        "",
        "| verdict | survivors |",
        "|---|---|",
        *[f"| {v} | {n} |" for v, n in by_verdict.most_common()],
        "",
        "| verdict | why | survivors |",
        "|---|---|---|",
        *[f"| {v} | {w} | {n} |" for (v, w), n in sorted(why.items(), key=lambda kv: -kv[1])],
        "",
        f"Unreviewed (no rule explains them; each needs a test or a rule): {len(unreviewed)}",
        "",
        *[f"- `{n}`: `{w.split(' :: ', 1)[1]}`" for n, w in unreviewed],
        "",
        "## Survivors by module (`mutmut show <name>` prints one)",
        "",
        *[f"- `{module}`: {n}" for module, n in by_module.most_common()],
        "",
    ]
    out = ROOT / "benchmarks" / "results" / "mutation.md"
    out.write_text("\n".join(lines))
    print("\n".join(lines[6:9]))
    print(f"unreviewed survivors: {len(unreviewed)}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
