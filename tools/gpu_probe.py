"""What a training step of BioGPT and of its Pythia twin costs on a GPU, and where BioGPT's time goes: a probe run once
on a lent machine, the baseline for work on training speed and for a scaling study's GPU rung.

    python tools/gpu_probe.py --out DIR --steps 30   # on the GPU: at most --budget_s (300 s) and start-up
    python tools/gpu_probe.py --tiny --out /tmp/gpu_probe_test   # the same code path on the CPU at a toy size, in a minute

It measures, in this order (the cheap and predictable first, so that a run cut short still says the most):
1. the GPU's bf16 matrix-multiply throughput (`core.matmul_peak` on the GPU), the measured ceiling for MFU;
2. for the published BioGPT (`BioGPTConfig()`) and its Pythia twin (`pythia.twin_config`: the same depth and
   non-embedding parameters), eager training steps (`bench.bare_steps`: forward under bf16 autocast, `lm_loss`,
   backward, clipping, the trainer's fused AdamW) on random tokens: tokens/s, MFU, peak memory; then a
   `torch.profiler` operator table of one more step;
3. a ladder of smaller matched pairs (eager only), between the CPU study's sizes and the published one;
4. the same training step under `torch.compile`, each arm in a child process that is killed when its time is up
   (compilation is the one open-ended cost), BioGPT first.

Every measurement prints one line as it ends, and `DIR/gpu_probe.json` (`core.save_result`: command, config, commit,
hardware) is written again after each, so a run killed early still leaves what it measured. The operator tables are
`DIR/profile_<arm>.txt`. Measurements that would start after `--budget_s` are recorded as skipped.
"""

from __future__ import annotations
import argparse, contextlib, gc, multiprocessing, os, signal, statistics, sys, threading, time
from pathlib import Path

import torch
from torch.autograd.profiler_util import FunctionEventAvg
from torch.profiler import ProfilerActivity, profile, schedule
from transformers import AutoModelForCausalLM

from biogpt.accounting import train_flops_per_token
from biogpt.bench import bare_steps
from biogpt.core import count_params, matmul_peak, peak_memory_mb, reset_peak_memory, save_result
from biogpt.model import BioGPTConfig
from biogpt.pythia import twin_config
from biogpt.study import COMPARISON_DATA
from biogpt.trainer import TrainConfig, make_optimizer

# dense bf16 peaks by device name. NVIDIA H200 datasheet: 1,979 TFLOPS BF16 Tensor Core "with sparsity", i.e. 989.5
# dense, for the SXM part ("NVIDIA H200"; the H200 NVL is slower and would not match)
DATASHEET_BF16 = {'NVIDIA H200': 989.5e12}
# the timed steps of one measurement stop at about this many seconds: a model slower than expected keeps the budget
MAX_TIMED_S = 30
# the trainer's defaults: AdamW's learning rate, betas and weight decay, and gradient clipping
RECIPE = TrainConfig()
TOP_OPS = 25
# the ladder's sizes: n_layers = d_model / 64, the depth-to-width ratio of the presets (cpu, gpu-small, paper)
LADDER = ((256, 4), (384, 6), (512, 8))
# BioGPT compiles first, with this share of the time left; the twin (a standard transformer, quicker) gets all the rest
COMPILE_SHARES = (0.7, 1.0)
TINY = dict(
    d_model=64,
    n_layers=2,
    ladder=((32, 2), (48, 2)),
    seq_len=64,
    batch=2,
    steps=2,
    warmup=1,
    budget_s=50,  # compiling on two CPU cores takes minutes: a compile cut short tests the timeout
    compile_reserve_s=15,
)


class Clock:
    "The run's time budget: what is left of it, and whether a measurement that needs `s` seconds may start."

    def __init__(self, budget_s: float):
        self.start, self.budget = time.monotonic(), budget_s

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.start)

    def allows(self, s: float) -> bool:
        return self.left() >= s


def say(line: str):
    "One line of the summary, flushed: a run killed early still shows what it measured."
    print(line, flush=True)


def matched_pair(vocab_size: int, d_model: int, n_layers: int, seq_len: int) -> dict:
    "BioGPT of this shape and its Pythia twin (the study's matching: same depth and non-embedding parameters)."
    bio = BioGPTConfig(vocab_size=vocab_size, d_model=d_model, n_layers=n_layers, max_seq_len=seq_len)
    return dict(biogpt=bio, pythia_twin=twin_config(bio))


def shape(config) -> dict:
    "The fields that tell the two arms' shapes apart."
    keys = ('vocab_size', 'hidden_size', 'num_hidden_layers', 'intermediate_size', 'num_attention_heads')
    return {k: getattr(config, k) for k in keys if hasattr(config, k)}


