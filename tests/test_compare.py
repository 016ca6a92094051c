"""`bsn compare`: two synthetic runs (the report tests' builder) that differ in config keys, in
a model and in one claim's verdict, compared through the command line."""

from __future__ import annotations

import copy
import json
import re
import shutil
from dataclasses import replace
from html import unescape
from pathlib import Path

import pytest

from bigram_subnetworks.cli import main
from bigram_subnetworks.config import Config, validate_config, write_effective_config
from bigram_subnetworks.io import write_json
from bigram_subnetworks.report.build import findings, headline_metrics
from bigram_subnetworks.report.compare import difference, flatten, report_inputs
from bigram_subnetworks.report.tables import load_run
from test_report import RAW_CONFIG, Spec, write_run

# beta: the overlap with the optimal mask is 2x chance at p = 0.001 (the paper's claim fails)
FLIP = {"overlap_ratio": 2.0, "overlap_p": 0.001}
BEST_ABOVE_FULL = "Bigram subnetworks match bigram surprisal better than the full model does"


def finished_run(root: Path, raw: dict, spec: Spec) -> Path:
    """A synthetic run with its effective config and the metrics.json its report would write."""
    cfg: Config = validate_config(copy.deepcopy(raw))
    run_dir, _ = write_run(root, cfg, spec)
    write_effective_config(cfg, run_dir / "config.yaml")
    models, checkpoints, found = findings(load_run(cfg, report_inputs(cfg, run_dir)))
    write_json(headline_metrics(models, checkpoints, found), run_dir / "metrics.json")
    return run_dir


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("compare")
    finished_run(root, {**RAW_CONFIG, "run": "alpha"}, Spec())
    beta = copy.deepcopy(RAW_CONFIG) | {"run": "beta", "seed": 7}
    beta["models"]["tiny-c"] = beta["models"].pop("tiny-a") | {"d_model": 32}
    finished_run(root, beta, replace(Spec(), **FLIP))
    return root


@pytest.fixture(scope="module")
def pages(project: Path) -> tuple[str, str]:
    """`bsn compare alpha results/beta` from the project root (a name and a folder)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(project)
        assert main(["compare", "alpha", "results/beta", "--output", "out/cmp.html"]) == 0
    html = (project / "out" / "cmp.html").read_text("utf-8")
    markdown = (project / "out" / "cmp.md").read_text("utf-8")
    return html, markdown


def _row(html: str, first_cell: str) -> str:
    """The HTML table row whose first cell is `first_cell` (text, unescaped)."""
    for row in re.findall(r"<tr[^>]*>.*?</tr>", html, flags=re.S):
        cells = re.findall(r"<td[^>]*>(.*?)</td>", row, flags=re.S)
        if cells and unescape(re.sub("<[^>]+>", "", cells[0])) == first_cell:
            return row
    raise AssertionError(f"no row {first_cell!r}")


def test_both_pages_are_written_with_every_section(pages: tuple[str, str]) -> None:
    html, markdown = pages
    for title in (
        "Runs",
        "Configuration differences",
        "Claims of the paper",
        "Headline numbers per model",
        "Across checkpoints",
    ):
        assert f"<h2>{title}</h2>" in html
        assert f"## {title}" in markdown
    assert "<script" not in html and "http" not in html
    assert "<th>alpha</th><th>beta</th>" in html
    assert "| alpha | beta |" in markdown


def test_the_config_differences_are_listed_key_by_key(pages: tuple[str, str]) -> None:
    html, markdown = pages
    section = html[html.index("<h2>Configuration differences</h2>") :]
    section = section[: section.index("</table>")]
    seed = _row(section, "seed")
    assert 'class="differs"' in seed and "<td>0</td><td>7</td>" in seed
    assert "<td>alpha</td><td>beta</td>" in _row(section, "run")
    assert "(absent)</td>" in _row(section, "models.tiny-c.d_model")
    assert "(absent)</td>" in _row(section, "models.tiny-a.layers")
    for same in ("corpus.name", "models.tiny-b.layers"):  # equal keys are left out
        with pytest.raises(AssertionError):
            _row(section, same)
    assert "| seed | 0 | 7 | **differs** |" in markdown


def test_verdicts_side_by_side_with_the_difference_highlighted(pages: tuple[str, str]) -> None:
    html, markdown = pages
    overlap = _row(html, "Bigram and optimal subnetworks overlap far more than chance")
    assert overlap.startswith('<tr class="verdict">')
    assert '<span class="badge holds">holds</span>' in overlap
    assert '<span class="badge fails">does not hold</span>' in overlap
    assert "verdict differs" in overlap
    # the numbers that decided each verdict, intervals included, one click away
    assert overlap.count("<details><summary>numbers</summary>") == 3  # paper, alpha, beta
    assert re.search(r"\d\.\d+ \[\d\.\d+, \d\.\d+\]", _row(html, BEST_ABOVE_FULL))
    same = [r for r in re.findall(r"<tr[^>]*>.*?</tr>", html, re.S) if "badge holds" in r]
    assert any('class="verdict"' not in r for r in same)  # unchanged verdicts: no highlight
    line = next(
        m for m in markdown.splitlines() if m.startswith("| Bigram and optimal subnetworks overlap")
    )
    assert "**holds**" in line and "**does not hold**" in line
    assert line.endswith("| **verdict differs** |")


def test_headline_numbers_keep_their_intervals(pages: tuple[str, str]) -> None:
    html, _ = pages
    section = html[html.index("<h2>Headline numbers per model</h2>") :]
    full = _row(section, "tiny-b")  # tiny-b's first metric row
    assert "tiny-b" in full
    rows = re.findall(r"<tr[^>]*>.*?</tr>", section, re.S)
    r_row = next(r for r in rows if "<td>tiny-b</td><td>full_model_r</td>" in r)
    assert r_row.count("0.700 [0.695, 0.705]") == 2  # the same in both runs
    assert "<tr>" in r_row[:4]  # not highlighted
    ratio = next(r for r in rows if "<td>tiny-b</td><td>overlap_row_ratio</td>" in r)
    assert ratio.startswith('<tr class="differs">') and "<td>8</td><td>2</td>" in ratio
    # tiny-a is only in alpha, tiny-c only in beta
    a_row = next(r for r in rows if "<td>tiny-a</td><td>best_r</td>" in r)
    assert "0.900 [0.895, 0.905]</td><td>–</td>" in a_row and "not in every run" in a_row
    assert "interval" not in "".join(re.findall(r"<td>tiny-\w</td><td>([^<]*)</td>", section))


def test_intervals_apart_is_said_only_where_they_do_not_overlap() -> None:
    def run(value: float, half: float) -> dict:
        return {"r": value, "r_interval": {"low": value - half, "high": value + half}}

    assert difference([run(0.70, 0.01), run(0.70, 0.01)], "r") == ""
    assert difference([run(0.70, 0.01), run(0.71, 0.01)], "r") == "differs"
    assert difference([run(0.70, 0.01), run(0.73, 0.01)], "r") == "intervals apart"
    assert difference([run(0.70, 0.01), {"r": 0.9}], "r") == "differs"  # one without interval
    assert difference([run(0.70, 0.01), run(0.70, 0.02)], "r") == "differs"  # the interval
    assert difference([run(0.70, 0.01), {}, run(0.70, 0.01)], "r") == "not in every run"
    assert difference([run(0.70, 0.01), {}, run(0.75, 0.01)], "r") == "intervals apart"


def test_flatten_gives_dotted_keys() -> None:
    nested = {"a": {"b": 1, "c": {"d": [1, 2]}}, "e": {}, "f": None}
    assert flatten(nested) == {"a.b": 1, "a.c.d": [1, 2], "e": {}, "f": None}


def test_the_comparison_reads_what_the_report_wrote(project: Path) -> None:
    """metrics.json (written from the same findings) and the page's numbers agree."""
    metrics = json.loads((project / "results" / "beta" / "metrics.json").read_text("utf-8"))
    assert metrics["models"]["tiny-b"]["overlap_row_ratio"] == pytest.approx(2.0)
    assert metrics["claims"]["does_not_hold"] >= 1


