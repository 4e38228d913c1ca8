"""Rules of the code base that a reviewer would otherwise check by hand."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: Modules allowed to touch process environment variables, and why.
ENVIRONMENT_READERS = {
    "dlmbench/cli.py": "the CLI entry: turns the operator's variables into a RunContext",
    "dlmbench/environment.py": "parses the user's HF_* switches (hub_offline), once",
    "dlmbench/distributed.py": "torchrun's contract: WORLD_SIZE, RANK and LOCAL_RANK",
    "dlmbench/tasks/sword.py": "SWORD_PATH, the SWORD library's own setting for where modules live",
}


def tracked(*patterns: str) -> list[Path]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", *patterns],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [ROOT / line for line in out.splitlines() if (ROOT / line).is_file()]


def package_sources() -> list[Path]:
    return [p for p in tracked("dlmbench/*.py", "plugins/*.py") if "/tests/" not in p.as_posix()]


def test_no_module_reads_or_writes_process_variables_for_run_state():
    pattern = re.compile(r"os\.environ|os\.getenv|os\.putenv|getenv\(")
    offenders = []
    for path in package_sources():
        rel = path.relative_to(ROOT).as_posix()
        if rel in ENVIRONMENT_READERS:
            continue
        offenders += [f"{rel}:{i}: {line.strip()}" for i, line in enumerate(path.read_text().splitlines(), 1)
                      if pattern.search(line)]
    assert not offenders, "pass run state in the RunContext instead:\n" + "\n".join(offenders)


def test_long_files_in_the_core_say_why_at_their_top():
    """Past ~400 lines a file usually hides a second concept; one that does not says so."""
    unexplained = []
    for path in tracked("dlmbench/*.py"):
        lines = path.read_text().splitlines()
        if len(lines) > 420 and "lines because" not in "\n".join(lines[:30]):
            unexplained.append(f"{path.relative_to(ROOT)} ({len(lines)} lines)")
    assert not unexplained, "split these, or state the reason ('... lines because ...') at the top: " + \
        ", ".join(unexplained)


def test_no_citation_of_a_document_outside_the_repository():
    briefs = ["elf", "mdlm_duo", "anchors_style", "feasibility", "evaluators"]  # the briefs outside the repo
    pattern = re.compile("|".join([r"shared/" + "reference", "/work/"] + [rf"\b{b}\.md\b" for b in briefs]))
    hits = []
    for path in tracked():
        if path.suffix in {".png", ".safetensors", ".bin", ".pt"} or path == Path(__file__).resolve():
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        hits += [f"{path.relative_to(ROOT)}:{i}" for i, line in enumerate(text.splitlines(), 1) if pattern.search(line)]
    assert not hits, "cite the paper (section, table, equation) or upstream file@commit instead: " + ", ".join(hits)


def test_the_public_names_the_plugin_guide_lists_exist():
    import dlmbench

    readme = (ROOT / "README.md").read_text()
    bullet = readme[readme.index("- **Public names.**"): readme.index("- **Mistakes are named.**")]
    names = [n for n in re.findall(r"`([\w.]+)`", bullet) if "." not in n and n != "dlmbench"]
    assert len(names) > 15
    missing = [n for n in names if not hasattr(dlmbench, n)]
    assert not missing, f"README lists names dlmbench does not export: {missing}"