def setup(config, batch: int, seq_len: int, device: torch.device):
    "A fresh model of `config` (seed 0) with the trainer's optimizer, and one random batch of inputs and targets."
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config).train()
    tokens = torch.randint(0, config.vocab_size, (batch, seq_len + 1), device=device)
    return model, make_optimizer(model, RECIPE), (tokens[:, :-1], tokens[:, 1:])


def train_steps(model, opt, data, n: int) -> list[float]:
    "Seconds of each of `n` training steps on `data` (synchronised): `bench.bare_steps` in bf16 autocast."
    return bare_steps(model, opt, [data] * n, 1, data[0].shape[0], RECIPE.grad_clip, 'bf16')


def speed(model, opt, data, steps: int, warmup: int, peaks: dict) -> dict:
    """Tokens/s (median step), MFU against each peak, and peak memory over `steps` timed steps after `warmup`
    (fewer where the warm-up says they would take over `MAX_TIMED_S`)."""
    device = data[0].device
    reset_peak_memory(device)
    warm = train_steps(model, opt, data, warmup)
    if warm:
        steps = min(steps, max(2, int(MAX_TIMED_S / warm[-1])))
    times = train_steps(model, opt, data, steps)
    step = statistics.median(times)
    tokens_per_s = data[0].numel() / step
    flops = train_flops_per_token(getattr(model, '_orig_mod', model), data[0].shape[1])
    return dict(
        tokens_per_s=tokens_per_s,
        step_s=step,
        step_times=times,
        warmup_times=warm,  # the first holds compilation under torch.compile
        flops_per_token=flops,
        mfu={k: tokens_per_s * flops / p for k, p in peaks.items()},
        peak_memory_mb=peak_memory_mb(device),
    )


# an event's GPU times: `device` since torch 2.4, `cuda` before
_GPU = 'device' if hasattr(FunctionEventAvg(), 'self_device_time_total') else 'cuda'


def op_table(model, opt, data) -> tuple[str, list[dict]]:
    """The `torch.profiler` tables of one training step: the top `TOP_OPS` events by self GPU time (self CPU time on a
    CPU), then by total time (an operator with all it launched: where a module such as the NMDA trace spends), as text;
    and the first as a list."""
    cuda = data[0].device.type == 'cuda'
    activities = [ProfilerActivity.CPU] + [ProfilerActivity.CUDA] * cuda
    # one step to start the profiler's tracing untimed, then the step recorded (one cycle: a second would clear it)
    with profile(activities=activities, schedule=schedule(wait=0, warmup=1, active=1, repeat=1)) as prof:
        for _ in range(2):
            train_steps(model, opt, data, 1)
            prof.step()
    events = prof.key_averages()
    by = f'{_GPU}_time_total' if cuda else 'cpu_time_total'
    tables = [
        f"by {kind}{by}:\n" + events.table(sort_by=kind + by, row_limit=TOP_OPS, max_name_column_width=90)
        for kind in ('self_', '')
    ]
    ops = [e for e in events if not e.key.startswith('ProfilerStep')]  # the step's own range, not an operator
    rows = [
        dict(
            name=e.key,
            self_cuda_ms=getattr(e, f'self_{_GPU}_time_total') / 1e3,
            cuda_total_ms=getattr(e, f'{_GPU}_time_total') / 1e3,
            calls=e.count,
            self_cpu_ms=e.self_cpu_time_total / 1e3,
        )
        for e in sorted(ops, key=lambda e: getattr(e, 'self_' + by), reverse=True)[:TOP_OPS]
    ]
    return '\n\n'.join(tables), rows


def free(device: torch.device):
    "Release the last measurement's memory, so the next one's peak is its own."
    gc.collect()
    if device.type == 'cuda':
        torch.cuda.empty_cache()


def describe(name: str, r: dict) -> str:
    if 'error' in r:
        return f"{name}: {r['error']}"
    mfu = ', '.join(f'{k} {v:.1%}' for k, v in r['mfu'].items())
    return (
        f"{name}: {r['tokens_per_s']:,.0f} tokens/s, step {r['step_s'] * 1e3:.1f} ms, MFU {mfu}, "
        f"peak {r['peak_memory_mb']:,.0f} MiB (warmup steps {', '.join(f'{t:.2f}' for t in r['warmup_times'])} s)"
    )


