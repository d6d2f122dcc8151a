"""The documentation is checked like code.

- The reference pages generated from the code (``python -m vaebench.docs_gen``) are current, and
  every study field and CLI option carries the description they are generated from.
- Every example runs or is validated: a ```yaml block is a study (or a part of one) that passes
  ``vaebench validate``; every command of a ```bash block parses against the Typer app (its
  command and options exist and take the values shown) or names a program, module, script or
  extra that exists; every inline `vaebench X --opt` names an existing command and option;
  ```python blocks compile. A block that is not meant to be checked is fenced as ```text.
- No page links outside the repository except to papers and the upstream projects' docs.
- The MkDocs nav and the pages agree, and (with the docs extra installed) the site builds with
  ``mkdocs build --strict``.
"""

from __future__ import annotations

import ast
import gzip
import importlib.util
import re
import shlex
import struct
import subprocess
import sys
import tomllib
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
import yaml
from pydantic import BaseModel, Field
from typer.testing import CliRunner

from vaebench import docs_gen
from vaebench.cli import app

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def pages() -> list[Path]:
    """Every Markdown page a reader sees: README.md and docs/ (generated snippets included)."""
    return [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


def blocks(langs: tuple[str, ...]) -> list[tuple[str, int, str]]:
    """(page, line, text) of every fenced block whose language is one of ``langs``."""
    out = []
    fence = re.compile(r"^([ \t]*)```(\w*)[^\n]*\n(.*?)^\1```[ \t]*$", re.S | re.M)
    for page in pages():
        text = page.read_text()
        for m in fence.finditer(text):
            if m.group(2) in langs:
                body = "\n".join(line.removeprefix(m.group(1)) for line in m.group(3).splitlines())
                out.append((page.relative_to(ROOT).as_posix(), text[: m.start()].count("\n") + 1, body))
    return out


def ids(items: list[tuple[str, int, str]]) -> list[str]:
    return [f"{page}:{line}" for page, line, _ in items]


# ----------------------------------------------------------------------------- generated references


def test_generated_pages_are_current():
    stale = docs_gen.stale()
    assert not stale, f"out of date: {[str(p) for p in stale]}; run python -m vaebench.docs_gen and commit"


def test_every_study_field_has_a_description():
    from vaebench.study.config import TrialConfig

    models = {model for _, _, model in docs_gen.study_sections()} | {TrialConfig}
    missing = [f"{m.__name__}.{name}" for m in models for name, info in m.model_fields.items() if not info.description]
    assert not missing, f"fields without Field(description=...): {missing}"
    assert len(models) >= 15  # every section and every kind of data and annealing was walked


def test_every_command_and_option_has_help():
    group, commands = docs_gen.cli_commands()
    assert {"sweep", "validate", "status", "report", "reproduce", "ui", "docs"} <= {n for n, _ in commands}
    missing = [f"vaebench {n}" for n, c in commands if not c.help]
    missing += [f"vaebench {n} {p.name}" for n, c in commands for p in docs_gen._params(c) if not p.help]
    assert not missing, f"commands or options without help: {missing}"


def test_a_field_without_a_description_stops_the_generation():
    class Undocumented(BaseModel):
        """A section."""

        fine: int = Field(1, description="documented")
        bare: int = 2

    with pytest.raises(docs_gen.MissingDoc, match="Undocumented.bare"):
        docs_gen.field_rows(Undocumented, "x.", {})


def test_the_reference_shows_types_defaults_and_allowed_values():
    page = (DOCS / "study-file.md").read_text()
    assert "| `objective.free_bits_mode` | `per_dim` or `total` | `per_dim` |" in page
    assert "| `model.latent_dim` | integer (≥ 1, ≤ 1024) | `10` |" in page
    assert "| `search.budget` | integer or `null` (≥ 1) | `null` |" in page
    assert "## objective.anneal: kind cyclical" in page and "## data: kind npz" in page
    cli = (DOCS / "cli.md").read_text()
    assert "| `--port INTEGER` | integer (≥ 1, ≤ 65535) | `5000` |" in cli
    assert "| `--log/--no-log` | flag | `--log` |" in cli


def test_every_tag_in_the_code_is_documented():
    from vaebench.plugins import GROUPS
    from vaebench.record.vocab import TAGS

    names = set()
    for f in (ROOT / "vaebench").rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                m = re.fullmatch(r"vaebench\.([a-z_]+)", node.value)
                modules = (ROOT / "vaebench" / m.group(1), ROOT / "vaebench" / f"{m.group(1)}.py") if m else ()
                if m and not any(p.exists() for p in modules):
                    names.add(node.value)
    names -= set(GROUPS.values())  # the plugins' entry-point groups (docs/plugins.md), not tags
    assert len(names) >= 15
    assert names <= set(TAGS), f"tags without an entry in vaebench.record.vocab.TAGS: {sorted(names - set(TAGS))}"
    assert all(where and what for where, what in TAGS.values())


# ----------------------------------------------------------------------------- YAML examples


def _write_idx(path: Path, images: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, images.ndim) + struct.pack(f">{images.ndim}I", *images.shape)
    data = header + images.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def _make_data_files(raw: dict, where: Path) -> None:
    """The files a docs example names (relative paths), made small and valid, so that validate
    reads them as it would the reader's own."""
    rng = np.random.default_rng(0)
    data = raw.get("data") or {}
    images = (rng.random((40, 8, 8)) * 255).astype(np.uint8)
    if data.get("kind") == "npz" and data.get("path"):
        keys = {data.get("train_key", "x_train"): images}
        if data.get("val_key"):
            keys[data["val_key"]] = images[:10]
        (where / data["path"]).parent.mkdir(parents=True, exist_ok=True)
        np.savez(where / data["path"], **keys)
    if data.get("kind") == "idx":
        for key in ("train_images", "val_images"):
            if data.get(key):
                _write_idx(where / data[key], images)


YAML_BLOCKS = blocks(("yaml", "yml"))


def test_the_docs_show_studies():
    assert len(YAML_BLOCKS) >= 6


@pytest.mark.parametrize("page,line,text", YAML_BLOCKS, ids=ids(YAML_BLOCKS))
def test_yaml_example_passes_validate(page, line, text, tmp_path, monkeypatch):
    raw = yaml.safe_load(text)
    assert isinstance(raw, dict), f"{page}:{line}: a YAML example is a study or a part of one"
    raw.setdefault("name", "docs_example")  # a part of a study: completed with a name and a factor
    raw.setdefault("space", {"objective.beta": [1.0]})
    monkeypatch.chdir(tmp_path)
    _make_data_files(raw, tmp_path)
    study = tmp_path / "studies" / "example.yaml"
    study.parent.mkdir()
    study.write_text(yaml.safe_dump(raw, sort_keys=False))
    args = ["validate", str(study)]
    if "cuda" in text:
        import torch

        if not torch.cuda.is_available():  # the device check needs CUDA here; the rest is checked
            args += ["--set", "train.device=auto"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, f"{page}:{line}: vaebench validate failed:\n{result.output}"


# ----------------------------------------------------------------------------- shell examples

PROGRAMS = {"python", "python3", "pip", "vaebench", "mkdocs", ".", "source", "cd", "export", "ruff", "sudo", "apt-get"}


def commands(text: str) -> list[list[str]]:
    """The simple commands of a shell block: continuation lines joined, comments dropped, split at
    && || ; and |, each as its words (leading VAR=value assignments dropped)."""
    text = text.replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        words = shlex.split(line, comments=True)
        cmd: list[str] = []
        for w in [*words, "&&"]:
            if w in ("&&", "||", ";", "|"):
                while cmd and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", cmd[0]):
                    cmd.pop(0)
                if cmd:
                    out.append(cmd)
                cmd = []
            else:
                cmd.append(w)
    return out


def check_vaebench(args: list[str], full: bool) -> None:
    """The command exists and, with ``full``, its arguments parse as the app would parse them
    (types, bounds and option names checked, nothing run)."""
    group, cmds = docs_gen.cli_commands()
    by_name = dict(cmds)
    assert args and args[0] in by_name, f"no command vaebench {args[:1]}; commands: {sorted(by_name)}"
    cmd = by_name[args[0]]
    if full:
        root = group.context_class(group, info_name="vaebench")
        cmd.make_context(args[0], list(args[1:]), parent=root)
        return
    known = {o for p in docs_gen._params(cmd) for o in (*p.opts, *p.secondary_opts) if o.startswith("-")}
    known |= {"--help"}
    for word in args[1:]:
        opt = word.split("=", 1)[0]
        if opt.startswith("--"):
            assert opt in known, f"vaebench {args[0]} has no option {opt}; options: {sorted(known)}"


def check_command(words: list[str]) -> None:
    prog, args = words[0], words[1:]
    if prog == "sudo":  # an install step: what follows is checked
        prog, args = args[0], args[1:]
    if prog.startswith("scripts/"):  # the project's own scripts: the file and its subcommand exist
        script = ROOT / prog
        assert script.is_file(), f"no script {prog}"
        assert not args or f"{args[0]})" in script.read_text() or f"{args[0]}|" in script.read_text(), (
            f"{prog} has no subcommand {args[0]}"
        )
        return
    assert prog in PROGRAMS, f"{prog}: not a program the docs may assume ({sorted(PROGRAMS)})"
    if prog == "vaebench":
        check_vaebench(args, full=True)
    elif prog in ("python", "python3") and args[:1] == ["-m"]:
        module = args[1]
        assert module in ("venv", "pytest") or importlib.util.find_spec(module), f"no module {module}"
        if module == "pytest":
            assert set(args[2:]) <= {"-q", "-m", "integration"}, args
    elif prog in ("python", "python3"):
        script = ROOT / args[0]
        assert script.is_file(), f"no script {args[0]}"
        source = script.read_text()
        for opt in (a.split("=", 1)[0] for a in args[1:] if a.startswith("--")):
            assert f'"{opt}"' in source, f"{args[0]} has no option {opt}"
    elif prog == "pip":
        assert args[0] == "install", args
        extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
        for a in args[1:]:
            m = re.fullmatch(r"\.\[(\w+)\]", a)
            assert m is None or m.group(1) in extras, f"pyproject.toml has no extra {a}"
    elif prog == "mkdocs":
        assert args[0] in ("serve", "build"), args
    elif prog == "apt-get":  # Debian packages the docs name: an update or an install, nothing else
        assert args[0] in ("update", "install"), args


SHELL_BLOCKS = blocks(("bash", "sh", "shell", "console"))


def test_the_docs_show_commands():
    assert len(SHELL_BLOCKS) >= 20


@pytest.mark.parametrize("page,line,text", SHELL_BLOCKS, ids=ids(SHELL_BLOCKS))
def test_shell_example_parses(page, line, text):
    cmds = commands(text)
    assert cmds, f"{page}:{line}: an empty shell block"
    for words in cmds:
        try:
            check_command(words)
        except AssertionError as e:
            raise AssertionError(f"{page}:{line}: {' '.join(words)}: {e}") from None
        except Exception as e:  # the app refused the arguments (unknown option, bad value, missing argument)
            raise AssertionError(f"{page}:{line}: {' '.join(words)}: {type(e).__name__}: {e}") from None


def test_a_wrong_option_in_an_example_fails():
    with pytest.raises(Exception, match="--no-such"):
        check_command(["vaebench", "sweep", "studies/quick.yaml", "--no-such"])
    with pytest.raises(
        Exception, match=r"greater than or equal to 1|x>=1"
    ):  # below the bound (Typer's words, or click's)
        check_command(["vaebench", "sweep", "studies/quick.yaml", "--workers", "0"])
    with pytest.raises(AssertionError, match="no option --no-such"):
        check_vaebench(["report", "NAME", "--no-such"], full=False)


def test_inline_vaebench_commands_name_existing_options():
    """`vaebench X --opt ...` in prose: X is a command and every --opt one of its options."""
    seen = 0
    for page in pages():
        for span in re.findall(r"`(vaebench [^`]+)`", page.read_text()):
            for part in re.split(r"&&|\|\|", span):
                words = part.split()
                if words and words[0] == "vaebench" and len(words) > 1 and not words[1].startswith("-"):
                    seen += 1
                    try:
                        check_vaebench(words[1:], full=False)
                    except AssertionError as e:
                        raise AssertionError(f"{page.relative_to(ROOT)}: `{span}`: {e}") from None
    assert seen >= 20


PYTHON_BLOCKS = blocks(("python",))


@pytest.mark.parametrize("page,line,text", PYTHON_BLOCKS, ids=ids(PYTHON_BLOCKS))
def test_python_example_compiles_and_imports(page, line, text):
    tree = ast.parse(text, filename=f"{page}:{line}")
    for node in ast.walk(tree):  # the names it imports from vaebench exist
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vaebench"):
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name), f"{page}:{line}: {node.module} has no {alias.name}"


# ----------------------------------------------------------------------------- links

# papers and the documentation of the projects vaebench builds on
ALLOWED_HOSTS = {
    "arxiv.org",
    "doi.org",
    "openreview.net",
    "proceedings.mlr.press",
    "proceedings.neurips.cc",
    "proceedings.mlsys.org",
    "aclanthology.org",
    "docs.ray.io",
    "mlflow.org",
    "optuna.readthedocs.io",
    "pytorch.org",
    "docs.pydantic.dev",
    "typer.tiangolo.com",
    "www.mkdocs.org",
    "squidfunk.github.io",
    "pandas.pydata.org",
    "seaborn.pydata.org",
    "scikit-learn.org",
}
# hosts of examples (a local UI, a cluster's address), not links anywhere
EXAMPLE_HOSTS = re.compile(r"^(127\.0\.0\.1|localhost|10\.\d+\.\d+\.\d+|mlflow-server|HOST|host)$")


def outside_links(text: str) -> list[str]:
    """The URLs in ``text`` that lead outside the repository to anything but papers and upstream docs."""
    bad = []
    for url in re.findall(r"https?://[^\s)>`'\"]+", text):
        host = urlparse(url.rstrip(".,;")).hostname or ""
        if host not in ALLOWED_HOSTS and not EXAMPLE_HOSTS.match(host):
            bad.append(url)
    return bad


def test_no_page_links_outside_the_repository():
    bad = {page.relative_to(ROOT).as_posix(): outside_links(page.read_text()) for page in pages()}
    assert not {p: u for p, u in bad.items() if u}
    assert outside_links("see [a blog](https://example.com/post) and <https://arxiv.org/abs/1312.6114>") == [
        "https://example.com/post"
    ]


def test_readme_links_exist_and_it_is_short():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) < 200
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    missing = [t for t in targets if "://" not in t and not (ROOT / t).exists()]
    assert not missing and len(targets) > 20, missing
    # the two commands a new user copies: the install and run, and the install and test (both tiers)
    assert "pip install -e . && vaebench sweep studies/collapse.yaml && vaebench report collapse" in text
    assert (
        'pip install -e ".[test,mnist]" && pip install -e examples/plugin_package && python -m pytest -q && python -m pytest -q -m integration'
        in text
    )