@pytest.mark.parametrize(
    ("remove", "expected"),
    [
        ("config.yaml", r"not a run folder: \S*config\.yaml is missing"),
        ("metrics.json", r"not a finished run: \S*metrics\.json is missing; .*report"),
    ],
)
def test_a_folder_that_is_not_a_finished_run_is_one_line(
    project: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    remove: str,
    expected: str,
) -> None:
    broken = tmp_path / "results" / "broken"
    broken.mkdir(parents=True)
    for name in ("config.yaml", "metrics.json"):
        if name != remove:
            (broken / name).write_bytes((project / "results" / "alpha" / name).read_bytes())
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(project)
        code = main(["compare", "alpha", str(broken), "--output", str(tmp_path / "x.html")])
    assert code == 1
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and error.startswith("bsn compare: error: ")
    assert re.search(expected, error), error
    assert not (tmp_path / "x.html").exists() and not (tmp_path / "x.md").exists()


def test_unknown_names_and_a_single_run_are_refused(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(project)
        assert main(["compare", "alpha", "gamma"]) == 1
        assert "gamma: no such run folder (nor results/gamma)" in capsys.readouterr().err
        assert main(["compare", "alpha", "results/alpha"]) == 1
        assert "at least two different runs" in capsys.readouterr().err
    assert not (project / "compare.html").exists()


def test_a_stale_metrics_json_is_said_and_the_tables_win(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stale = project / "results" / "alpha-stale"
    shutil.copytree(project / "results" / "alpha", stale)
    metrics = json.loads((stale / "metrics.json").read_text("utf-8"))
    metrics["models"]["tiny-b"]["best_r"] = 0.123
    (stale / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(project)
        assert main(["compare", "alpha", "alpha-stale", "--output", "stale.html"]) == 0
    assert "alpha-stale: metrics.json differs from the run's tables" in capsys.readouterr().err
    html = (project / "stale.html").read_text("utf-8")
    assert "0.123" not in html and html.count("<td>tiny-b</td><td>best_r</td><td>0.900") == 1
