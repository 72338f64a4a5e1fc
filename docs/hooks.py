"""MkDocs hooks of the docs site (mkdocs.yml `hooks:`).

- The API page: the marker `<!-- api: MODULE -->` in a page becomes one mkdocstrings block per
  name of MODULE's `__all__`, in that order, so a name added to or removed from `__all__`
  appears or goes without editing the page. Names are found by reading the source (no import):
  each is followed through the package's `from X import name` statements to the module that
  defines it, because a name and a module of the same name (`rsojax.stage_inputs`, a function
  in the module `rsojax.evaluators.stage_inputs`) would otherwise resolve to the module.
- The notebooks: the nav's "Notebooks" entry lists every `notebooks/*.ipynb` (seen through
  the symlink `docs/notebooks`), so a new notebook is rendered without editing the nav.
- The changelog: the repository's `CHANGELOG.md` is served as `changelog.md`.
"""

import ast
import re
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parent.parent
MARKER = re.compile(r"<!-- api: ([\w.]+) -->")


def module_file(module: str) -> Path:
    """The source file of a module of this repository (`rsojax.experiment` -> its `__init__.py`)."""
    base = ROOT.joinpath(*module.split("."))
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def _tree(module: str) -> ast.Module:
    return ast.parse(module_file(module).read_text(), str(module_file(module)))


def public_names(module: str) -> list[str]:
    """The module's `__all__`, read from its source."""
    for node in _tree(module).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return list(ast.literal_eval(node.value))
    raise ValueError(f"{module}: no __all__ list")


def _is_module(path: str) -> bool:
    parts = path.split(".")
    return ROOT.joinpath(*parts).is_dir() or ROOT.joinpath(*parts).with_suffix(".py").exists()


def defining_path(module: str, name: str) -> str:
    """The dotted path of the object that `module.name` is, following `from X import name`
    (a submodule imported by name, `from rsojax import records`, is that module)."""
    for node in _tree(module).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "rsojax":
            for alias in node.names:
                if (alias.asname or alias.name) == name:
                    if _is_module(f"{node.module}.{alias.name}") and not _defines(node.module, alias.name):
                        return f"{node.module}.{alias.name}"
                    return defining_path(node.module, alias.name)
    return f"{module}.{name}"


def _defines(module: str, name: str) -> bool:
    """Whether `module`'s source binds `name` by a def, a class, an assignment or an import from
    another module (a package binding a name that is also one of its submodules)."""
    for node in _tree(module).body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef) and node.name == name:
            return True
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(getattr(t, "id", None) == name for t in targets):
                return True
        if isinstance(node, ast.ImportFrom) and node.module != module:
            if any((a.asname or a.name) == name for a in node.names):
                return True
    return False


def api_blocks(module: str) -> str:
    """The mkdocstrings blocks of every name in `module.__all__`."""
    return "\n\n".join(f"::: {defining_path(module, name)}" for name in public_names(module))


def on_config(config):
    notebooks = sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))
    entries = [{p.removesuffix(".ipynb").replace("_", " ").capitalize(): f"notebooks/{p}"} for p in notebooks]
    config.nav = [{"Notebooks": entries} if isinstance(item, dict) and "Notebooks" in item else item for item in config.nav]
    return config


def on_files(files, config):
    changelog = ROOT / "CHANGELOG.md"
    files.append(File.generated(config, "changelog.md", content=changelog.read_text()))
    return files


def on_page_markdown(markdown, page, config, files):
    return MARKER.sub(lambda m: api_blocks(m.group(1)), markdown)
