"""Execute notebooks and store their outputs, so that each page shows what its code produces.

    python tools/pages.py                        # every notebook in nbs/
    python tools/pages.py nbs/06_model.ipynb ... # some of them

Each notebook runs top to bottom in a fresh process (two at a time), with execnb's `CaptureShell`, the engine of nbdev's
`nbdev_test`, in the notebook's folder, at the code and `results/*.json` of the working tree (commit first, so the
pages match the commit). Cells nbdev does not run in a test (flagged `#| slow`, `#| eval: false`, `nbdev_export()`) keep
their stored outputs. The outputs are then written into the notebook, and `nbdev_clean` is run on it.

What is stored is kept small and stable: figures as PNG only (other image formats are dropped beside a PNG), widgets as
their text/plain fallback (no widget views, no widget state), no ANSI codes, no execution counts. A cell that writes
a warning to stderr is an error: the command names it and writes nothing for that notebook; so is a cell that fails.

`tools/test.py` runs every notebook with the same `execute` and fails where a stored output differs from the fresh one
(`differences`): text outputs exactly, after `normalise` (the one place that states what is run-specific), images by
kind and count; cells flagged `#| volatile` (outputs that vary by nature: timings, floats of a model trained on this
CPU, progress) by the kinds of their outputs only.
"""
import difflib, json, multiprocessing, os, re, sys, tempfile, time, traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Progress bars are a reader's live feedback in JupyterLab, not a page's content: the stored pages carry none (and their
# rates would differ on every run). Set before any notebook imports tqdm or huggingface_hub, which read them on import.
os.environ.setdefault('TQDM_DISABLE', '1')
os.environ.setdefault('HF_HUB_DISABLE_PROGRESS_BARS', '1')
VOLATILE = 'volatile'  # the directive of a cell whose outputs vary by nature: only their kinds are compared
WIDGET = 'application/vnd.jupyter.widget-view+json'
WARNING = re.compile(r'\b\w*Warning\b|\bwarn(ing)?\b', re.I)  # a warning written to stderr
IMAGES = ('image/png', 'image/jpeg', 'image/svg+xml', 'application/pdf')


def normalise(text: str) -> str:
    "What is run-specific in an output's text, replaced by placeholders: the only differences the comparison forgives."
    for place, name in [(ROOT, '<repo>'), (Path(tempfile.gettempdir()), '<tmp>'), (Path.home(), '~')]:
        text = text.replace(str(place), name)
    text = re.sub(r'<tmp>/[^\s\'"),\]]+', '<tmp>/...', text)  # a temporary folder's random name
    return re.sub(r'\b0x[0-9a-fA-F]{6,}\b', '0x...', text)  # a memory address


def directives(cell) -> dict:
    "nbdev's directives (`#| name args`) of a code cell, as nbdev parses them."
    from fastcore.basics import AttrDict
    from nbdev.process import extract_directives

    return extract_directives(AttrDict(source=''.join(cell['source'])), remove=False)


def runs(cell, skip_flags) -> bool:
    "Whether nbdev's test runs `cell` (the same rule as `nbdev.test.test_nb`)."
    if cell['cell_type'] != 'code' or 'nbdev_export' + '(' in ''.join(cell['source']): return False
    d = directives(cell)
    return d.get('eval:', [''])[0].lower() != 'false' and not set(skip_flags) & d.keys()


def _lines(text): return text.splitlines(True)


def tidy(outputs: list, where: str, problems: list) -> list:
    "Outputs as stored: PNG figures, text fallbacks of widgets, no ANSI codes, no execution counts; warnings reported."
    from fastcore.ansi import strip_ansi

    kept = []
    for o in outputs:
        if o['output_type'] == 'stream':
            text = strip_ansi(''.join(o['text']))
            if o['name'] == 'stderr' and WARNING.search(text): problems.append(f'{where} writes a warning: {text.strip()[:300]}')
            if text.strip(): kept.append(dict(output_type='stream', name=o['name'], text=_lines(text)))  # not a bare '\r' of a widget
            continue
        data = {k: v for k, v in o['data'].items() if k != WIDGET}
        if 'image/png' in data: data = {k: v for k, v in data.items() if k == 'image/png' or k not in IMAGES}
        if unwanted := [k for k in data if k in IMAGES and k != 'image/png']: problems.append(f'{where} shows a figure as {unwanted}, not PNG')
        data = {k: _lines(strip_ansi(''.join(v))) if k.startswith('text/') else v for k, v in data.items()}
        meta = {k: v for k, v in o.get('metadata', {}).items() if k in data}
        out = dict(output_type=o['output_type'], data=data, metadata=meta)
        if o['output_type'] == 'execute_result': out['execution_count'] = None
        kept.append(out)
    return kept


def execute(path) -> dict:
    """Run notebook `path` top to bottom as nbdev's test does; its fresh outputs, cleaned as `nbdev_clean` stores them.

    Returns `outputs` ({cell index: outputs} for every cell that ran), `sources` (the cells as run), `problems` (cells
    that failed or wrote a warning) and `seconds`. Meant for a fresh process: the notebook's code runs in this one."""
    from execnb.shell import CaptureShell
    from fastcore.xtras import working_directory
    from nbdev.clean import clean_nb
    from nbdev.config import get_config

    t0, path, cfg = time.time(), Path(path).absolute(), get_config()
    sys.path.insert(0, str(cfg.config_path))
    os.environ['IN_TEST'] = '1'  # as nbdev's test_nb
    nb = json.loads(path.read_text())
    shell, fresh, problems = CaptureShell(path, mpl_format='png'), {}, []  # PNG at the figure's size (retina doubles it)
    with working_directory(path.parent):
        for i, cell in enumerate(nb['cells']):
            if not runs(cell, cfg.tst_flags.split()): continue
            where = f'{path.name} cell {i} ({"".join(cell["source"]).splitlines()[0][:60]!r})'
            outs = shell.run(''.join(cell['source']))
            if shell.exc:
                problems.append(f'{where} fails:\n' + ''.join(traceback.format_exception(shell.exc)))
                break
            fresh[i] = tidy(outs, where, problems)
    cells = [dict(cell_type='code', source=[], metadata={}, outputs=o) for o in fresh.values()]
    clean_nb(dict(cells=cells, metadata={}), clean_ids=cfg.clean_ids)  # what nbdev_clean does to stored outputs
    return dict(outputs={i: c['outputs'] for i, c in zip(fresh, cells)}, sources=[''.join(c['source']) for c in nb['cells']],
                problems=problems, seconds=time.time() - t0)


def kinds(outputs) -> list:
    "What a cell shows, without its content: output type, and stream name or MIME types."
    return [(o['output_type'], o.get('name') or tuple(sorted(o.get('data', {})))) for o in outputs]


def texts(outputs) -> list:
    "The text of a cell's outputs (streams and every text/* MIME type), normalised."
    return [normalise(''.join(o['text'] if 'text' in o else o['data'][k]))
            for o in outputs for k in (['text'] if 'text' in o else sorted(o.get('data', {}))) if k == 'text' or k.startswith('text/')]


def differences(path, run: dict) -> list[str]:
    "How the outputs stored in notebook `path` differ from the fresh ones of `run` (from `execute`)."
    path = Path(path)
    cells, found = json.loads(path.read_text())['cells'], []
    for i, fresh in run['outputs'].items():
        cell = cells[int(i)]
        stored, where = cell.get('outputs', []), f'{path.name} cell {i} ({"".join(cell["source"]).splitlines()[0][:60]!r})'
        if not fresh and stored: found.append(f'{where} produces nothing but stores {len(stored)} outputs')
        elif kinds(fresh) != kinds(stored): found.append(f'{where} produces {kinds(fresh)} but stores {kinds(stored)}')
        elif VOLATILE not in directives(cell) and (a := texts(stored)) != (b := texts(fresh)):
            diff = next(list(difflib.unified_diff(x.splitlines(), y.splitlines(), 'stored', 'fresh', n=1, lineterm=''))
                        for x, y in zip(a, b) if x != y)
            found.append(f'{where} shows other text than it stores:\n  ' + '\n  '.join(diff[:12]))
    return found


def execute_all(paths, n_workers=2) -> list[dict]:
    "`execute` each notebook in a fresh process of its own, `n_workers` at a time (so chapters share no state)."
    ctx = multiprocessing.get_context('spawn')
    with ctx.Pool(min(n_workers, os.cpu_count()), maxtasksperchild=1) as pool: return pool.map(execute, paths, chunksize=1)


def store(path, run: dict):
    "Write the fresh outputs of `run` into notebook `path`, drop widget state, and clean it with `nbdev_clean`."
    from nbdev.clean import nbdev_clean

    nb = json.loads(Path(path).read_text())
    if [''.join(c['source']) for c in nb['cells']] != run['sources']:
        raise RuntimeError(f'{path} changed while it ran: run `python tools/pages.py {path}` again')
    for i, outs in run['outputs'].items():
        nb['cells'][i]['outputs'], nb['cells'][i]['execution_count'] = outs, None
    nb['metadata'].pop('widgets', None)
    Path(path).write_text(json.dumps(nb, sort_keys=True, indent=1, ensure_ascii=False) + '\n')
    nbdev_clean(fname=str(path))


def main(args):
    paths = [Path(a).absolute() for a in args] or sorted((ROOT/'nbs').glob('*.ipynb'))
    os.chdir(ROOT)  # nbdev reads its settings from here
    failed = 0
    for path, run in zip(paths, execute_all(paths)):
        if run['problems']:
            failed += 1
            print(f'NOT STORED {path.name}:\n  ' + '\n  '.join(run['problems']), file=sys.stderr)
            continue
        store(path, run)
        print(f"stored {path.name}: {sum(bool(o) for o in run['outputs'].values())} of {len(run['outputs'])} cells that ran show output ({run['seconds']:.0f}s)")
    if failed:
        print(f'{failed} notebooks not stored: fix the cells named above and run the command again for them', file=sys.stderr)
        sys.exit(1)


if __name__ == '__main__': main(sys.argv[1:])
