"""Every repository path that a document, a config comment, a script or the package's source cites
exists, and nothing cites the development-only notes (kept outside the repository) a user never has.

A cited path is a token that starts with a top-level directory of the repository (configs/, docs/,
vitpose_scale/, ...) or is README.md / REPRODUCE.md. Package-relative spellings (`models/pose.py`,
`engine/parallel.py`, `data/coco.py`) are read as vitpose_scale/...; brace lists
(`configs/vitpose_{s,b}_256x192.yaml`) are expanded and globs (`configs/mae_*.yaml`) must match a file.
"""
from __future__ import annotations

import functools
import itertools
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "vitpose_scale"

# Directories that hold no cited files of their own (build products and caches).
NOT_CITABLE_DIRS = {"__pycache__", "vitpose_scale.egg-info", "build", "dist"}
# Package sub-packages: `models/pose.py` in the package's own text means vitpose_scale/models/pose.py.
PACKAGE_DIRS = sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and not p.name.startswith("__"))

# Paths that are cited but are not files of the repository, each with why.
ALLOWED_PREFIXES = {
    "runs/": "training, evaluation and benchmark outputs: every run writes its own directory",
    ".venv": "the virtual environment scripts/setup.sh creates",
    ".cache/": "the extension and build cache scripts/env.sh points to",
    ".mutation/": "mutation-testing work directories scripts/mutation.sh creates (gitignored)",
    # data/coco_sample (bundled) and the package's data/*.py are checked, see _allowed
    "data/": "data sets the user downloads (COCO, AIC, MPII, ...: REPRODUCE.md step 1) and synthetic "
             "sets generated on first use (data.kind: synthetic, make-synthetic)",
    "configs/_base_/": "the official ViTPose repository's dataset-info files, cited as such",
    "configs/body/": "the official ViTPose repository's training configs, cited as such",
    "configs/X.yaml": "a placeholder in launch/train.py's usage lines",
    "configs/other.yaml": "a placeholder in the slurm/*.sh usage lines",
    "vitpose_scale/heartbeat/": "a key in the process group's store (engine/watchdog.py), not a file",
    "bench/window_attention_gpu.json": "written by the GPU run of bench/window_attention.py (not run yet)",
    "bench/attention_": "bench/attention_<gpu>.json: written by bench/attention.py on a GPU (not run yet)",
    "bench/gpu_suite_": "written by bench/gpu_suite.py on a GPU (not run yet)",
}

EXTENSIONS = ("md", "py", "yaml", "yml", "sh", "json", "c", "txt", "ini", "cfg", "pth", "jpg", "png")


def _sources() -> list[Path]:
    files = [ROOT / "README.md", ROOT / "REPRODUCE.md", ROOT / "bench" / "README.md"]
    files += sorted((ROOT / "docs").glob("*.md"))
    files += sorted((ROOT / "configs").rglob("*.yaml"))
    files += sorted((ROOT / "scripts").glob("*.sh")) + sorted((ROOT / "slurm").glob("*.sh"))
    for folder in ("vitpose_scale", "launch", "bench"):
        files += sorted(p for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts)
    return [f for f in files if f.is_file()]


def _text(path: Path) -> str:
    """What a file cites: configs only in their comments, everything else in full."""
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml"):
        return "\n".join(line.split("#", 1)[1] if "#" in line else "" for line in text.splitlines())
    return text


@functools.lru_cache(maxsize=1)
def _top_dirs() -> frozenset[str]:
    """The repository's top-level directories, and those a checkout gains by running it (allowed above)."""
    tops = {p.name for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith(".")} - NOT_CITABLE_DIRS
    return frozenset(tops | {"runs", ".ci", ".venv", ".cache", ".mutation"})


def _pattern() -> re.Pattern:
    heads = "|".join(re.escape(d) for d in sorted(_top_dirs() | set(PACKAGE_DIRS), key=len, reverse=True))
    # Not preceded by a path or word character: github.com/ORG/REPO/configs/... is another repository's.
    return re.compile(rf"(?<![\w./\-~$])(README\.md|REPRODUCE\.md|(?:{heads})/[\w.{{}},*+\-/]*)")


def _expand(token: str) -> list[str]:
    """`a{x,y}b` -> [axb, ayb] (nested lists are not used in the docs)."""
    parts = re.split(r"(\{[^{}]*\})", token)
    choices = [p[1:-1].split(",") if p.startswith("{") and p.endswith("}") else [p] for p in parts]
    return ["".join(c) for c in itertools.product(*choices)]


def _pieces(token: str) -> list[str]:
    """The token cut at a closing brace it did not open (`{root: data/coco}`) and split at commas
    outside brace lists (`tests/a.py,-k,lr`)."""
    out, depth, current = [], 0, ""
    for ch in token:
        if ch == "}" and depth == 0:
            break
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            out.append(current)
            current = ""
        else:
            current += ch
    out.append(current)
    return out


def _clean(token: str) -> str | None:
    token = token.rstrip(".,:;")
    if token.count("{") != token.count("}"):  # a brace list cut short: keep what precedes it
        token = token[:token.find("{")]
    if not token or token.rstrip("/") in _top_dirs() | set(PACKAGE_DIRS):
        return None
    last = token.rstrip("/").rsplit("/", 1)[-1]
    is_file = "." in last and last.rsplit(".", 1)[-1].rstrip("*") in EXTENSIONS
    head = token.split("/", 1)[0]
    if not (is_file or token.endswith("/")) and (head not in _top_dirs() or head == "vitpose_scale"):
        return None  # `eval/AP`, `vitpose_scale/failed_rank`: metric names and store keys, not files
    return token


