"""Edges a user meets first: their own modules by import path, shipped recipes by name (also as ``extends:``),
typo'd keys, the recipes inside a real wheel."""
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from posttrain.cli import add_user_import_paths, main
from posttrain.recipes import RecipeError, load_recipe
from posttrain.recipes.loader import RECIPES_DIR, shipped_recipe_path, shipped_recipes

ROOT = Path(__file__).resolve().parents[1]

USER_REWARD = "def fn(completions, **kwargs):\n    return [1.0 for _ in completions]\n"


def _user_project(tmp_path, module="my_edge_rewards"):
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / f"{module}.py").write_text(USER_REWARD)
    (proj / "r.yaml").write_text(f"extends: tiny_grpo\nrewards:\n  - {{name: '{module}:fn'}}\n")
    return proj


def _console_script_like(tmp_path) -> Path:
    """A launcher script outside the project, as the ``posttrain`` console script is: Python puts the *script's*
    directory first on sys.path, not the current directory."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = bindir / "posttrain"
    script.write_text("import sys\nfrom posttrain.cli import main\nsys.exit(main())\n")
    return script


def test_user_module_from_cwd_with_a_console_script(tmp_path):
    proj = _user_project(tmp_path)
    script = _console_script_like(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    res = subprocess.run([sys.executable, str(script), "validate", "r.yaml"], cwd=proj, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "r.yaml: OK (grpo, model tiny, 1 reward(s))" in res.stdout
    # the same script with the module missing fails with the one-line import error: the test can fail
    (proj / "my_edge_rewards.py").unlink()
    res = subprocess.run([sys.executable, str(script), "validate", "r.yaml"], cwd=proj, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "cannot import module 'my_edge_rewards'" in res.stderr


def test_add_user_import_paths_puts_cwd_then_recipe_dir_first(tmp_path, monkeypatch):
    work, rdir = tmp_path / "work", tmp_path / "recipes_here"
    work.mkdir(), rdir.mkdir()
    (rdir / "r.yaml").write_text("x: 1\n")
    monkeypatch.chdir(work)
    monkeypatch.setattr(sys, "path", ["/nonexistent-a", "/nonexistent-b"])
    added = add_user_import_paths(str(rdir / "r.yaml"))
    assert added == [str(work), str(rdir)]
    assert sys.path == [str(work), str(rdir), "/nonexistent-a", "/nonexistent-b"]
    assert add_user_import_paths(str(rdir / "r.yaml")) == []  # idempotent
    # a shipped recipe's directory is not added; '' (python -c / -m) already counts as the cwd
    monkeypatch.setattr(sys, "path", ["", "/nonexistent-a"])
    assert add_user_import_paths(str(RECIPES_DIR / "tiny_grpo.yaml")) == []
    assert sys.path == ["", "/nonexistent-a"]


def test_recipe_dir_module_found_when_run_from_elsewhere(tmp_path, monkeypatch, capsys):
    proj = _user_project(tmp_path, module="my_edge_rewards_rdir")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setattr(sys, "path", list(sys.path))
    assert main(["validate", str(proj / "r.yaml")]) == 0
    assert "OK (grpo" in capsys.readouterr().out


def test_extends_a_shipped_recipe_by_name(tmp_path):
    p = tmp_path / "mine.yaml"
    p.write_text("extends: tiny_grpo\ntrain: {max_steps: 7}\n")
    r = load_recipe(p)
    assert r.train["max_steps"] == 7 and r.model.name == "tiny" and r.train["num_generations"] == 4
    p.write_text("extends: tiny_dpo.yaml\n")  # with the suffix too
    assert load_recipe(p).algorithm == "dpo"
    # a local file of the same name wins over the shipped recipe
    (tmp_path / "tiny_grpo.yaml").write_text((RECIPES_DIR / "tiny_grpo.yaml").read_text().replace(
        "max_steps: 2", "max_steps: 3"))
    p.write_text("extends: tiny_grpo.yaml\n")
    assert load_recipe(p).train["max_steps"] == 3
    p.write_text("extends: no_such_recipe\n")
    with pytest.raises(RecipeError, match="extends: 'no_such_recipe' is neither a recipe file .* nor a shipped"):
        load_recipe(p)
    assert shipped_recipe_path("../tiny_grpo") is None and shipped_recipe_path("tiny_grpo") is not None


def test_typo_of_a_top_level_key_is_named_with_a_suggestion(tmp_path, capsys):
    p = tmp_path / "r.yaml"
    p.write_text("modle: {name: tiny}\ndata: {train: {name: arithmetic}}\nrewards: [{name: math_answer}]\n")
    assert main(["validate", str(p)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"posttrain: error: {p}: modle: unknown key (did you mean 'model'?)"), err
    assert "\n" not in err
    # nested keys, list items: suggestions come from the right section
    for text, expected in [
        ("model: {name: tiny, lroa: {r: 4}}", "model.lroa: unknown key (did you mean 'lora'?)"),
        ("model: {name: tiny}\nrewards: [{name: math_answer, wieght: 2}]", "rewards.0.wieght: unknown key "
                                                                          "(did you mean 'weight'?)"),
        ("model: {name: tiny}\nbogus: 1", "bogus: unknown key"),
    ]:
        p.write_text("data: {train: {name: arithmetic}}\nrewards: [{name: math_answer}]\n" + text + "\n")
        with pytest.raises(RecipeError) as info:
            load_recipe(p)
        assert expected in str(info.value), str(info.value)
    assert "did you mean" not in str(info.value)


def test_shipped_recipes_are_the_top_level_recipes_dir():
    assert RECIPES_DIR == (ROOT / "recipes").resolve()
    names = {n for n, _, _ in shipped_recipes()}
    assert {p.stem for p in (ROOT / "recipes").glob("*.yaml")} == names and "tiny_grpo" in names


def test_wheel_ships_the_recipes(tmp_path):
    """A real ``pip wheel`` (no build isolation: offline) holds every recipe under posttrain/recipes/shipped, and
    an unpacked wheel's ``shipped_recipes()`` finds them without the repository."""
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
                          "-q", "-w", str(tmp_path)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    (wheel,) = tmp_path.glob("posttrain-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        shipped = sorted(Path(n).name for n in names if n.startswith("posttrain/recipes/shipped/"))
        assert shipped == sorted(p.name for p in (ROOT / "recipes").glob("*.yaml"))
        assert "posttrain/configs/zero3.json" in names
        site = tmp_path / "site"
        zf.extractall(site)
    code = ("import posttrain.recipes.loader as L; rows = L.shipped_recipes(); "
            "print(L.RECIPES_DIR); print(len(rows)); print(L.load_recipe(L.shipped_recipe_path('tiny_dpo_beta')).algorithm)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                         env=dict(os.environ, PYTHONPATH=str(site)))
    assert res.returncode == 0, res.stderr[-2000:]
    where, count, algo = res.stdout.split()
    assert where == str(site / "posttrain" / "recipes" / "shipped") and int(count) == len(shipped) and algo == "dpo"


def test_closed_stdout_is_not_a_traceback(tmp_path):
    """`posttrain recipes | head -1`: the reader may leave before we write; exit quietly (141), no traceback."""
    proc = subprocess.Popen([sys.executable, "-m", "posttrain", "recipes"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=ROOT)
    proc.stdout.close()  # before the child has imported anything: its first write hits a closed pipe
    err = proc.stderr.read().decode()
    code = proc.wait(timeout=120)
    assert "Traceback" not in err and code == 141, (code, err)
