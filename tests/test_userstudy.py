"""The user study (paper B.3): page / key / CSV from a run directory, tally with the sign test and
Fleiss' kappa, bad input through the CLI, and a real headless Chromium voting with keys and mouse."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from midre.attacks.base import Reconstructions
from midre.cli import main
from midre.userstudy import ANSWERS, fleiss_kappa, make_study, tally

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def fabricate_run(run: Path, n_ids: int = 6, repeats: int = 2, targets=("nodef", "midre")) -> Path:
    """A minimal valid `midre run` layout: config.yaml (tiny synthetic data) + reconstructions per target."""
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"name": "fab", "seed": 0, "dataset": {
        "name": "synthetic", "resolution": 16, "seed": 0,
        "options": {"num_private": n_ids, "num_public": 0, "images_per_id": 4}}}))
    g = torch.Generator().manual_seed(0)
    for t in targets:
        ids = torch.arange(n_ids).repeat_interleave(repeats)
        Reconstructions(torch.rand(len(ids), 3, 16, 16, generator=g), ids, torch.arange(repeats).repeat(n_ids),
                        torch.rand(len(ids), generator=g), {"attack": "gmi"}).save(run / "attacks" / t / "gmi")
    return run


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    run = fabricate_run(tmp_path_factory.mktemp("run") / "run")
    return make_study(run, seed=3)


def _votes(path: Path, rater: str, key: dict, answers: list[str]) -> Path:
    path.write_text(json.dumps({"format": "midre-userstudy-votes", "study_id": key["study_id"], "rater": rater,
                                "votes": [{"pair": p["id"], "answer": a} for p, a in zip(key["pairs"], answers)]}))
    return path


def _expected(key: dict, per_rater: list[list[str]]) -> dict[str, int]:
    A, B = key["defenses"]
    counts = {A: 0, B: 0, "neither": 0, "both": 0}
    for answers in per_rater:
        for p, a in zip(key["pairs"], answers):
            counts[p[a] if a in ("left", "right") else a] += 1
    return counts


# ------------------------------------------------------------------------------ make
def test_make_writes_a_blinded_self_contained_page_key_and_csv(study):
    key = json.loads((study / "key.json").read_text())
    page = (study / "study.html").read_text()
    assert key["defenses"] == ["midre", "nodef"] and len(key["pairs"]) == 6
    assert {p["identity"] for p in key["pairs"]} == set(range(6))
    data = page.split('<script id="study-data" type="application/json">')[1].split("</script>")[0]
    assert set(json.loads(data)) == {"study_id", "question", "pairs"}
    assert "nodef" not in page and "midre" not in data           # raters cannot see which defense is which
    assert "http://" not in page and "https://" not in page and "src=\"http" not in page   # offline
    assert page.count("data:image/png;base64,") == 3 * 6
    sides = {(p["left"], p["right"]) for p in key["pairs"]}
    assert sides == {("midre", "nodef"), ("nodef", "midre")}      # randomised (both orders occur) and recorded
    rows = list(csv.DictReader((study / "pairs.csv").open()))
    assert [r["pair_id"] for r in rows] == [p["id"] for p in key["pairs"]]
    assert all((study / r["image_a_url"]).exists() for r in rows)


def test_sides_and_picks_follow_the_seed(tmp_path, study):
    run = fabricate_run(tmp_path / "run")
    again = json.loads((make_study(run, tmp_path / "s3", seed=3) / "key.json").read_text())["pairs"]
    other = json.loads((make_study(run, tmp_path / "s4", seed=4) / "key.json").read_text())["pairs"]
    base = json.loads((study / "key.json").read_text())["pairs"]
    strip = lambda ps: [(p["id"], p["left"], p["private_index"], p["recon_index"]) for p in ps]   # noqa: E731
    assert strip(again) == strip(base)
    assert strip(other) != strip(base)


# ------------------------------------------------------------------------------ tally
def test_fleiss_kappa_matches_the_textbook_example():
    # Fleiss (1971) / Wikipedia: 10 subjects, 14 raters, 5 categories -> kappa = 0.210
    table = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
             [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]
    assert fleiss_kappa(table) == pytest.approx(0.20993, abs=1e-4)
    assert fleiss_kappa([[3, 0], [0, 3]]) == pytest.approx(1.0)


def test_tally_maps_sides_back_to_defenses(tmp_path, study):
    from scipy.stats import binomtest

    key = json.loads((study / "key.json").read_text())
    r1 = ["left", "left", "right", "neither", "both", "left"]
    r2 = ["left", "right", "right", "neither", "left", "left"]
    files = [_votes(tmp_path / "a.json", "a", key, r1), _votes(tmp_path / "b.json", "b", key, r2)]
    t = tally(files, key=study / "key.json")
    exp = _expected(key, [r1, r2])
    assert t["counts"] == exp and t["votes"] == 12 and t["raters"] == 2
    A, B = key["defenses"]
    assert t["sign_test"]["p_value"] == pytest.approx(binomtest(exp[A], exp[A] + exp[B], 0.5).pvalue)
    assert -1 <= t["fleiss_kappa"] <= 1


def test_tally_reads_a_crowdsourcing_results_csv(tmp_path, study):
    key = json.loads((study / "key.json").read_text())
    with (tmp_path / "batch.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["HITId", "WorkerId", "Input.pair_id", "Input.study_id", "Answer.answer"])
        for worker in ("W1", "W2", "W3"):
            for p in key["pairs"]:
                w.writerow(["h", worker, p["id"], key["study_id"], "left"])
    t = tally([tmp_path / "batch.csv"], key=study)
    lefts = [p["left"] for p in key["pairs"]]
    assert t["counts"][key["defenses"][0]] == 3 * lefts.count(key["defenses"][0])
    assert t["fleiss_kappa"] == pytest.approx(1.0)   # the three workers agree on every pair
    assert t["raters"] == 3 and t["kappa_items"] == 6


# ------------------------------------------------------------------------------ bad input: one line, exit 2
def _cli(args, capsys) -> tuple[int, str]:
    rc = main([str(a) for a in args])
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("case", ["no-run", "no-recons", "bad-attack", "bad-defense", "not-json", "other-study",
                                  "bad-answer", "no-key", "same-file-twice", "csv-other-study", "csv-no-columns"])
def test_bad_input_is_one_line_and_exit_2(case, tmp_path, study, capsys):
    key = json.loads((study / "key.json").read_text())
    good = _votes(tmp_path / "v.json", "r", key, ["left"] * 6)
    (tmp_path / "empty").mkdir()
    (tmp_path / "garbage.json").write_text("{not json")
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"format": "midre-userstudy-votes", "study_id": "x", "votes": []}))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "midre-userstudy-votes", "study_id": key["study_id"],
                               "votes": [{"pair": key["pairs"][0]["id"], "answer": "maybe"}]}))
    run = study.parents[1]
    (tmp_path / "o.csv").write_text(f"WorkerId,Input.pair_id,Input.study_id,Answer.answer\nW,{key['pairs'][0]['id']},x,left\n")
    (tmp_path / "n.csv").write_text("a,b\n1,2\n")
    args = {"no-run": ["userstudy", "make", tmp_path / "nope"],
            "no-recons": ["userstudy", "make", tmp_path / "empty"],
            "bad-attack": ["userstudy", "make", run, "--attack", "ppa", "--out", tmp_path / "o"],
            "bad-defense": ["userstudy", "make", run, "--defenses", "nodef,bido", "--out", tmp_path / "o"],
            "not-json": ["userstudy", "tally", tmp_path / "garbage.json", "--key", study],
            "other-study": ["userstudy", "tally", other, "--key", study],
            "bad-answer": ["userstudy", "tally", bad, "--key", study],
            "no-key": ["userstudy", "tally", good],
            "same-file-twice": ["userstudy", "tally", good, good, "--key", study],
            "csv-other-study": ["userstudy", "tally", tmp_path / "o.csv", "--key", study],
            "csv-no-columns": ["userstudy", "tally", tmp_path / "n.csv", "--key", study]}[case]
    rc, err = _cli(args, capsys)
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------ a real headless browser
def _browser(tmp_path: Path):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed (pip install midre[userstudy-test])")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
              "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
              f"--user-data-dir={tmp_path / 'profile'}"):
        opts.add_argument(a)
    opts.add_experimental_option("prefs", {"download.default_directory": str(tmp_path / "dl"),
                                           "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(tmp_path / "dl")})
    return driver


def _vote_all(driver, answers: list[str]) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    driver.find_element(By.TAG_NAME, "h1").click()       # focus off the name field
    for i, a in enumerate(answers):
        assert driver.execute_script("return window.midreStudy.position()") == i
        if i % 2 == 0:
            ActionChains(driver).send_keys(str(ANSWERS.index(a) + 1)).perform()   # keyboard 1-4
        else:
            driver.find_element(By.ID, f"btn-{a}").click()                        # mouse
        assert driver.find_element(By.TAG_NAME, "body").get_attribute("data-answered") == str(i + 1)


def _export(driver, dl: Path, before: set) -> dict:
    from selenium.webdriver.common.by import By

    driver.find_element(By.ID, "export").click()
    for _ in range(100):
        new = [p for p in dl.glob("*.json") if p not in before]
        if new:
            return json.loads(new[0].read_text())
        time.sleep(0.1)
    raise AssertionError("the export did not download a file")


@pytest.mark.skipif(not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
                    reason="Chromium not installed: apt-get install -y chromium chromium-driver")
def test_headless_chromium_votes_export_and_tally(tmp_path, study):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    key = json.loads((study / "key.json").read_text())
    (tmp_path / "dl").mkdir()
    driver = _browser(tmp_path)
    try:
        driver.get((study / "study.html").resolve().as_uri())
        name = driver.find_element(By.ID, "rater")
        name.clear()
        name.send_keys("alice 1234")                      # digits typed in the name field are not votes
        r1 = ["left", "right", "neither", "both", "left", "left"]
        _vote_all(driver, r1)
        ActionChains(driver).send_keys(Keys.ARROW_LEFT).perform()      # back to the 5th pair, change its answer
        assert driver.execute_script("return window.midreStudy.position()") == 4
        ActionChains(driver).send_keys("2").perform()
        r1[4] = "right"
        driver.refresh()                                   # votes survive a reload (localStorage)
        assert driver.find_element(By.TAG_NAME, "body").get_attribute("data-answered") == "6", (
            "votes lost on reload; localStorage after the reload: "
            + str(driver.execute_script("return JSON.stringify(localStorage)")))
        v1 = _export(driver, tmp_path / "dl", set())
        assert json.loads(driver.execute_script("return window.midreStudy.exportVotes()"))["votes"] == v1["votes"]
        assert v1["rater"] == "alice 1234" and [v["answer"] for v in v1["votes"]] == r1
        driver.execute_script("localStorage.clear()")     # a second rater on the same page
        driver.refresh()
        driver.find_element(By.ID, "rater").clear()
        driver.find_element(By.ID, "rater").send_keys("bob")
        r2 = ["left", "left", "neither", "right", "both", "left"]
        _vote_all(driver, r2)
        v2 = _export(driver, tmp_path / "dl", set((tmp_path / "dl").glob("*.json")))
    finally:
        driver.quit()
    files = sorted((tmp_path / "dl").glob("*.json"))
    assert len(files) == 2
    out = subprocess.run([sys.executable, "-m", "midre.cli", "userstudy", "tally", *map(str, files), "--key", str(study),
                          "--json", str(tmp_path / "t.json")], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    t = json.loads((tmp_path / "t.json").read_text())
    exp = _expected(key, [r1, r2])
    assert t["counts"] == exp and t["raters"] == 2 and t["votes"] == 12
    A, B = key["defenses"]
    assert f"| {A} | {exp[A]} |" in out.stdout and f"| Neither | {exp['neither']} |" in out.stdout
    assert v2["rater"] == "bob"
