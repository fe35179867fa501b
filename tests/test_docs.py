"""The README and docs/ cannot go stale: their tables of options and keys against conf/, their links, anchors and
file names against the tree, every import line of their code blocks run, every Python name they give (``a.b``,
``f(...)``) resolved, and every command they show composed and validated (or its script and flags checked).

All unit tier: pages are parsed, configs composed in this process with Hydra's compose API. Which slow test runs a
README command end to end is ``RUN_END_TO_END`` below, checked to name tests that exist.
"""

from __future__ import annotations

import argparse
import ast
import functools
import importlib
import importlib.util
import inspect
import re
import shlex
import sys
from pathlib import Path

import pytest
import yaml
from helpers import CONF, ROOT, compose_config
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from rsst.config.checks import ConfigError, compose_error, validate_config
from rsst.config.sweeps import job_overrides

README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
EXTENDING = DOCS / "extending.md"  # its commands name the options it adds: tests/test_docs_extending.py
GROUPS = ("dataset", "arch", "struct", "criteria", "schedule", "optimizer", "logger", "experiment", "hparams_search")
PRESETS = ("experiment", "hparams_search")  # groups of whole settings (``@package _global_``), not of one node
LAUNCHERS = ("hydra/launcher", "hydra/sweeper")  # conf/hydra/launcher and conf/hydra/sweeper, plus Hydra's ``basic``
MAX_README_LINES = 200
# Files a page names that a command writes, not files of the repository.
OUTPUT_FILES = {"report.md", "study.md"}
# Paths of an installed wheel, not of the checkout (``pip install .`` ships conf/ as rsst/conf).
INSTALLED_ONLY = {"rsst/conf"}


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


# -- parsing markdown ----------------------------------------------------------------------------------------


def strip_code(text: str) -> str:
    """``text`` without its fenced code blocks (prose and tables only)."""
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def code_blocks(text: str) -> list[tuple[str, str]]:
    """``(language, body)`` of every fenced code block."""
    return [(m[1], m[2]) for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, flags=re.S | re.M)]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {slug(m[1]) for m in re.finditer(r"^#+ (.+)$", strip_code(path.read_text()), flags=re.M)}


def tables(text: str) -> list[list[list[str]]]:
    """Every markdown table as rows of cells (header first, the ``---`` row dropped)."""
    out, rows = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]  # not an escaped \\|
            if not all(re.fullmatch(r":?-+:?", c) for c in cells):
                rows.append(cells)
        elif rows:
            out.append(rows)
            rows = []
    return out


def backticked(text: str) -> list[str]:
    return re.findall(r"`([^`\n]+)`", strip_code(text))


def commands(text: str) -> list[str]:
    """Every command line of the page's ``bash`` blocks, continuation lines joined, comments dropped."""
    out = []
    for lang, body in code_blocks(text):
        if lang != "bash":
            continue
        for line in body.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#\s.*$", "", line).strip()
            if line and not line.startswith("#"):
                out.append(line)
    return out


def launch_args(command: str) -> list[str] | None:
    """The arguments after ``launch.py`` (``python launch.py``, ``.venv/bin/python launch.py``, torchrun), or None."""
    for part in command.split("&&"):
        argv = shlex.split(part)
        if "launch.py" in argv:
            return argv[argv.index("launch.py") + 1 :]
    return None


# -- the config ----------------------------------------------------------------------------------------------


def options(group: str) -> set[str]:
    return {p.stem for p in (CONF / group).glob("*.yaml")}


@functools.cache
def option_keys(group: str) -> frozenset[str]:
    """Every key any option of ``group`` has (its YAML file's keys: the schema has exactly those)."""
    keys = set()
    for path in (CONF / group).glob("*.yaml"):
        keys |= set(yaml.safe_load(path.read_text())) - {"defaults"}
    return frozenset(keys)


@functools.cache
def default_config() -> DictConfig:
    return compose_config([])


