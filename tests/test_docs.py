"""README's claims that tests back: every Security bullet cites tests that exist; the file tree lists exactly
the tracked files; the data-path diagram names real files and functions; each CLI has a console script;
kernels/ and nanoocr/model keep their import boundaries; tests cite docs/FACTS.md sections that exist, and
its tables are the tests' tables; README's Tier-1 promise (readme_tier1_exact_match, for the Tier-1 test)."""
import ast
import importlib
import importlib.metadata
import re
import subprocess
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_security_claim_cites_an_existing_test():
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Security"):]
    section = section[:section.find("\n## ", 5)] if "\n## " in section[5:] else section
    bullets = re.split(r"\n- ", section)[1:]
    assert len(bullets) >= 8, "README's Security section lost its bullets"
    for bullet in bullets:
        if bullet.startswith("**Not covered"):
            continue
        refs = re.findall(r"(test_\w+\.py)::(test_\w+)", bullet)
        assert refs, f"a Security claim cites no test: {bullet[:80]!r}"
        for file, name in refs:
            tree = ast.parse((ROOT / "tests" / file).read_text())
            names = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
            assert name in names, f"README cites {file}::{name}, which does not exist"


def readme() -> str:
    return (ROOT / "README.md").read_text()


def code_block_after(text: str, heading: str) -> list[str]:
    """The lines of the first ``` block after `heading`."""
    rest = text[text.index(heading):]
    start = rest.index("```")
    body = rest[rest.index("\n", start) + 1:]
    return body[:body.index("```")].splitlines()


# ----------------------------------------------------------------------------------------------------
# The file tree


def readme_tree() -> dict[str, str]:
    """README's "## Files" tree as {path: description}: two spaces of indent per level, a folder ends in /."""
    listed, folders = {}, []
    for line in code_block_after(readme(), "## Files"):
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip(" "))
        assert indent % 2 == 0 and indent // 2 <= len(folders), f"README tree: bad indentation: {line!r}"
        del folders[indent // 2:]
        name, _, what = line.strip().partition(" ")
        if name.endswith("/"):
            folders.append(name)
            continue
        path = "".join(folders) + name
        assert path not in listed, f"README tree lists {path} twice"
        listed[path] = what.strip()
    return listed


def test_file_tree_lists_exactly_the_tracked_files():
    tracked = set(subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                                 check=True).stdout.split())
    assert len(tracked) > 100, "git ls-files listed almost nothing: not the project's checkout?"
    listed = readme_tree()
    missing, extra = sorted(tracked - set(listed)), sorted(set(listed) - tracked)
    assert not missing, f"tracked files missing from README's tree (add a line each): {missing}"
    assert not extra, f"README's tree lists files git does not track: {extra}"
    assert all(listed.values()), f"tree lines without a description: {[p for p, w in listed.items() if not w]}"


def test_data_path_names_real_files_and_functions():
    """Each file the data-path diagram names exists, and a name after a file is defined in it."""
    block = code_block_after(readme(), "## The data path")
    n_paths = n_names = 0
    for line in block:
        paths = re.findall(r"nanoocr/[\w/*]+(?:\.py|/)", line)
        for path in paths:
            assert list(ROOT.glob(path)), f"the data path names {path}, which does not exist"
            n_paths += 1
        last = line.split()[-1] if line.split() else ""
        named = re.fullmatch(r"[A-Za-z_][\w.]*", last) and not last.endswith(".py")
        if named and paths and paths[-1].endswith(".py") and "*" not in paths[-1]:
            tree = ast.parse((ROOT / paths[-1]).read_text())
            defined = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
            assert set(last.split(".")) <= defined, f"{last} is not defined in {paths[-1]}"
            n_names += 1
    assert n_paths >= 8 and n_names >= 5, (n_paths, n_names)


# ----------------------------------------------------------------------------------------------------
# Console scripts and import boundaries


def test_console_scripts_are_the_cli_mains():
    """Each `python -m nanoocr.<cli>` shim has a console script of the same `main`, and README names it.
    Entry points exist once the package is installed (`pip install -e .`, what `make` does)."""
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    installed = {ep.name: ep for ep in importlib.metadata.distribution("nanoocr").entry_points
                 if ep.group == "console_scripts"}
    assert installed.keys() == scripts.keys(), "installed console scripts differ from pyproject.toml: pip install -e ."
    shims = sorted(p.stem for p in (ROOT / "nanoocr").glob("*.py") if p.name != "__init__.py")
    assert len(shims) == len(scripts) == 9, (shims, sorted(scripts))
    mains = {}
    for name, ep in installed.items():
        assert ep.value == scripts[name], f"{name}: installed {ep.value}, pyproject.toml {scripts[name]}"
        fn = ep.load()
        assert callable(fn) and fn.__name__ == "main", f"{name} -> {ep.value} is not a main function"
        mains[fn] = name
        assert f"`{name}`" in readme(), f"README does not name the console script {name}"
    for shim in shims:
        fn = importlib.import_module(f"nanoocr.{shim}").main
        assert fn in mains, f"python -m nanoocr.{shim} runs {fn.__module__}.main, which no console script runs"