def eager(config, args, device, peaks: dict, profile_to: Path | None = None) -> dict:
    "One arm's eager training speed and parameters; with `profile_to`, also the operator table of one more step."
    model, opt, data = setup(config, args.batch, args.seq_len, device)
    r = dict(
        params=count_params(model),
        shape=shape(config),
        **speed(model, opt, data, args.steps, args.warmup, peaks),
    )
    if profile_to is not None:
        try:
            text, r['top_ops'] = op_table(model, opt, data)
            profile_to.write_text(text)
        except Exception as e:  # the speed stands without its profile
            r['profile_error'] = f'{type(e).__name__}: {e}'
    return r


def compiled(config, args, device, peaks: dict) -> dict:
    "One arm's training speed under `torch.compile(model)`, with dynamo's graph and graph-break counts."
    model, opt, data = setup(config, args.batch, args.seq_len, device)
    r = speed(torch.compile(model), opt, data, args.steps, args.warmup, peaks)
    with contextlib.suppress(ImportError, AttributeError):  # private counters: informative, not essential
        from torch._dynamo.utils import counters

        r['unique_graphs'] = counters['stats']['unique_graphs']
        r['graph_breaks'] = dict(counters['graph_break'])
    return r


def _orphan_watch(parent: int):
    "End this process group when its parent is gone (a probe killed from outside must not leave a GPU job behind)."
    while os.getppid() == parent:
        time.sleep(1)
    os.killpg(0, signal.SIGKILL)


def _child(fn, args: tuple, conn):
    os.setpgrp()  # its own process group: a timeout kills it together with the compile workers it starts
    threading.Thread(target=_orphan_watch, args=(os.getppid(),), daemon=True).start()
    try:
        conn.send(fn(*args))
    except Exception as e:  # a failure is a result: recorded, not raised
        conn.send(dict(error=f'{type(e).__name__}: {e}'))


def in_child(fn, args: tuple, timeout: float) -> dict:
    "`fn(*args)` in a fresh process; an error dict if it raises, dies, or runs past `timeout` seconds (then killed)."
    ctx = multiprocessing.get_context('spawn')
    reader, writer = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_child, args=(fn, args, writer))
    p.start()
    writer.close()  # the child's copy is the only one left: its death ends the pipe
    end = time.monotonic() + timeout
    try:
        while not reader.poll(1):
            if time.monotonic() > end:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.kill()
                return dict(
                    error=f'not finished within {timeout:.0f} s (compilation and timed steps): killed'
                )
        try:
            return reader.recv()
        except EOFError:
            p.join()
            return dict(error=f'the child process died (exit code {p.exitcode})')
    finally:
        p.join()


def measure_peaks(device: torch.device) -> dict:
    "The peaks MFU is taken against: the datasheet's on an H200, and the measured matrix-multiply throughput."
    peaks = {}
    if device.type == 'cuda':
        if peak := DATASHEET_BF16.get(torch.cuda.get_device_name(device)):
            peaks['datasheet'] = peak
        # matmul_peak makes its operands on the default device: here the GPU, in bf16, big enough to fill it
        with torch.device(device):
            peaks['matmul_bf16'] = matmul_peak(n=8192, rounds=20, dtype=torch.bfloat16)
    else:  # the CPU's float32 peak, as the CPU benchmarks take it (bf16 matrix products are slower on most CPUs)
        peaks['matmul_fp32'] = matmul_peak()
    return peaks


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument('--out', required=True, help='folder of gpu_probe.json and profile_<arm>.txt')
    p.add_argument('--batch', type=int, default=16, help='sequences per step')
    p.add_argument('--seq_len', type=int, default=BioGPTConfig().max_seq_len, help='tokens per sequence')
    p.add_argument('--steps', type=int, default=20, help='timed steps per measurement')
    p.add_argument('--warmup', type=int, default=3, help='untimed steps first (compilation happens here)')
    p.add_argument('--ladder_steps', type=int, default=20, help='timed steps per model of the ladder')
    p.add_argument(
        '--budget_s', type=float, default=300, help='no measurement starts after this many seconds'
    )
    p.add_argument(
        '--compile_reserve_s', type=float, default=180, help='the ladder stops with this much left'
    )
    p.add_argument('--no_compile', action='store_true', help='skip the torch.compile measurements')
    p.add_argument('--tiny', action='store_true', help=f'on the CPU, at a toy size: {TINY}')
    args = p.parse_args(argv)
    if args.tiny:  # its sizes become the defaults; options given still win
        p.set_defaults(**{k: v for k, v in TINY.items() if k in vars(args)}, ladder_steps=TINY['steps'])
        args = p.parse_args(argv)
    elif not torch.cuda.is_available():
        p.error('no GPU here: the published model on a CPU would take hours (--tiny tests the script)')
    return args


