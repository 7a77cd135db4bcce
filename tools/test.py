"""The project's tests, as nbdev's own CI action runs them, offline.

1. notebooks are clean (`nbdev_clean` changes nothing) and their code is formatted (`ruff format --check nbs`: about 110 columns);
2. the library is in sync (`nbdev_export` changes nothing in `biogpt/`);
3. README.md is in sync with `nbs/index.ipynb`, and `.ci/run` runs exactly its test command;
4. every relative link between pages resolves and every figure a page names exists; the docs inputs are complete
   (every page in the sidebar and navbar exists, `_quarto.yml` has one source) and nbdev's processing step for Quarto runs;
5. every notebook runs top to bottom on CPU (`nbdev.test.test_nb`, the function behind `nbdev_test`),
   skipping cells flagged with a `tst_flags` flag (`slow`).

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


def check_export():
    before = snapshot('biogpt')
    subprocess.run(['nbdev_export'], check=True)
    if diff := changed(before, snapshot('biogpt')): raise AssertionError(f'nbdev_export changed {diff}: the library is out of sync with its notebooks; run `nbdev_export` and commit')


def check_readme():
    from readme import render_readme
    if render_readme() != (ROOT/'README.md').read_text():
        raise AssertionError('README.md differs from nbs/index.ipynb: run `python tools/readme.py` and commit')


def check_ci():
    readme, ci = (ROOT/'README.md').read_text(), (ROOT/'.ci'/'run').read_text()
    cmd = re.search(r'^# 2\. the tests.*\n(.+)$', readme, re.M)
    assert cmd, "README.md lost its quick-start test command ('# 2. the tests' and the line after it)"
    assert cmd[1].strip() in ci.splitlines(), f'.ci/run must run exactly the README test command: {cmd[1].strip()}'


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
            for fig in re.findall(r"figures['\"]?\s*/\s*f?['\"]([\w.-]+\.png)['\"]", src) + re.findall(r'figures/([\w.-]+\.png)', src):
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


def run_notebooks():
    import multiprocessing
    from functools import partial
    from nbdev.config import get_config
    from nbdev.test import test_nb
    cfg = get_config()
    files = sorted(p.absolute() for p in cfg.nbs_path.glob('*.ipynb'))
    # A fresh process for each notebook, as in JupyterLab: a chapter's exported cells run in its kernel and register their
    # classes with transformers' Auto classes, which must not leak into the next chapter (nbdev_test reuses its workers).
    run = partial(test_nb, skip_flags=cfg.tst_flags.split(), force_flags=[], basepath=cfg.config_path)
    with multiprocessing.get_context('spawn').Pool(min(2, os.cpu_count()), maxtasksperchild=1) as pool: res = pool.map(run, files, chunksize=1)
    return [(f'notebook {f.name}', ok, t) for f, (ok, t) in zip(files, res)]


def main():
    from biogpt.core import versions
    print('versions: ' + ', '.join(f'{k} {v}' for k, v in versions().items()), flush=True)
    results = []
    for name, check in [('notebooks are clean', check_clean), ('code is formatted', check_format), ('library is in sync', check_export),
                        ('README is in sync', check_readme), ('CI runs the README test command', check_ci),
                        ('links between pages and to figures resolve', check_links), ('docs inputs and nbdev processing', check_docs)]:
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
