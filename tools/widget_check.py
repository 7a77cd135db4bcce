"""Check the study's explorer on `nbs/results.ipynb` in JupyterLab, in a real (headless) browser. Not part of tools/test.py.

    apt-get install -y chromium chromium-driver && pip install selenium   # once
    python tools/widget_check.py

Starts JupyterLab headless on a copy of the notebook (in a temporary folder under nbs/, removed at the end; the notebook
itself is not written),
opens it in headless Chromium, runs every cell, then changes each dropdown of the explorer in turn and checks that the
explorer's output (the `interactive_output` under its controls) changes with it. Prints what it did; exits non-zero
when the explorer does not render or does not react.
"""
import os, shutil, socket, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT/'nbs'/'results.ipynb'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def wait(what, until, timeout=300, every=1.0):
    "Poll `until()` until it returns something truthy; fail naming `what` after `timeout` seconds."
    t0 = time.time()
    while time.time() - t0 < timeout:
        if got := until(): return got
        time.sleep(every)
    raise TimeoutError(f'{what}: nothing after {timeout}s')


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which('chromium') or shutil.which('chromium-browser')
    for a in ['--headless=new', '--no-sandbox', '--disable-dev-shm-usage', '--window-size=1400,2000']: opts.add_argument(a)
    return webdriver.Chrome(service=Service(shutil.which('chromedriver')), options=opts)


def main():
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select
    # a temporary folder beside the notebooks ('_' keeps nbdev out of it): the page finds the repository from its folder
    folder, port = Path(tempfile.mkdtemp(prefix='_widget_check_', dir=NOTEBOOK.parent)), free_port()
    shutil.copy(NOTEBOOK, folder/NOTEBOOK.name)
    lab = subprocess.Popen([sys.executable, '-m', 'jupyterlab', '--no-browser', f'--port={port}', f'--ServerApp.root_dir={folder}',
                            "--IdentityProvider.token=", '--ServerApp.password=', '--LabApp.expose_app_in_browser=True',
                            *(['--allow-root'] if os.geteuid() == 0 else [])],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT,
                           env={**os.environ, 'PYTHONPATH': str(ROOT)})  # the kernel imports this checkout's library
    driver = None
    try:
        wait('JupyterLab to listen', lambda: socket.socket().connect_ex(('127.0.0.1', port)) == 0, timeout=120)
        driver = browser()
        driver.get(f'http://127.0.0.1:{port}/lab/tree/{NOTEBOOK.name}')
        wait('the notebook to open with its kernel', lambda: driver.execute_script(
            "const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
            "return !!(w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel"
            " && w.sessionContext.session.kernel.status === 'idle');"), timeout=180)
        driver.execute_script("window.jupyterapp.commands.execute('notebook:run-all-cells')")
        print('running every cell of', NOTEBOOK.name)
        selects = wait('the explorer to render (its dropdowns)', lambda: driver.find_elements(By.CSS_SELECTOR, '.widget-dropdown select'))
        out = lambda: ' '.join(e.text for e in driver.find_elements(By.CSS_SELECTOR, '.widget-output'))
        wait('the explorer to show its first view', lambda: out().strip())
        print(f'the explorer shows {len(selects)} dropdowns')
        for sel in selects:
            pick = Select(sel)
            options = [o.get_attribute('value') for o in pick.options]
            if len(options) < 2: continue
            label = sel.find_element(By.XPATH, '..').text.split('\n')[0]
            before, chosen = out(), next(o for o in options if o != pick.first_selected_option.get_attribute('value'))
            pick.select_by_value(chosen)
            wait(f'the output to change after choosing {chosen!r} in {label!r}', lambda: out() != before and out().strip(), timeout=60)
            print(f'{label!r} -> option {chosen!r}: the output changed')
        print('PASS: the explorer renders in JupyterLab and reacts to its dropdowns')
    except Exception:
        if driver:  # what the page shows: errors of cells, and a screenshot
            errors = driver.find_elements(By.CSS_SELECTOR, '[data-mime-type="application/vnd.jupyter.stderr"]')
            print('cell errors on the page:\n' + '\n'.join(e.text[-2000:] for e in errors) if errors else 'no cell errors on the page')
            driver.save_screenshot(str(shot := Path(tempfile.gettempdir())/'widget_check.png'))
            print(f'screenshot: {shot}')
        raise
    finally:
        if driver: driver.quit()
        lab.terminate()
        lab.wait(30)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == '__main__': main()