def absolute_imports(path: Path) -> list[str]:
    """Every module a file imports, at any depth (function-level imports too); relative ones resolved."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                found.append(".".join(base + ([node.module] if node.module else [])))
            else:
                found.append(node.module)
    return found


def _under(module: str, roots: tuple[str, ...]) -> bool:
    return any(module == r or module.startswith(r + ".") for r in roots)


def test_kernels_import_nothing_of_nanoocr():
    files = sorted((ROOT / "kernels").glob("*.py"))
    assert len(files) >= 3
    for path in files:
        bad = [m for m in absolute_imports(path) if _under(m, ("nanoocr",))]
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}: kernels/ must stand alone"


def test_model_imports_neither_composer_nor_data():
    """nanoocr/model runs without Composer and without the data path (nor train/ or eval/ above it)."""
    found = set()
    for path in sorted((ROOT / "nanoocr" / "model").glob("*.py")):
        for module in absolute_imports(path):
            if _under(module, ("composer", "nanoocr.data", "nanoocr.train", "nanoocr.eval")):
                found.add((str(path.relative_to(ROOT)), module))
    assert not found, f"nanoocr/model imports outside the model: {sorted(found)}"


# ----------------------------------------------------------------------------------------------------
# docs/FACTS.md and the numbers README promises


def facts_sections() -> set[str]:
    return set(re.findall(r"^## (.+)$", (ROOT / "docs" / "FACTS.md").read_text(), flags=re.M))


def test_tests_cite_facts_sections_that_exist():
    cited = 0
    for path in sorted((ROOT / "tests").glob("*.py")):
        text = path.read_text()
        if path.name == Path(__file__).name:  # this file names it to forbid it
            continue
        assert "REFERENCE.md" not in text, f"{path.name} cites REFERENCE.md, which is not in the repo: cite docs/FACTS.md"
        for group in re.findall(r'docs/FACTS\.md \(?((?:"[^"]+"(?:, )?)+)', text):
            for section in re.findall(r'"([^"]+)"', group):
                assert section in facts_sections(), f'{path.name} cites docs/FACTS.md "{section}", no such section'
                cited += 1
    assert cited >= 10, f"only {cited} citations of docs/FACTS.md found"


def facts_table(section: str) -> list[list[str]]:
    """The rows (cells stripped) of the first Markdown table in a docs/FACTS.md section, header excluded."""
    text = (ROOT / "docs" / "FACTS.md").read_text()
    body = text[text.index(f"## {section}\n"):]
    body = body[:body.find("\n## ", 4)]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in body.splitlines() if line.startswith("|")]
    return [r for r in rows[1:] if not set("".join(r)) <= set("-: ")]


def test_facts_tables_are_the_tests_tables():
    """docs/FACTS.md's token counts and Gundam vectors are the ones tests/test_images.py checks against."""
    from test_images import GUNDAM_ROWS, PLAIN_TOKENS

    modes = {row[0]: row[-1] for row in facts_table("Image modes")}
    assert {m: int(modes[m]) for m in PLAIN_TOKENS} == PLAIN_TOKENS
    gundam = {}
    for image, *cells in facts_table("Gundam crop grids"):
        w, h = (int(x) for x in image.split("x"))
        gundam[(w, h)] = {}
        for max_crops, cell in zip((6, 9), cells):
            tiles, crops, tokens = (x.strip() for x in cell.split("/"))
            gundam[(w, h)][max_crops] = (tuple(int(t) for t in tiles.strip("()").split(",")), int(crops), int(tokens))
    assert gundam == GUNDAM_ROWS


def readme_tier1_exact_match() -> tuple[int, int]:
    """(K, N) of the Tier-1 result README promises: `make train` "ends with `exact_match: K/N`"."""
    found = re.findall(r"ends with `exact_match: (\d+)/(\d+)`", readme())
    assert len(found) == 1, f"README should promise one Tier-1 exact-match result, found {found}"
    k, n = (int(x) for x in found[0])
    return k, n


def test_readme_tier1_promise_matches_the_yaml():
    k, n = readme_tier1_exact_match()
    yaml = (ROOT / "yamls" / "tier1_overfit.yaml").read_text()
    assert re.search(rf"\({k}/{n} expected\)", yaml), "yamls/tier1_overfit.yaml's header promises another result"
    assert f"synthetic:overfit10:{n}:" in yaml, f"Tier-1 does not build {n} samples"
    assert 0 < k <= n