def arm_speeds(arms: dict, args, device, peaks: dict, out: Path, clock: Clock, results: dict, save):
    "Eager speed and operator table of each arm."
    for name, config in arms.items():
        if not clock.allows(30):
            results['skipped'].append(f'eager {name}')
            continue
        try:
            r = eager(config, args, device, peaks, profile_to=out / f'profile_{name}.txt')
        except Exception as e:  # e.g. out of memory at this batch: recorded, and the run goes on
            r = dict(error=f'{type(e).__name__}: {e}')
        free(device)
        results['eager'][name] = r
        say(describe(f'eager {name}', r))
        if ops := r.get('top_ops'):
            key = 'self_cuda_ms' if device.type == 'cuda' else 'self_cpu_ms'
            say('  top ops: ' + ', '.join(f"{o['name']} {o[key]:.1f} ms" for o in ops[:6]))
        save()


def ladder_speeds(ladder, vocab: int, args, device, peaks: dict, clock: Clock, results: dict, save):
    "Eager speed of each matched pair of the ladder, while the compile measurements keep their reserve."
    reserve = 0 if args.no_compile else args.compile_reserve_s
    ladder_args = argparse.Namespace(**{**vars(args), 'steps': args.ladder_steps})
    for d_model, n_layers in ladder:
        for name, config in matched_pair(vocab, d_model, n_layers, args.seq_len).items():
            label = f'ladder d{d_model} L{n_layers} {name}'
            if not clock.allows(reserve + 10):
                results['skipped'].append(label)
                continue
            try:
                r = eager(config, ladder_args, device, peaks)
            except Exception as e:
                r = dict(error=f'{type(e).__name__}: {e}')
            free(device)
            results['ladder'].append(dict(d_model=d_model, n_layers=n_layers, arm=name, **r))
            say(describe(label, r))
            save()


def compiled_speeds(arms: dict, args, device, peaks: dict, clock: Clock, results: dict, save):
    "Each arm's speed under torch.compile, in a child process cut off at its share of the time left."
    for share, (name, config) in zip(COMPILE_SHARES, arms.items()):
        timeout = share * (clock.left() - 10)  # 10 s kept for writing the results
        if timeout < 20:
            results['skipped'].append(f'compiled {name}')
            continue
        results['compiled'][name] = in_child(compiled, (config, args, device, peaks), timeout)
        say(describe(f'compiled {name}', results['compiled'][name]))
        save()


def main(argv=None):
    args = parse(argv)
    clock, out = Clock(args.budget_s), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device('cpu' if args.tiny else 'cuda')
    # the ladder's vocabulary (and --tiny's): the study's, which its GPU rung would train on
    vocab = COMPARISON_DATA['vocab_size']
    if args.tiny:
        ladder, arms = TINY['ladder'], matched_pair(vocab, TINY['d_model'], TINY['n_layers'], args.seq_len)
    else:
        published = BioGPTConfig()  # the published model: the defaults (the trainer's `_PUBLISHED`)
        ladder, arms = LADDER, dict(biogpt=published, pythia_twin=twin_config(published))
    results = dict(
        device=dict(
            type=device.type,
            name=torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu',
            cuda=torch.version.cuda,
        ),
        setup=dict(
            batch=args.batch, seq_len=args.seq_len, precision='bf16 autocast', optimizer='make_optimizer'
        ),
        eager={},
        compiled={},
        ladder=[],
        skipped=[],
    )

    def save():
        save_result(
            'gpu_probe',
            results,
            command='python tools/gpu_probe.py ' + ' '.join(sys.argv[1:] if argv is None else argv),
            config=dict(vars(args), ladder=ladder, ladder_vocab_size=vocab),
            seeds=[0],
            timings=dict(wall_s=round(clock.budget - clock.left(), 1)),
            folder=out,
        )

    results['peaks'] = peaks = measure_peaks(device)
    say(
        f"{results['device']['name']}: peaks "
        + ', '.join(f'{k} {v / 1e12:.1f} TFLOP/s' for k, v in peaks.items())
    )
    save()
    arm_speeds(arms, args, device, peaks, out, clock, results, save)
    ladder_speeds(ladder, vocab, args, device, peaks, clock, results, save)
    if not args.no_compile:
        compiled_speeds(arms, args, device, peaks, clock, results, save)
    if results['skipped']:
        say(f"skipped (time budget): {', '.join(results['skipped'])}")
    save()
    say(f'{out / "gpu_probe.json"} written after {clock.budget - clock.left():.0f} s')


if __name__ == '__main__':
    main()
