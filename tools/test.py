"""The project's tests, as nbdev's own CI action runs them, offline, and the pages as a reader sees them.

1. notebooks are clean (`nbdev_clean` changes nothing) and their code is formatted (`ruff format --check nbs`: about 110 columns);
2. the code passes `ruff check nbs tools` (pyflakes' rules and syntax errors, `[tool.ruff.lint]` in pyproject.toml);
3. the library is in sync (`nbdev_export` changes nothing in `biogpt/`), and `python -m biogpt.cli --help` shows the
   options of `biogpt` (the command `python -m biogpt.cli` runs);
4. README.md is in sync with `nbs/index.ipynb`, and `.ci/run` runs exactly its test command;
5. every relative link between pages resolves and every figure a page names exists; the docs inputs are complete
   (every page in the sidebar and navbar exists, `_quarto.yml` has one source) and nbdev's processing step for Quarto runs;
6. the pages as published: each notebook as nbdev hands it to Quarto, rendered to HTML by nbconvert from its stored
   outputs (nothing runs), shows every `figures/*.png` it names, and the results page shows every verdict sentence of
   `results/pythia_study.json`, every ablation finding of `results/ablations.json` and every verdict of `results/dsn.json`;
7. every notebook runs top to bottom on CPU, each in a fresh process, as `nbdev.test.test_nb` runs it (cells flagged
   with a `tst_flags` flag, `slow`, are skipped and keep their stored outputs), and what each cell shows is what the
   notebook stores (`tools/pages.py`: `execute`, `differences`): a cell that shows nothing stores nothing; text outputs
   (streams, text/plain, text/markdown, text/html) equal the stored ones after `pages.normalise` (the repository,
   temporary and home folders, memory addresses); images match in kind and count (PNG bytes change with matplotlib).
   A cell whose output varies by nature (timings, floats of a model trained on this CPU, progress) carries the
   directive `#| volatile`: only the kinds of its outputs are compared. nbdev drops the line when it processes the
   notebook for the site (it is no Quarto option), so Quarto never sees it.
   When a page's stored outputs are out of date: `python tools/pages.py nbs/X.ipynb` (executes it and stores what it
   shows), then commit.

Not part of this run: `python tools/widget_check.py` opens `nbs/results.ipynb` in JupyterLab in headless Chromium,
runs it, changes a dropdown of the study's explorer and checks that its output changes (needs `chromium` and
`chromium-driver`, e.g. `apt-get install -y chromium chromium-driver`, and `pip install selenium`).

Prints the versions of Python and the packages that can change a result, one line per check and a closing
`N passed, N failed` line; exits non-zero on any failure.
"""
import hashlib, json, os, re, subprocess, sys, time
from pathlib import Path

os.environ.setdefault('HF_HUB_OFFLINE', '1')  # tests use no network
ROOT = Path(__file__).resolve().parents[1]
os.chdir(ROOT)
sys.path.insert(0, str(ROOT/'tools'))


def snapshot(*folders):
    "Hash of every file under `folders`."
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for f in folders for p in sorted(Path(f).rglob('*'))
            if p.is_file() and '__pycache__' not in p.parts}


def changed(before, after): return sorted(str(p) for p in before.keys() | after.keys() if before.get(p) != after.get(p))


def check_clean():
    before = snapshot('nbs')
    subprocess.run(['nbdev_clean'], check=True)
    if diff := changed(before, snapshot('nbs')): raise AssertionError(f'nbdev_clean changed {diff}: run `nbdev_clean` and commit')


def check_format():
    r = subprocess.run(['ruff', 'format', '--check', 'nbs'], capture_output=True, text=True)
    if r.returncode: raise AssertionError(f'{r.stdout.strip()}: run `ruff format nbs` (and `nbdev_export`) and commit')


def check_lint():
    r = subprocess.run(['ruff', 'check', '--output-format', 'concise', 'nbs', 'tools'], capture_output=True, text=True)
    if r.returncode: raise AssertionError(f'{r.stdout.strip()}\nfix them (`ruff check --fix nbs tools` removes unused imports), `nbdev_export`, and commit')


def check_export():
    before = snapshot('biogpt')
    subprocess.run(['nbdev_export'], check=True)
    if diff := changed(before, snapshot('biogpt')): raise AssertionError(f'nbdev_export changed {diff}: the library is out of sync with its notebooks; run `nbdev_export` and commit')


