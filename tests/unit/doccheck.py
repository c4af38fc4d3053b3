"""What keeps the documentation from rotting: every rule here reads files and reports problems.

The docs name files, modules and tests, and the architecture validation cites the test
behind every verdict. When code moves, those names go stale silently unless something
checks them. `tests/unit/test_docs.py` runs these checks on the repository; they are also
run on small made-up repositories there, so each rule is shown to catch what it claims.

Rules, for every markdown file (README.md, docs/**):

- a relative link (`[text](path#anchor)`) names a file or folder inside the repository,
  and an anchor names a heading of the target (GitHub's heading slugs);
- nothing cites material outside the repository (`../shared/`, the design file, notes);
- a code span that names a repository path (`controller/...`, `tests/...`, a glob) or a
  module (`controller.policy.plan.plan`) names something that exists;
- a code span `tests/x.py::test_y` (or `tests/x.py::Class::test_y`, parametrised ids
  allowed) names a test function that exists and is not skipped or expected to fail
  unconditionally.

For `docs/architecture/validation.md`: every numbered `## N. Title` section is a decision
with its parts, exactly one verdict from the allowed set and at least one test; verdicts
that defer something link to the backlog. For `docs/architecture/backlog.md`: every
entry has a severity, an effort and the reason it is deferred.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VALIDATION = Path("docs/architecture/validation.md")
BACKLOG = Path("docs/architecture/backlog.md")

VERDICTS = ("pass", "pass with caveats", "fail → fixed", "fail → deferred")
DEFERRING = ("pass with caveats", "fail → deferred")
DECISION_PARTS = (
    "**DS01.**",
    "**Slurm.**",
    "**Kubernetes.**",
    "**HPC sites.**",
    "**Ours.**",
    "**Verdict:**",
    "**Tests:**",
)
SEVERITIES = ("critical", "high", "medium", "low")
EFFORTS = ("S", "M", "L")

SKIPPED_DIRS = frozenset({"node_modules", "__pycache__", "build", "dist"})
TOP_LEVEL = (
    "controller",
    "tests",
    "docs",
    "manifests",
    "deploy",
    "crds",
    "tools",
    "benchmarks",
    "scripts",
    ".ci",
)

LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
REPO_PATH = re.compile(rf"^(?:{'|'.join(re.escape(t) for t in TOP_LEVEL)})/[\w./*@+-]*$")
MODULE = re.compile(r"^controller(?:\.[A-Za-z_]\w*)+$")
TEST_ID = re.compile(r"^(tests/[\w/]+\.py)::((?:[A-Za-z_]\w*::)?[A-Za-z_]\w*)(\[[^\]]*\])?$")
OUTSIDE = (
    (re.compile(r"\.\./shared\b|\bshared/(?:notes|seeds)\b"), "cites ../shared/, outside the repo"),
    (re.compile(r"\bDESIGN(?:\.md)?\b"), "cites the design file, which is not in the repository"),
    (
        re.compile(r"(?<![\w./-])notes/[\w.-]+"),
        "cites a notes/ file, which is not in the repository",
    ),
    (re.compile(r"(?<![\w.-])/work/"), "cites a machine-specific path"),
)
SKIP_MARK = re.compile(r"(?:^|\.)mark\.(?:skip|xfail)\b(?!if)")
SKIPIF_TRUE = re.compile(r"(?:^|\.)mark\.(?:skipif|xfail)\(\s*(?:True|1|condition=True)\b")
BARE_SKIP = re.compile(r"(?:^|\.)(?:skip|xfail|fail)$")


@dataclass(frozen=True)
class Problem:
    """One thing wrong in one file, with the line a reader should look at."""

    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


def markdown_files(root: Path = ROOT) -> list[Path]:
    """Every markdown file of the repository (hidden folders, caches and builds left out)."""
    found = []
    for path in sorted(root.rglob("*.md")):
        parts = path.relative_to(root).parts[:-1]
        if any(p.startswith(".") or p in SKIPPED_DIRS or p.endswith(".egg-info") for p in parts):
            continue
        found.append(path)
    return found


def prose(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line) for every line outside fenced code blocks."""
    fence: str | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.lstrip()
        marker = stripped[:3]
        if marker in ("```", "~~~"):
            if fence is None:
                fence = marker
                continue
            if marker == fence:
                fence = None
                continue
        if fence is None:
            yield number, line


def code_spans(line: str) -> list[str]:
    return [m.group(2).strip() for m in CODE_SPAN.finditer(line)]


