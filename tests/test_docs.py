"""The docs site and the README's links: built with warnings as errors, complete, and resolving.

The site is built once per module (`mkdocs build --strict`, about 10 s): a docstring that
names an argument the function does not have, a link to a page or an anchor that does not
exist, or a public name that cannot be rendered fails the build.
"""

import html.parser
import json
import os
import re
import subprocess
import sys

import pytest

import rsojax
import rsojax.experiment

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Ids(html.parser.HTMLParser):
    """Every `id` attribute of a page, and the headings mkdocstrings writes for objects."""

    def __init__(self):
        super().__init__()
        self.ids, self.headings = set(), []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
            if re.fullmatch(r"h\d", tag) and "doc-heading" in (attrs.get("class") or ""):
                self.headings.append((int(tag[1]), attrs["id"]))

    @property
    def objects(self) -> set[str]:
        """The ids of the top-level objects (not their members, whose headings are deeper)."""
        top = min(level for level, _ in self.headings)
        return {i for level, i in self.headings if level == top}


def _ids(path: str) -> _Ids:
    parser = _Ids()
    with open(path) as f:
        parser.feed(f.read())
    return parser


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("docs")
    out = tmp / "site"
    # cwd: mkdocs-jupyter writes its cache into the working directory
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", os.path.join(ROOT, "mkdocs.yml"), "-d", str(out)],
        cwd=tmp, capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert build.returncode == 0, f"mkdocs build --strict failed:\n{build.stdout}\n{build.stderr}"
    return out


def test_api_page_lists_every_public_name(site):
    """Each name of both `__all__` lists, as imported, has its own object heading on the API page."""
    objects = _ids(site / "api" / "index.html").objects
    for module in (rsojax, rsojax.experiment):
        missing = [name for name in module.__all__ if not any(o.split(".")[-1] == name for o in objects)]
        assert not missing, f"{module.__name__}.__all__ names missing from the API page: {missing}"


def test_notebooks_are_rendered(site):
    """Every notebook in notebooks/ has a page (from the nav the hook fills in)."""
    notebooks = [n.removesuffix(".ipynb") for n in os.listdir(os.path.join(ROOT, "notebooks")) if n.endswith(".ipynb")]
    assert notebooks
    for name in notebooks:
        assert (site / "notebooks" / name / "index.html").exists(), name


def test_readme_links_resolve(site):
    """Every relative link of the README names a file of the repository, and every anchor into
    docs/ a heading of the built page."""
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    links = re.findall(r"\]\(([^)\s]+)\)", readme)
    local = [link for link in links if not re.match(r"[a-z]+:", link)]
    assert any(link.startswith("docs/") and "#" in link for link in local)
    for link in local:
        target, _, anchor = link.partition("#")
        assert os.path.exists(os.path.join(ROOT, target)), f"README links to {target}, which does not exist"
        if anchor:
            page = os.path.relpath(target, "docs").removesuffix(".md")
            ids = _ids(site / ("index.html" if page == "index" else os.path.join(page, "index.html"))).ids
            assert anchor in ids, f"README links to {link}: no heading #{anchor} in {target}"


def figures_module():
    sys.path.insert(0, os.path.join(ROOT, "experiments"))
    try:
        import figures
    finally:
        sys.path.pop(0)
    return figures


def test_figure_is_drawn_from_its_data(tmp_path):
    """experiments/figures.py draws a PNG from the recorded data, and refuses a series whose
    points do not pair up, naming it."""
    figures = figures_module()
    out = tmp_path / "figure.png"
    figures.main(["--out", str(out)])
    with open(out, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"

    with open(os.path.join(ROOT, "docs", "data", "mnist_protocol.json")) as f:
        data = json.load(f)
    data["series"][0]["x"] = data["series"][0]["x"][:-1]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=re.escape(data["series"][0]["label"])):
        figures.load_series(str(bad))


def test_runs_figure_collects_each_arms_runs_from_its_workdir(tmp_path, monkeypatch):
    """`figures.py --collect` keeps each arm's runs of its workdir's summary.json that match its
    `where` (a value or a list), writes them into the data file, and draws them; an arm whose
    workdir holds no summary or none of its runs is refused, naming the arm."""
    figures = figures_module()
    runs = [{"run": k, "seed": k % 2, "init_seed": 420, "sigma_scale": s, "test_accuracy": 0.5 + k / 100,
             "best_test_accuracy": 0.6, "params_sha256": "0" * 64} for k, s in enumerate((0.5, 0.5, 2.0, 2.0))]
    (tmp_path / "runs" / "sweep").mkdir(parents=True)
    (tmp_path / "runs" / "sweep" / "summary.json").write_text(json.dumps(
        {"runs": runs, "device": "cpu:0", "jax_version": "0.10.2", "precision": "float32"}))
    arms = [{"label": "0.5", "workdir": "runs/sweep", "where": {"sigma_scale": 0.5}},
            {"label": "2, seed 1", "workdir": "runs/sweep", "where": {"sigma_scale": 2.0, "seed": [1, 3]}}]
    data = tmp_path / "runs.json"
    data.write_text(json.dumps({"title": "t", "panels": [{"title": "sigma_scale", "commands": "c", "arms": arms}]}))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "runs.png"
    figures.main(["--data", str(data), "--out", str(out), "--collect"])
    with open(out, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with open(data) as f:
        collected = json.load(f)["panels"][0]["arms"]
    assert [[r["run"] for r in arm["runs"]] for arm in collected] == [[0, 1], [3]]
    assert collected[0]["source"] == {"device": "cpu:0", "jax_version": "0.10.2", "precision": "float32"}
    assert "params_sha256" not in collected[0]["runs"][0]
    figures.main(["--data", str(data), "--out", str(out)])  # from the file alone

    arms[1]["where"] = {"sigma_scale": 1.0}
    with pytest.raises(ValueError, match="arm '2, seed 1': no run of .* has"):
        figures.collect({"panels": [{"title": "p", "commands": "c", "arms": arms}]}, str(tmp_path))
    arms[1]["workdir"] = "runs/missing"
    with pytest.raises(ValueError, match="arm '2, seed 1': no .*missing/summary.json: train its runs first"):
        figures.collect({"panels": [{"title": "p", "commands": "c", "arms": arms}]}, str(tmp_path))