# ----------------------------------------------------------------------------- the site


def nav_files() -> list[str]:
    def walk(node):
        if isinstance(node, str):
            yield node
        elif isinstance(node, list):
            for item in node:
                yield from walk(item)
        elif isinstance(node, dict):
            for value in node.values():
                yield from walk(value)

    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text().replace("!!python", "#"))
    return list(walk(config["nav"]))


def test_nav_and_pages_agree():
    nav = nav_files()
    assert len(nav) == len(set(nav))
    assert [p for p in nav if not (DOCS / p).is_file()] == []
    pages_here = {p.relative_to(DOCS).as_posix() for p in DOCS.glob("*.md")}
    assert sorted(pages_here - set(nav)) == [], "pages missing from the nav of mkdocs.yml"


def test_mkdocs_builds_strict(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("material")
    out = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"},
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    page = (tmp_path / "site" / "tutorial.html").read_text()
    assert 'src="reports/collapse/rate_distortion.png"' in page
    assert (tmp_path / "site" / "reports" / "collapse" / "rate_distortion.png").is_file()
    assert "fonts.googleapis.com" not in page  # built for offline reading


def test_vaebench_docs_says_how_to_serve_offline():
    result = CliRunner().invoke(app, ["docs"])
    assert result.exit_code == 0
    assert "mkdocs serve" in result.output and ".[docs]" in result.output and "offline" in result.output