def check_module_cli():
    "`python -m biogpt.cli` runs `biogpt` (`main`) and no other command: its help names every option of `main`, and run as a script it returns after `main`."
    import inspect
    from biogpt.cli import main
    r = subprocess.run([sys.executable, '-m', 'biogpt.cli', '--help'], capture_output=True, text=True, timeout=120)
    options = [f'--{p}' for p in inspect.signature(main).parameters]
    assert r.returncode == 0 and all(o in r.stdout for o in options), f'`python -m biogpt.cli --help` should show {options} (exit 0); it shows:\n{r.stdout}{r.stderr}'
    # the module as a script, with main's first step stopped: it must end after main, before another command parses argv
    probe = ('import contextlib, runpy, biogpt.core, biogpt.data\n'
             'class Stop(Exception): pass\n'
             'def stop(*args, **kwargs): raise Stop\n'
             'biogpt.data.default_data = stop\n'
             "biogpt.core.user_errors = lambda name: (print('ran', name), contextlib.suppress(Stop))[1]\n"
             "runpy.run_module('biogpt.cli', run_name='__main__', alter_sys=True)\n")
    r = subprocess.run([sys.executable, '-c', probe], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.split() == ['ran', 'biogpt'], f'`python -m biogpt.cli` should run `biogpt` alone; it ran:\n{r.stdout}{r.stderr}'


def check_readme():
    from readme import render_readme
    if render_readme() != (ROOT/'README.md').read_text():
        raise AssertionError('README.md differs from nbs/index.ipynb: run `python tools/readme.py` and commit')


def check_ci():
    readme, ci = (ROOT/'README.md').read_text(), (ROOT/'.ci'/'run').read_text()
    cmd = re.search(r'^# 2\. the tests.*\n(.+)$', readme, re.M)
    assert cmd, "README.md lost its quick-start test command ('# 2. the tests' and the line after it)"
    assert cmd[1].strip() in ci.splitlines(), f'.ci/run must run exactly the README test command: {cmd[1].strip()}'
    from biogpt.perforated import INSTALL
    assert INSTALL in cmd[1], f'the README test command must install PerforatedAI as its chapter says: {INSTALL}'


def check_links():
    "Every relative link of a page (markdown) resolves to a file, and every figure a page names exists."
    bad = []
    for nb in sorted((ROOT/'nbs').glob('*.ipynb')):
        for c in json.loads(nb.read_text())['cells']:
            src = ''.join(c['source'])
            if c['cell_type'] == 'markdown':
                for target in re.findall(r'\]\(([^)\s]+)\)', src):
                    if re.match(r'[a-z]+:', target) or target.startswith('#'): continue   # a web address or an anchor on the page
                    if not (nb.parent/target.split('#')[0]).exists(): bad.append(f'{nb.name} links to {target}')
            for fig in named_figures(c):
                if not (ROOT/'figures'/fig).exists(): bad.append(f'{nb.name} shows figures/{fig}')
    assert not bad, 'links or figures that do not resolve: ' + '; '.join(bad)


def check_docs():
    import yaml
    top, src = ROOT/'_quarto.yml', ROOT/'nbs'/'_quarto.yml'
    assert top.is_symlink() and top.resolve() == src.resolve(), '_quarto.yml must be a link to nbs/_quarto.yml (one source of truth)'
    quarto, sidebar = yaml.safe_load(src.read_text()), yaml.safe_load((ROOT/'nbs'/'sidebar.yml').read_text())
    pages = [p for p in sidebar['website']['sidebar']['contents'] if isinstance(p, str)]
    pages += [s for sec in sidebar['website']['sidebar']['contents'] if isinstance(sec, dict) for s in sec.get('contents', [])]
    pages += [i['href'] for i in quarto['website']['navbar'].get('left', [])]
    missing = [p for p in pages if not (ROOT/'nbs'/p).exists()]
    assert not missing, f'pages listed in the docs config do not exist: {missing}'
    listed = {Path(p).name for p in pages}
    unlisted = [p.name for p in (ROOT/'nbs').glob('*.ipynb') if p.name not in listed]
    assert not unlisted, f'notebooks missing from nbs/sidebar.yml: {unlisted}'
    for f in ['styles.css']: assert (ROOT/'nbs'/f).exists(), f'nbs/{f} missing'
    # nbdev's own pre-render step (what `nbdev_docs` runs before Quarto); Quarto itself is not needed for it
    from nbdev.quarto import refresh_quarto_yml
    from nbdev.serve import proc_nbs
    refresh_quarto_yml()
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        cache = proc_nbs(force=True, n_workers=0)
    mixed = [str(w.message).split('---')[1].strip()[:200] for w in caught if 'imports and other code' in str(w.message)]
    assert not mixed, "cells mix imports with other code, which nbdev's docs step mishandles (move the imports into the chapter's import cell):\n" + '\n'.join(mixed)
    lost = {n for n in listed if n.endswith('.ipynb')} - {p.name for p in cache.glob('*.ipynb')}
    assert not lost, f'nbdev processing lost pages: {lost}'
    assert (cache/'_quarto.yml').exists()


def named_figures(cell) -> list[str]:
    "The `figures/*.png` files a cell names (a path, or the folder and name joined in code)."
    src = ''.join(cell['source'])
    return re.findall(r"figures['\"]?\s*/\s*f?['\"]([\w.-]+\.png)['\"]", src) + re.findall(r'figures/([\w.-]+\.png)', src)


def page_text(html: str) -> str:
    "The text a reader sees in `html`, with white space collapsed."
    import html as h
    return ' '.join(h.unescape(re.sub(r'<[^>]+>', '', re.sub(r'<(script|style)\b.*?</\1>', '', html, flags=re.S))).split())


def check_pages():
    """Each page as the site shows it: nbdev's processed notebook (what Quarto renders, hidden cells gone), rendered to
    HTML by nbconvert from its stored outputs, nothing executed."""
    from nbconvert import HTMLExporter
    from nbdev.serve import proc_nbs
    cache, exporter, bad = proc_nbs(n_workers=0), HTMLExporter(template_name='basic'), []
    html = {nb.name: exporter.from_filename(str(cache/nb.name))[0] for nb in sorted((ROOT/'nbs').glob('*.ipynb'))}
    for name, page in html.items():
        imgs, named, shown = re.findall(r'<img\b[^>]*\bsrc="([^"]+)"', page), {}, set()
        for i, cell in enumerate(json.loads((ROOT/'nbs'/name).read_text())['cells']):
            pngs = [''.join(o['data']['image/png']).strip()[:200] for o in cell.get('outputs', []) if 'image/png' in o.get('data', {})]
            for fig in named_figures(cell):
                named.setdefault(fig, i)
                if (any(src.endswith(f'figures/{fig}') for src in imgs) if cell['cell_type'] == 'markdown'
                        else any(f'data:image/png;base64,{p}' in page for p in pngs)): shown.add(fig)
        bad += [f'{name} names figures/{fig} (cell {i}) but no cell that names it shows it on the page (a `#| slow` cell keeps '
                'the outputs it has; a cell that runs can show the file: `Image(filename=...)`)' for fig, i in named.items() if fig not in shown]
    text = page_text(html['results.ipynb'])
    verdicts = json.loads((ROOT/'results'/'pythia_study.json').read_text())['results']['verdict']['text']
    budgets = json.loads((ROOT/'results'/'ablations.json').read_text())['results']['budgets']
    findings = [line for b in budgets.values() for line in b['findings']]
    bad += [f'results.ipynb does not show the verdict: {v}' for v in verdicts if ' '.join(v.split()) not in text]
    bad += [f'results.ipynb does not show the ablation finding: {f}' for f in findings if ' '.join(f.split()) not in text]
    dsn = json.loads((ROOT/'results'/'dsn.json').read_text())['results']['verdicts'].values()
    bad += [f'results.ipynb does not show the DSN verdict: {v}' for v in dsn if ' '.join(v.split()) not in text]
    assert not bad, ('the pages as published (stored outputs) lack what they must show; where the code shows it, the stored '
                     'outputs are out of date: `python tools/pages.py nbs/<page>.ipynb` stores them, then commit:\n' + '\n'.join(bad))


def run_notebooks():
    "Every notebook, each in a fresh process, its outputs compared with the stored ones (`tools/pages.py`)."
    from pages import differences, execute_all
    # A fresh process for each notebook, as in JupyterLab: a chapter's exported cells run in its kernel and register their
    # classes with transformers' Auto classes, which must not leak into the next chapter.
    files = sorted((ROOT/'nbs').glob('*.ipynb'))
    results = []
    for f, run in zip(files, execute_all(files)):
        problems = run['problems'] or differences(f, run)
        if run['problems']: print('\n'.join(run['problems']), file=sys.stderr)
        elif problems: print(f'  stored outputs of {f.name} are out of date (`python tools/pages.py nbs/{f.name}` stores them; then commit):\n  '
                             + '\n  '.join(problems), file=sys.stderr)
        results.append((f'notebook {f.name}', not problems, run['seconds']))
    return results


def main():
    from biogpt.core import versions
    print('versions: ' + ', '.join(f'{k} {v}' for k, v in versions().items()), flush=True)
    results = []
    for name, check in [('notebooks are clean', check_clean), ('code is formatted', check_format), ('lint', check_lint),
                        ('library is in sync', check_export), ('python -m biogpt.cli runs biogpt', check_module_cli),
                        ('README is in sync', check_readme), ('CI runs the README test command', check_ci),
                        ('links between pages and to figures resolve', check_links), ('docs inputs and nbdev processing', check_docs),
                        ('the pages as published show their figures and verdicts', check_pages)]:
        t = time.time()
        try: check(); ok = True
        except Exception as e: ok = False; print(f'  {type(e).__name__}: {e}', file=sys.stderr)
        results.append((name, ok, time.time() - t))
        print(f"{'PASS' if ok else 'FAIL'} {name} ({time.time() - t:.1f}s)", flush=True)
    for name, ok, t in run_notebooks():
        results.append((name, ok, t))
        print(f"{'PASS' if ok else 'FAIL'} {name} ({t:.1f}s)", flush=True)
    n_fail = sum(not ok for _, ok, _ in results)
    print(f'{len(results) - n_fail} passed, {n_fail} failed')
    sys.exit(1 if n_fail else 0)


if __name__ == '__main__': main()