@functools.cache
def launcher_keys() -> frozenset[str]:
    """``hydra.*`` keys with the Slurm launcher (it has the local one's keys and more) and the Optuna sweeper."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        overrides = ["hydra/launcher=slurm", "hydra/sweeper=optuna"]
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    flat = OmegaConf.to_container(cfg.hydra, resolve=False)
    return frozenset(_dotted(flat, "hydra"))


def _dotted(node, prefix):
    if isinstance(node, dict):
        for k, v in node.items():
            yield f"{prefix}.{k}"
            yield from _dotted(v, f"{prefix}.{k}")


def key_exists(key: str) -> bool:
    """``key`` (dotted) is a key of the config: a top-level one, or a key of some option of its group."""
    head, _, rest = key.partition(".")
    if head == "hydra":
        return key in launcher_keys()
    if head in GROUPS and head not in PRESETS:
        return rest.split(".")[0] in option_keys(head)
    return OmegaConf.select(default_config(), key, default="<absent>") != "<absent>"


def compose_command(args: list[str], conf: Path = CONF) -> list[DictConfig]:
    """The config of every job ``python launch.py ARGS`` would run (one unless ``-m``), composed as launch.py does."""
    flags = [a for a in args if a.startswith("-")]
    overrides = [a for a in args if not a.startswith("-")]
    assert set(flags) <= {"-m", "--multirun", "--cfg", "--help"}, f"unknown launch.py flags {flags}"
    overrides = [o for o in overrides if o != "job"] if "--cfg" in flags else overrides
    jobs = [overrides]
    if "-m" in flags:
        jobs = job_overrides(OmegaConf.create({"hydra": {"overrides": {"task": overrides}}}))
        assert jobs, f"no jobs in {args}"
    out = []
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        for job in jobs:
            out.append(compose(config_name="config", overrides=job, return_hydra_config=True))
    return out


def check_command(args: list[str], conf: Path = CONF) -> int:
    """Compose and validate every job of ``launch.py ARGS``; the number of jobs."""
    configs = compose_command(args, conf)
    for cfg in configs:
        validate_config(cfg)
    return len(configs)


# -- the README ----------------------------------------------------------------------------------------------


def test_the_readme_is_at_most_200_lines():
    lines = len(README.read_text().splitlines())
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines; at most {MAX_README_LINES}"


def test_the_readme_links_every_docs_page_from_its_contents():
    text = README.read_text()
    contents = text[text.index("## Contents") : text.index("\n## ", text.index("## Contents") + 1)]
    linked = set(re.findall(r"\]\((docs/[\w.-]+\.md)\)", contents))
    pages = {rel(p) for p in DOCS.glob("*.md")}
    assert linked == pages, f"README contents: missing {sorted(pages - linked)}, extra {sorted(linked - pages)}"


def test_the_readme_shows_the_two_fresh_machine_commands():
    text = README.read_text()
    section = text[text.index("## Two commands on a fresh machine") :]
    assert commands(section)[:2] == ["bash scripts/setup.sh && .venv/bin/python launch.py", "bash scripts/test.sh"]
    assert ".ci/run" not in text and "bash scripts/test.sh" in (ROOT / ".ci" / "run").read_text()


def test_the_readme_shows_an_image_that_exists():
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", README.read_text())
    assert images, "README.md shows no picture"
    for image in images:
        assert (ROOT / image).is_file(), image


# -- tables against conf/ ------------------------------------------------------------------------------------


def group_tables() -> list[tuple[Path, list[list[str]]]]:
    return [(p, t) for p in PAGES for t in tables(p.read_text()) if t[0][:2] == ["group", "options"]]


def named_options(cell: str) -> set[str]:
    return {t for t in re.findall(r"`([^`]+)`", cell) if not re.search(r"[.=/ ]", t)}


def test_every_table_of_config_groups_lists_exactly_the_options_in_conf():
    found = group_tables()
    assert found, "no page has a table of config groups (| group | options |)"
    for page, table in found:
        rows = {r[0].strip("`"): r[1] for r in table[1:]}
        assert set(rows) == {*GROUPS, *LAUNCHERS}, f"{rel(page)}: groups {sorted(rows)}"
        for group, cell in rows.items():
            expected = options(group) | ({"basic"} if group in LAUNCHERS else set())
            assert named_options(cell) == expected, f"{rel(page)}, {group} row: {sorted(named_options(cell))}"


def test_every_table_of_presets_lists_exactly_the_experiments_in_conf():
    found = [(p, t) for p in PAGES for t in tables(p.read_text()) if t[0][0] == "preset"]
    assert found, "no page has a table of presets (| preset | ... |)"
    for page, table in found:
        named = {r[0].strip("`") for r in table[1:]}
        assert named == options("experiment"), f"{rel(page)}: presets {sorted(named)}"


def test_every_table_of_keys_names_keys_of_the_config_with_their_defaults():
    found = [(p, t) for p in PAGES for t in tables(p.read_text()) if t[0][:2] == ["key", "default"]]
    assert found, "no page has a table of keys (| key | default | ... |)"
    for page, table in found:
        for row in table[1:]:
            key, default = row[0].strip("`"), row[1].strip("`")
            assert str(OmegaConf.select(default_config(), key)) == default, f"{rel(page)}: {key} default {default}"


def test_the_table_of_original_flags_names_options_and_keys_that_exist():
    found = [t for p in PAGES for t in tables(p.read_text()) if t[0][:2] == ["original flag", "override here"]]
    assert len(found) == 1, "the table from the original main_imp_fillback.py flags"
    checked = 0
    for row in found[0][1:]:
        for token in re.findall(r"`([^`]+)`", row[1]):
            key, _, values = token.partition("=")
            if key in GROUPS:
                for value in values.split("\\|"):
                    assert value in options(key), f"original-flag table: {key}={value} is not in conf/{key}"
            else:
                assert key_exists(key), f"original-flag table: {key} is not a key of the config"
            checked += 1
    assert checked >= 20, checked


def test_every_config_key_a_page_names_exists():
    checked = set()
    for page in PAGES:
        if page == EXTENDING:  # the keys of the options it adds: tests/test_docs_extending.py
            continue
        for token in backticked(page.read_text()):
            for key in re.findall(r"(?:^|\s)((?:hydra|[a-z_]+)\.[a-z_][\w.]*)(?==|\s|$)", token):
                if key.split(".")[0] in {*GROUPS, "prune", "train", "lr_schedule", "paths", "hydra"}:
                    assert key_exists(key), f"{rel(page)} names `{key}`, which is not a key of the config"
                    checked.add(key)
    assert len(checked) >= 40, sorted(checked)


# -- links and file names ------------------------------------------------------------------------------------


def test_every_relative_link_and_anchor_resolves():
    count = 0
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", strip_code(page.read_text())):
            if re.match(r"[a-z]+://", target):
                continue
            file, _, anchor = target.partition("#")
            path = (page.parent / file).resolve() if file else page
            assert path.exists(), f"{rel(page)} links to {target}: no such file"
            if anchor:
                assert anchor in anchors(path), f"{rel(page)} links to {target}: no heading #{anchor} in {path.name}"
            count += 1
    assert count >= 30, f"only {count} links found"


def test_every_repository_path_a_page_names_exists():
    count = 0
    for page in PAGES:
        for token in backticked(page.read_text()):
            for path in re.findall(r"(?:^|[\s(])((?:rsst|conf|scripts|benchmarks|docs|tests)/[\w./<>*-]*)", token):
                fixed = re.split(r"[<*]", path)[0].rstrip(".")  # conf/<group>/... : the part before a placeholder
                if fixed in INSTALLED_ONLY:
                    continue
                assert (ROOT / fixed).exists(), f"{rel(page)} names `{path}`: no {fixed} in the repository"
                count += 1
    assert count >= 30, f"only {count} paths found"


def test_every_markdown_file_a_page_names_exists():
    """A page cites only documents in the repository (the founders' design document is not one)."""
    count = 0
    for page in PAGES:
        for name in re.findall(r"[\w./-]*\b[\w-]+\.md\b", strip_code(page.read_text())):
            if name in OUTPUT_FILES:
                continue
            assert (page.parent / name).is_file() or (ROOT / name).is_file(), f"{rel(page)} cites {name}: not here"
            count += 1
    assert count >= 20, count


# -- Python the pages give -----------------------------------------------------------------------------------

# Backticked names that are not Python of the project or its libraries: the formulas' functions and operators, and
# the pages' local variables (``loss.backward()``, ``ctx.masks``, ``plan.final``). Every other name a page writes as
# ``name(...)`` or ``a.b`` must resolve.
NOT_CODE = {
    "ceil", "conv", "exp", "f", "floor", "lambda", "min", "relu", "round", "sum", "supp",  # formulas
    "ctx", "loss", "module", "penalty", "plan",  # variables and placeholders of the pages
    "choice", "interval", "range", "tag",  # Hydra's override grammar (a search space), not Python
}  # fmt: skip
ALIASES = {
    "nn": "torch.nn", "F": "torch.nn.functional", "np": "numpy",
    "Study": "optuna.study.Study", "Trial": "optuna.trial.Trial",  # docs/architecture.md's search section
}  # fmt: skip
BARE_LIBRARY_NAMES = ("torchvision.transforms",)  # where a page's bare ``RandomResizedCrop(224)`` comes from
FILE_SUFFIXES = {"bin", "csv", "db", "gz", "journal", "json", "log", "md", "png", "pt", "py", "tar", "toml", "yaml"}
REFERENCE = re.compile(r"(?P<name>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)(?P<call>\(.*\))?")


@functools.cache
def project_index() -> tuple[dict[str, list[str]], dict[str, list[str]], frozenset[str]]:
    """``({top-level function or class: modules}, {module basename: modules}, every method and attribute name)``.

    Read from the source of ``rsst/`` (and the tests' ``helpers``), without importing anything.
    """
    defined: dict[str, list[str]] = {}
    modules: dict[str, list[str]] = {"helpers": ["helpers"]}
    members: set[str] = set()
    for path in sorted((ROOT / "rsst").rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        modules.setdefault(module.rpartition(".")[2], []).append(module)
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                defined.setdefault(node.name, []).append(module)
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        members.add(item.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
                members.add(node.attr)
    return defined, modules, frozenset(members)


def instance_attribute(cls: type, attr: str) -> bool:
    """``attr`` is set on instances of ``cls``: a dataclass field, an annotation, or a ``self.attr = ...``."""
    for klass in cls.__mro__:
        if attr in getattr(klass, "__annotations__", {}):
            return True
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        if re.search(rf"\bself\.{attr}\s*(?::[^=]+)?=[^=]", source):
            return True
    return False


def follow(obj: object, path: str, attrs: list[str]) -> str | None:
    """Why ``getattr(obj, a1).a2...`` fails (``path`` names ``obj``), or None; an instance attribute ends the walk."""
    for attr in attrs:
        if hasattr(obj, attr):
            obj, path = getattr(obj, attr), f"{path}.{attr}"
        elif isinstance(obj, type) and instance_attribute(obj, attr):
            return None  # its type is the instance's: nothing further can be checked without one
        else:
            return f"{path} has no {attr}"
    return None


def resolve_import(parts: list[str]) -> str | None:
    """Why ``a.b.c`` fails as the longest module ``parts[:i]`` that imports and attributes after it, or None."""
    for i in range(len(parts), 0, -1):
        try:
            module = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        return follow(module, ".".join(parts[:i]), parts[i:])
    return f"nothing of the project or its libraries is called {parts[0]}"


def unresolved(name: str, call: bool, added: set[str] = frozenset()) -> str | None:
    """Why the dotted ``name`` a page gives (``call``: written ``name(...)``) names nothing, or None.

    ``added``: the classes and functions the page's own code blocks define (docs/extending.md's).
    """
    head, *attrs = name.split(".")
    if head == "rsst":
        return resolve_import([head, *attrs])
    if head in default_config() or head in GROUPS or head == "hydra":
        return None  # a config key: test_every_config_key_a_page_names_exists
    defined, modules, members = project_index()
    candidates = [(m, [head, *attrs]) for m in defined.get(head, [])] + [(m, attrs) for m in modules.get(head, [])]
    if candidates:
        reasons = [follow(importlib.import_module(m), m, path) for m, path in candidates]
        return None if None in reasons else "; ".join(reasons)
    if head in added or head in NOT_CODE:
        return None
    if not attrs and call and head in members:
        return None  # a method of the project's, called by its bare name (``final_masks(plan, penalty)``)
    for library in BARE_LIBRARY_NAMES:
        if hasattr(importlib.import_module(library), head):
            return follow(getattr(importlib.import_module(library), head), head, attrs)
    return resolve_import([*ALIASES.get(head, head).split("."), *attrs])


def references(text: str) -> list[tuple[str, bool]]:
    """``(dotted name, written as a call)`` of every backticked ``a.b.c``, ``name(...)`` or ``a.b(...)``."""
    out = []
    for token in backticked(text):
        match = REFERENCE.fullmatch(token)
        if match is None:
            continue
        name, call = match["name"], match["call"] is not None
        if not call and ("." not in name or name.rpartition(".")[2] in FILE_SUFFIXES):
            continue  # a bare word (a value, an option) or a file name
        out.append((name, call))
    return out


def test_every_python_name_a_page_gives_resolves():
    """``rsst.a.b``, ``rsst.a.f(...)``, ``Class.method(...)``, ``module.function``, ``function(...)``: each names
    something that imports (a class's instance attribute counts), unless it is a formula or a page's variable."""
    count = calls = 0
    for page in PAGES:
        text = page.read_text()
        added = {name for _, name in page_additions(text)}
        for name, call in references(text):
            reason = unresolved(name, call, added)
            assert reason is None, f"{rel(page)} names `{name}{'(...)' if call else ''}`: {reason}"
            count += 1
            calls += call
    assert count >= 100 and calls >= 40, (count, calls)


def page_additions(text: str) -> set[tuple[str, str]]:
    """``(module, name)`` for every class and function a page's code blocks add to a module they name first
    (``# rsst/config/schema.py``): docs/extending.md's, which tests/test_docs_extending.py runs in a scratch copy."""
    out = set()
    for lang, body in code_blocks(text):
        first = body.splitlines()[0] if body else ""
        if lang == "python" and re.fullmatch(r"# [\w/]+\.py", first):
            module = first[2:].removesuffix(".py").replace("/", ".")
            tree = ast.parse(body)
            out |= {(module, n.name) for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    return out


def import_statements(text: str) -> list[ast.Import | ast.ImportFrom]:
    """Every ``import`` and ``from ... import`` of the page's code blocks: a Python block's whole tree, and any
    other block's lines that parse as one."""
    out = []
    for lang, body in code_blocks(text):
        if lang == "python":
            out += [n for n in ast.walk(ast.parse(body)) if isinstance(n, (ast.Import, ast.ImportFrom))]
            continue
        for line in body.splitlines():
            if re.match(r"\s*(import|from)\s+[\w.]+", line):
                out += ast.parse(line.strip()).body
    return out


def test_every_import_line_of_a_code_block_runs():
    """As a reader would paste it; only the names a page itself adds to a module (docs/extending.md's schema rows)
    are left to tests/test_docs_extending.py, which runs those blocks in a scratch copy of the project."""
    count = 0
    for page in PAGES:
        text = page.read_text()
        added = page_additions(text)
        for node in import_statements(text):
            if isinstance(node, ast.ImportFrom):
                node.names = [a for a in node.names if (node.module, a.name) not in added]
            if node.names:
                line = ast.unparse(node)
                try:
                    exec(compile(line, str(page), "exec", dont_inherit=True), {})
                except ImportError as exc:
                    pytest.fail(f"{rel(page)}: `{line}` fails: {exc}")
                count += 1
    assert count >= 15, count


# -- commands ------------------------------------------------------------------------------------------------


def launch_commands() -> list[tuple[Path, list[str]]]:
    out = []
    for page in PAGES:
        if page == EXTENDING:
            continue
        for command in commands(page.read_text()):
            args = launch_args(command)
            if args is not None:
                out.append((page, args))
    return out


def test_every_launch_command_the_pages_show_composes_and_validates():
    found = launch_commands()
    assert len(found) >= 20, f"only {len(found)} launch.py commands found"
    jobs = 0
    for page, args in found:
        try:
            jobs += check_command(args)
        except Exception as exc:
            pytest.fail(f"{rel(page)}: launch.py {' '.join(args)}: {compose_error(exc) or exc}")
    assert jobs > len(found)  # the sweeps expanded into their jobs


def error_examples() -> list[tuple[Path, str, str]]:
    """``$ python launch.py ARGS`` followed by the line it prints, from the pages' output blocks."""
    out = []
    for page in PAGES:
        for lang, body in code_blocks(page.read_text()):
            lines = body.splitlines()
            for i, line in enumerate(lines[:-1]):
                if line.startswith("$ python launch.py") and lang == "":
                    out.append((page, line[2:], lines[i + 1]))
    return out


def test_every_error_line_the_pages_show_is_the_line_the_command_prints():
    found = error_examples()
    assert len(found) >= 5, found
    for page, command, expected in found:
        args = launch_args(command)
        if "-m" in args:  # a sweep: the summary lists the failed job's line; check that job's line
            continue
        with pytest.raises(Exception) as err:
            check_command(args)
        message = compose_error(err.value) or str(err.value)
        if expected.startswith("device="):  # the devices listed are this machine's
            message, expected = message.split(": it has")[0], expected.split(": it has")[0]
        assert message == expected, f"{rel(page)}: {command}"


def test_the_sweep_summary_the_pages_show_names_the_failing_jobs_line():
    text = (DOCS / "sweeps.md").read_text()
    block = next(b for _, b in code_blocks(text) if b.startswith("$ python launch.py -m"))
    args = launch_args(block.splitlines()[0][2:])
    job, line = re.search(r"#(\d+) ([^:]+): (.+)", block).group(1, 3)
    cfg = compose_command(args)[int(job)]
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    assert str(err.value) == line


def other_commands() -> list[tuple[Path, str]]:
    return [(p, c) for p in PAGES for c in commands(p.read_text()) if launch_args(c) is None]


class Parsed(Exception):
    def __init__(self, namespace):
        self.namespace = namespace


def parse_flags(main, argv: list[str], monkeypatch) -> argparse.Namespace:
    """The namespace ``main``'s own parser makes of ``argv``: parsed, then stopped before anything runs."""
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        raise Parsed(original(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    monkeypatch.setattr(sys, "argv", ["prog", *argv])
    try:
        main(argv) if main.__code__.co_argcount else main()
    except Parsed as done:
        return done.namespace
    raise AssertionError(f"{main.__module__}.main did not parse its flags")


def script_main(path: Path):
    spec = importlib.util.spec_from_file_location(f"docs_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_every_other_command_names_a_script_that_exists_and_takes_its_flags(monkeypatch):
    """``python -m rsst.*`` and ``python benchmarks/*.py``: their own parsers accept the flags shown; scripts exist."""
    found = other_commands()
    parsed = 0
    for page, command in found:
        argv = shlex.split(command.replace("<hash>", "HASH"))
        while argv and re.fullmatch(r"[A-Z_]+=\S+", argv[0]):  # OMP_NUM_THREADS=1 ...
            argv = argv[1:]
        if argv[:2] == ["python", "-m"]:
            main = importlib.import_module(f"rsst.commands.{argv[2].removeprefix('rsst.')}").main
            parse_flags(main, argv[3:], monkeypatch)
            parsed += 1
        elif argv[0] == "python":
            script = ROOT / argv[1]
            assert script.is_file(), f"{rel(page)}: {command}: no {argv[1]}"
            flags = [a for a in argv[2:] if not re.fullmatch(r"[\w.]+=.*", a)]  # the structured study passes overrides
            parse_flags(script_main(script), flags, monkeypatch)
            parsed += 1
        elif argv[0] == "bash":
            script = ROOT / argv[1]
            assert script.is_file(), f"{rel(page)}: {command}: no {argv[1]}"
            text = script.read_text()
            if len(argv) > 2 and not argv[2].startswith("-"):  # a subcommand: one of the script's cases
                assert re.search(rf"^\s*{re.escape(argv[2])}\)", text, flags=re.M), f"{command}: no case {argv[2]}"
            elif len(argv) > 2:
                assert '"$@"' in text, f"{command}: {argv[1]} does not pass its arguments on"
        elif argv[0] == "torchrun":
            assert "launch.py" in argv
        elif argv[0].startswith(".venv/bin/"):
            assert argv[0].rsplit("/", 1)[1] in {"python", "ruff", "pytest"}, command
        else:
            pytest.fail(f"{rel(page)}: a command this test does not know how to check: {command}")
    assert parsed >= 8, parsed


# The tests that run a README command (its ``main``, or the process); every other README command is composed and
# validated above (``python launch.py ...``) or its flags parsed (``python -m ...``, ``benchmarks/...``). The test below
# checks that each named test still exists. ``-m struct=imp,refill,rsst seed=1,2,3`` runs as a smaller grid of the
# same shape; ``struct=imp prune.rounds=5 ...``, ``struct=refill ...``, the presets and the Slurm sweep are run by no
# test (they train for hours or need a cluster's partition); ``--cfg job`` is composed only.
RUN_END_TO_END = {
    "python launch.py": "tests/test_launch.py::test_the_embedded_default_runs_three_rounds_with_round_0_at_90_percent",
    "python launch.py -m struct=imp,refill,rsst": (
        "tests/test_launch.py::test_a_local_sweep_gives_each_job_its_own_run_folder"
    ),
    "python launch.py --help": "tests/test_help.py::help_text",
    "python -m rsst.report multirun_outputs/grid1": (
        "tests/test_report.py::test_report_numbers_equal_means_and_stds_from_the_files"
    ),
    "python -m rsst.report --provenance": "tests/test_report.py::test_provenance_is_printed_readably",
    "bash scripts/slurm_local.sh start": "tests/test_slurm.py::slurm_env",
    "bash scripts/test.sh": ".ci/run",
}


def test_the_tests_named_as_running_readme_commands_exist():
    readme = README.read_text()
    for command, where in RUN_END_TO_END.items():
        assert command in readme, f"README no longer shows {command}"
        file, _, name = where.partition("::")
        assert (ROOT / file).is_file(), where
        if name:
            assert re.search(rf"^\s*def {name}\b", (ROOT / file).read_text(), flags=re.M), where