def _exists(candidate: str) -> bool:
    for base in (ROOT, PACKAGE):
        if any(ch in candidate for ch in "*?"):
            if list(base.glob(candidate.rstrip("/"))):
                return True
        elif (base / candidate).exists():
            return True
    return False


def _allowed(path: str) -> bool:
    if path.startswith("data/") and (path.startswith("data/coco_sample") or path.endswith((".py", ".c"))):
        return False  # the bundled sample and the package's own data/ modules must exist
    return any(path.startswith(prefix) for prefix in ALLOWED_PREFIXES)


def cited_paths(sources: list[Path] | None = None) -> list[tuple[str, int, str]]:
    """(file, line, path) for every cited repository path."""
    pattern, out = _pattern(), []
    for source in _sources() if sources is None else sources:
        name = str(source.relative_to(ROOT)) if source.is_relative_to(ROOT) else str(source)
        for number, line in enumerate(_text(source).splitlines(), 1):
            for match in pattern.finditer(line):
                for piece in _pieces(match.group(1)):
                    token = _clean(piece) if pattern.fullmatch(piece) else None
                    for path in _expand(token) if token else []:
                        out.append((name, number, path))
    return out


def missing_paths(sources: list[Path] | None = None) -> list[str]:
    return [f"{where}:{line}: {path}" for where, line, path in cited_paths(sources)
            if not _allowed(path) and not _exists(path)]


def test_every_cited_path_exists():
    """README.md, REPRODUCE.md, docs/, bench/README.md, config comments, scripts/, slurm/ and the .py
    files of vitpose_scale/, launch/ and bench/ cite only paths that exist (or are allowed above)."""
    cited = cited_paths()
    assert len(cited) > 300  # the scan finds the citations (a broken pattern would find none)
    missing = missing_paths()
    assert not missing, "paths cited but not in the repository:\n" + "\n".join(missing)


def test_a_made_up_path_is_reported(tmp_path):
    """The scan on a page of its own: made-up paths are reported, outputs, metric names and other
    repositories' paths are not."""
    doc = tmp_path / "page.md"
    doc.write_text("See docs/no_such_page.md, `configs/vitpose_{b,zz}_256x192.yaml` and models/pose.py;\n"
                   "outputs: runs/demo/best.pth; metric names: eval/AP, train/loss;\n"
                   "a glob: vitpose_scale/keypoints/sets/*.json.\n"
                   "Another repository's: github.com/ViTAE-Transformer/ViTPose/configs/x.py\n")
    assert [p for _, _, p in cited_paths([doc])] == [
        "docs/no_such_page.md", "configs/vitpose_b_256x192.yaml", "configs/vitpose_zz_256x192.yaml",
        "models/pose.py", "runs/demo/best.pth", "vitpose_scale/keypoints/sets/*.json"]
    assert missing_paths([doc]) == [f"{doc}:1: docs/no_such_page.md", f"{doc}:1: configs/vitpose_zz_256x192.yaml"]


def test_every_cited_test_function_exists():
    """`tests/test_x.py::test_name` citations name a test that is there."""
    cited = re.compile(r"(tests/test_\w+\.py)::(\w+)")
    missing = []
    for source in _sources():
        for number, line in enumerate(_text(source).splitlines(), 1):
            for path, name in cited.findall(line):
                target = ROOT / path
                if not target.is_file() or not re.search(rf"^\s*def {name}\b", target.read_text(), re.M):
                    missing.append(f"{source.relative_to(ROOT)}:{number}: {path}::{name}")
    assert not missing, "tests cited but not found:\n" + "\n".join(missing)


def test_nothing_cites_the_development_notes():
    """docs/reference.md holds the published facts with their sources; the notes they came from are
    not part of the repository."""
    files = _sources() + sorted((ROOT / "tests").glob("*.py"))
    this = Path(__file__).resolve()
    # The notes' file and folder names, assembled so that this file does not cite them itself.
    notes, folder = "REFERENCE", "shared"
    bad = re.compile(rf"{notes}(\.md|\s*§)|\.\./{folder}\b|/work/{folder}\b")
    hits = [f"{f.relative_to(ROOT)}:{n}: {line.strip()}"
            for f in files if f.resolve() != this
            for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1) if bad.search(line)]
    assert not hits, "cite docs/reference.md instead:\n" + "\n".join(hits)


def test_every_file_function_the_architecture_guide_names_is_defined_there():
    """docs/architecture.md walks the code as `file.py:function` (or a class, `Class.method`, a constant):
    each name must still be defined in that file, or the guide leads the next engineer astray."""
    import ast

    text = (ROOT / "docs" / "architecture.md").read_text()
    cited = set(re.findall(r"`?((?:[a-z_]+/)*[a-z_]+\.py):([A-Za-z_][A-Za-z_0-9.]*)", text))
    assert len(cited) > 20  # the guide does cite this way
    missing = []
    for rel, name in sorted(cited):
        path = ROOT / rel if (ROOT / rel).is_file() else PACKAGE / rel
        assert path.is_file(), f"docs/architecture.md cites {rel}, which does not exist"
        tree = ast.parse(path.read_text())
        defined = {t.id for node in tree.body if isinstance(node, (ast.Assign, ast.AnnAssign))
                   for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
                   if isinstance(t, ast.Name)}  # module constants (BACKBONES, KEYPOINT_MAPS)
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
                defined.add(node.name)
                if isinstance(node, ast.ClassDef):
                    defined |= {f"{node.name}.{m.name}" for m in node.body if isinstance(m, ast.FunctionDef)}
        if name.rstrip(".") not in defined:
            missing.append(f"{rel}:{name}")
    assert not missing, f"docs/architecture.md names functions that are not there: {missing}"