def without_code(line: str) -> str:
    return CODE_SPAN.sub("", line)


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as dashes."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = text.replace("`", "").replace("*", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every heading anchor of a markdown text, repeated headings numbered as GitHub does."""
    seen: dict[str, int] = {}
    found = set()
    for _, line in prose(text):
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        base = slug(match.group(1))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def _inside(root: Path, path: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


def check_links(root: Path, path: Path) -> list[Problem]:
    """Relative links must name files or folders inside the repository, anchors headings."""
    problems = []
    rel = str(path.relative_to(root))
    text = path.read_text(encoding="utf-8")
    for number, line in prose(text):
        plain = without_code(line)
        targets = [m.group(1) for m in LINK.finditer(plain)]
        targets += [m.group(1) for m in REFERENCE.finditer(plain)]
        for target in targets:
            if SCHEME.match(target) or target.startswith("//"):
                continue
            file_part, _, anchor = target.partition("#")
            file_part = file_part.split("?", 1)[0]
            destination = (path.parent / file_part) if file_part else path
            if file_part.startswith("/") or not _inside(root, destination):
                problems.append(Problem(rel, number, f"link {target!r} leaves the repository"))
            elif not destination.exists():
                problems.append(Problem(rel, number, f"link {target!r}: no such file"))
            elif (
                anchor
                and destination.suffix == ".md"
                and destination.is_file()
                and anchor not in anchors(destination.read_text(encoding="utf-8"))
            ):
                problems.append(
                    Problem(rel, number, f"link {target!r}: no heading with that anchor")
                )
    return problems


def check_outside_citations(root: Path, path: Path) -> list[Problem]:
    """Nothing may send a reader to material that is not in the repository."""
    rel = str(path.relative_to(root))
    return [
        Problem(rel, number, f"{why}: {match.group(0)!r}")
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        for pattern, why in OUTSIDE
        for match in pattern.finditer(line)
    ]


def _defined_names(tree: ast.Module) -> dict[str, ast.AST]:
    names: dict[str, ast.AST] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names[node.name] = node
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name):
                    names[target.id] = node
        elif isinstance(node, ast.ImportFrom | ast.Import):
            for alias in node.names:
                names[(alias.asname or alias.name).split(".")[0]] = node
    return names


def resolve_module(root: Path, dotted: str) -> str | None:
    """None when `dotted` names a module of the repository or something it defines."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        base = root.joinpath(*parts[:cut])
        source = (
            base.with_suffix(".py") if base.with_suffix(".py").is_file() else base / "__init__.py"
        )
        if not source.is_file():
            continue
        rest = parts[cut:]
        if not rest:
            return None
        names = _defined_names(ast.parse(source.read_text(encoding="utf-8")))
        node = names.get(rest[0])
        if node is None:
            return f"{dotted}: {'.'.join(parts[:cut])} defines no {rest[0]}"
        if len(rest) > 1 and isinstance(node, ast.ClassDef):
            members = {
                n.name
                for n in node.body
                if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
            } | {
                t.id
                for n in node.body
                if isinstance(n, ast.AnnAssign | ast.Assign)
                for t in (n.targets if isinstance(n, ast.Assign) else [n.target])
                if isinstance(t, ast.Name)
            }
            if rest[1] not in members:
                return f"{dotted}: {rest[0]} has no member {rest[1]}"
        return None
    return f"{dotted}: no such module"


def _marks(decorators: list[ast.expr]) -> str | None:
    for decorator in decorators:
        text = ast.unparse(decorator)
        if SKIP_MARK.search(text) or SKIPIF_TRUE.search(text):
            return text
    return None


def _module_marks(tree: ast.Module) -> str | None:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets
        ):
            values = (
                node.value.elts if isinstance(node.value, ast.List | ast.Tuple) else [node.value]
            )
            found = _marks(list(values))
            if found:
                return found
    return None


def _skips_first(function: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """True when the body's first statement (after a docstring) skips or fails the test."""
    body = list(function.body)
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    if not body or not isinstance(body[0], ast.Expr) or not isinstance(body[0].value, ast.Call):
        return False
    name = ast.unparse(body[0].value.func)
    return bool(BARE_SKIP.search(name)) and name.split(".")[0] in ("pytest", "skip", "xfail")


def resolve_test(root: Path, reference: str) -> str | None:
    """None when `reference` names a test that exists and can run; else why not."""
    match = TEST_ID.match(reference)
    if not match:
        return f"{reference}: not of the form tests/path.py::test_name"
    file, name, _params = match.groups()
    source = root / file
    if not source.is_file():
        return f"{reference}: no file {file}"
    tree = ast.parse(source.read_text(encoding="utf-8"))
    owner, _, function_name = name.rpartition("::")
    scope: list[ast.stmt] = tree.body
    class_marks = None
    if owner:
        classes = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == owner]
        if not classes:
            return f"{reference}: no class {owner} in {file}"
        scope = classes[0].body
        class_marks = _marks(classes[0].decorator_list)
    functions = [
        n
        for n in scope
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name == function_name
    ]
    if not functions:
        return f"{reference}: no test function {function_name} in {file}"
    if not function_name.startswith("test"):
        return f"{reference}: {function_name} is not a test (pytest collects test_* only)"
    function = functions[-1]
    skipped = _module_marks(tree) or class_marks or _marks(function.decorator_list)
    if skipped:
        return f"{reference}: marked {skipped}, so it proves nothing"
    if _skips_first(function):
        return f"{reference}: skips or fails unconditionally at its first statement"
    return None


def check_code_names(root: Path, path: Path) -> list[Problem]:
    """Code spans that name repository paths, modules or tests must name something real."""
    problems = []
    rel = str(path.relative_to(root))
    for number, line in prose(path.read_text(encoding="utf-8")):
        for raw in code_spans(line):
            span = raw.rstrip(".,;:")
            why: str | None = None
            if span.startswith("tests/") and "::" in span:
                why = resolve_test(root, span)
            elif REPO_PATH.match(span):
                if "*" in span:
                    why = None if any(root.glob(span)) else f"{span}: matches no file"
                elif not (root / span).exists():
                    why = f"{span}: no such file or folder"
            elif MODULE.match(span):
                why = resolve_module(root, span)
            if why:
                problems.append(Problem(rel, number, why))
    return problems


@dataclass(frozen=True)
class Section:
    """A level-2 or level-3 section: its heading, where it starts, and its lines."""

    heading: str
    line: int
    body: tuple[str, ...]


HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*$")


def sections(text: str, level: int) -> list[Section]:
    """Sections at `level`; a heading above that level ends the section before it."""
    found: list[Section] = []
    current: tuple[str, int, list[str]] | None = None
    for number, line in prose(text):
        match = HEADING.match(line)
        depth = len(match.group(1)) if match else 0
        if match and depth <= level:
            if current:
                found.append(Section(current[0], current[1], tuple(current[2])))
            current = (match.group(2), number, []) if depth == level else None
        elif current:
            current[2].append(line)
    if current:
        found.append(Section(current[0], current[1], tuple(current[2])))
    return found


DECISION = re.compile(r"^(\d+)\.\s+\S")
VERDICT_LINE = re.compile(r"^\*\*Verdict:\*\*\s+`([^`]+)`")


def decisions(text: str) -> list[Section]:
    """The numbered level-2 sections of the validation: one per design decision."""
    return [s for s in sections(text, 2) if DECISION.match(s.heading)]


def cited_tests(section: Section) -> list[str]:
    return [span for line in section.body for span in code_spans(line) if TEST_ID.match(span)]


def check_validation(root: Path, path: Path) -> list[Problem]:
    """Every decision has its parts, one allowed verdict, tests that run, a backlog link."""
    problems = []
    rel = str(path.relative_to(root))
    found = decisions(path.read_text(encoding="utf-8"))
    if not found:
        problems.append(Problem(rel, 1, "no numbered decision sections (## 1. Title)"))
    for expected, decision in enumerate(found, start=1):
        where = f"decision {decision.heading!r}"
        numbered = DECISION.match(decision.heading)
        if numbered and int(numbered.group(1)) != expected:
            problems.append(Problem(rel, decision.line, f"{where} should be numbered {expected}"))
        text = "\n".join(decision.body)
        for part in DECISION_PARTS:
            if part not in text:
                problems.append(Problem(rel, decision.line, f"{where} lacks its {part} part"))
        verdicts = [m.group(1) for line in decision.body if (m := VERDICT_LINE.match(line))]
        if len(verdicts) != 1:
            problems.append(
                Problem(rel, decision.line, f"{where} has {len(verdicts)} verdict lines, not 1")
            )
        for verdict in verdicts:
            if verdict not in VERDICTS:
                problems.append(
                    Problem(rel, decision.line, f"{where}: verdict {verdict!r} not in {VERDICTS}")
                )
            if verdict in DEFERRING and "](backlog.md#" not in text:
                problems.append(
                    Problem(rel, decision.line, f"{where}: {verdict!r} but no backlog.md link")
                )
        tests = cited_tests(decision)
        if not tests:
            problems.append(Problem(rel, decision.line, f"{where} cites no test"))
        for test in tests:
            why = resolve_test(root, test)
            if why:
                problems.append(Problem(rel, decision.line, why))
    return problems


SEVERITY_LINE = re.compile(r"^\*\*Severity:\*\*\s+`([^`]+)`")
EFFORT_LINE = re.compile(r"^\*\*Effort:\*\*\s+`([^`]+)`\s*[\u2014\u2013-]\s*\S")


def check_backlog(root: Path, path: Path) -> list[Problem]:
    """Every backlog entry (### heading) says how bad it is, how big, and why it waits."""
    problems = []
    rel = str(path.relative_to(root))
    entries = sections(path.read_text(encoding="utf-8"), 3)
    if not entries:
        problems.append(Problem(rel, 1, "no backlog entries (### headings)"))
    for entry in entries:
        where = f"entry {entry.heading!r}"
        severities = [m.group(1) for line in entry.body if (m := SEVERITY_LINE.match(line))]
        if len(severities) != 1 or severities[0] not in SEVERITIES:
            problems.append(
                Problem(rel, entry.line, f"{where}: severity must be one of {SEVERITIES}")
            )
        efforts = [m.group(1) for line in entry.body if (m := EFFORT_LINE.match(line))]
        if len(efforts) != 1 or efforts[0] not in EFFORTS:
            problems.append(
                Problem(
                    rel, entry.line, f"{where}: effort must be one of {EFFORTS} with a sentence"
                )
            )
        if not any(line.startswith("**Why deferred:**") for line in entry.body):
            problems.append(Problem(rel, entry.line, f"{where} does not say why it is deferred"))
    return problems
