"""fmx's distillation throughput against a plain tf_keras baseline, in one run.

    python benchmarks/distillation.py              # ~5 minutes on 2 CPU cores
    python benchmarks/distillation.py --quick      # small CNNs at 32 px, ~1 min
    python benchmarks/distillation.py --json out.json --keep

One workload (benchmarks/workload.py: a BiT-R50x1 teacher -> MobileNetV3-Large
student, 96 px, batch 16, Pet37-like TFRecords, the original recipe's
augmentation) for every figure. Phases, each in a process of its own
(benchmarks/phases.py):

- `input`: the input pipeline alone;
- `parts`: the teacher forward alone, the student train step alone and the
  full step, on a batch in memory, so overhead beyond their sum shows, with
  float32 matmuls timed in the same rounds as the yardstick for achieved
  FLOP/s (FLOPs counted from the models' layers, see measure.py);
- `compare`: fmx (Model Garden trainer, Orbit loop of steps_per_loop steps in
  one tf.function) against the baseline written the way the original
  implementation was (a keras.Model with a custom train_step, model.fit):
  same models, batch, resolution, augmentation and number of timed steps,
  in alternating loops, warm-up excluded;
- and the peak resident memory of each.

Prints a table with the issue's three target ratios and writes JSON
(default benchmarks/results/distillation[-quick].json; --keep keeps the
temporary folder with each phase's log). Absolute figures move with the
load of a shared machine; the ratios are measured side by side.
"""

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

BENCHMARKS = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(BENCHMARKS, 'results')
ORDER = ('input', 'parts', 'compare')
PRECISION_ORDER = ('speed_saved_model', 'speed_bit', 'fidelity')
PRECISION_TARGET = 1.5  # fmx's defaults / the seed-style baseline
# The targets, as (measured ratio's key, comparison, bound).
TARGETS = {
    'fmx_over_baseline': ('fmx images/s / baseline images/s', '>=', 1.2),
    'full_over_parts': ('full step time / (teacher forward + student step)',
                        '<=', 1.10),
    'input_over_step': ('input pipeline images/s / full step images/s',
                        '>=', 3.0),
}


def _workload(quick: bool, bindings=()):
  import workload  # pylint: disable=g-import-not-at-top
  chosen = workload.QUICK if quick else workload.DEFAULT
  return dataclasses.replace(chosen, bindings=tuple(bindings))


def measure_phase(name: str, folder: str, workload) -> dict:
  """Runs one phase in this process; its results and its peak memory.

  What the phase prints (Orbit's log lines, progress bars) goes to
  FOLDER/NAME.log, as a phase process's output does.
  """
  import measure  # pylint: disable=g-import-not-at-top
  import phases  # pylint: disable=g-import-not-at-top
  import precision_phases  # pylint: disable=g-import-not-at-top
  measure.reset_peak_rss()
  start = time.perf_counter()
  with open(os.path.join(folder, f'{name}.log'), 'a') as log, \
      contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
    result = {**phases.PHASES, **precision_phases.PHASES}[name](folder, workload)
  result['peak_rss_mb'] = measure.peak_rss_mb()
  result['accelerator_peak_mb'] = measure.accelerator_peak_mb()
  result['phase_seconds'] = time.perf_counter() - start
  return result


def run_phase(name: str, folder: str, workload) -> None:
  """Inside a phase's own process: measures and writes FOLDER/NAME.json."""
  with open(os.path.join(folder, f'{name}.json'), 'w') as f:
    json.dump(measure_phase(name, folder, workload), f)


def spawn_phase(name: str, folder: str, quick: bool, bindings,
                extra=()) -> dict:
  """Runs one phase in a fresh process; its output goes to FOLDER/NAME.log."""
  command = [sys.executable, os.path.abspath(__file__), '--phase', name,
             '--folder', folder] + (['--quick'] if quick else []) + list(extra)
  for binding in bindings:
    command += ['--bind', binding]
  log_path = os.path.join(folder, f'{name}.log')
  start = time.perf_counter()
  with open(log_path, 'w') as log:
    code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT)
  if code:
    with open(log_path) as log:
      tail = ''.join(log.readlines()[-30:])
    raise SystemExit(f'phase {name!r} failed (exit {code}); end of its log:\n{tail}')
  with open(os.path.join(folder, f'{name}.json')) as f:
    result = json.load(f)
  print(f'  {name:<9} {time.perf_counter() - start:5.0f} s', flush=True)
  return result


def summarize(results: dict, workload) -> dict:
  """Images/s, ratios and FLOP/s from the phases' raw results."""
  batch = workload.batch_size
  parts, compare = results['parts'], results['compare']
  seconds = {name: t['seconds_per_call'] for name, t in parts['timings'].items()}
  fmx = compare['fmx']['images_per_second']
  baseline = compare['baseline']['images_per_second']
  full = batch / seconds['full_step']
  matmul = parts['matmul_flops_per_second']
  step_flops = parts['step_flops_per_image']
  ratios = {
      'fmx_over_baseline': fmx / baseline,
      'full_over_parts': seconds['full_step'] / (seconds['teacher_forward']
                                                 + seconds['student_step']),
      'input_over_step': results['input']['fmx_images_per_second'] / full,
  }
  cpu = {name: compare[name]['images_per_cpu_second']
         for name in ('fmx', 'baseline')}
  paired = statistics.median(compare['paired_fmx_over_baseline'])
  return {
      'images_per_second': {
          'fmx': fmx, 'baseline': baseline, 'full_step': full,
          'teacher_forward': batch / seconds['teacher_forward'],
          'student_step': batch / seconds['student_step'],
          'baseline_step': batch / seconds['baseline_step'],
          'baseline_teacher_forward': batch / seconds['baseline_teacher_forward'],
          'input_pipeline': results['input']['fmx_images_per_second'],
          'input_pipeline_uncached': results['input']['uncached_images_per_second'],
      },
      'images_per_cpu_second': cpu,
      'fmx_over_baseline_on_cpu_time': cpu['fmx'] / cpu['baseline'],
      'fmx_over_baseline_median_of_pairs': paired,
      # The steps alone, on the same batch in memory: the model math only.
      'fmx_step_over_baseline_step': seconds['baseline_step'] / seconds['full_step'],
      'ms_per_step': {name: 1000 * s for name, s in seconds.items()
                      if name != 'matmul'},
      'ratios': ratios,
      'targets_met': {key: (ratios[key] >= bound if op == '>=' else
                            ratios[key] <= bound)
                      for key, (_, op, bound) in TARGETS.items()},
      'teacher_share_of_flops': parts['teacher_forward_flops'] / step_flops,
      'teacher_share_of_time': seconds['teacher_forward'] / (
          seconds['teacher_forward'] + seconds['student_step']),
      'matmul_gflops': matmul / 1e9,
      'compare_matmul_gflops': compare['matmul_flops_per_second'] / 1e9,
      'achieved_fraction_of_matmul': {
          'full_step': full * step_flops / matmul,
          'fmx': fmx * step_flops / compare['matmul_flops_per_second'],
          'baseline': baseline * step_flops / compare['matmul_flops_per_second'],
      },
  }


def format_table(summary: dict, results: dict, workload, machine: dict) -> str:
  rate, ms = summary['images_per_second'], summary['ms_per_step']
  achieved = summary['achieved_fraction_of_matmul']
  compare = results['compare']
  rows = [
      ('fmx (Model Garden trainer, Orbit loop)', f'{rate["fmx"]:.1f}', '',
       f'{achieved["fmx"]:.0%}', compare['fmx']['peak_rss_mb_during_loops']),
      ('baseline (keras.Model.fit, custom train_step)',
       f'{rate["baseline"]:.1f}', '', f'{achieved["baseline"]:.0%}',
       compare['baseline']['peak_rss_mb_during_loops']),
      ('teacher forward alone', f'{rate["teacher_forward"]:.1f}',
       f'{ms["teacher_forward"]:.0f}', '', None),
      ('student train step alone', f'{rate["student_step"]:.1f}',
       f'{ms["student_step"]:.0f}', '', None),
      ('full step alone (task.train_step)', f'{rate["full_step"]:.1f}',
       f'{ms["full_step"]:.0f}', f'{achieved["full_step"]:.0%}',
       results['parts']['peak_rss_mb']),
      ('baseline step alone (Distiller.train_step)',
       f'{rate["baseline_step"]:.1f}', f'{ms["baseline_step"]:.0f}', '', None),
      ('baseline teacher forward alone (as Keras loads it)',
       f'{rate["baseline_teacher_forward"]:.1f}',
       f'{ms["baseline_teacher_forward"]:.0f}', '', None),
      ('input pipeline alone (fmx, cached)', f'{rate["input_pipeline"]:.0f}',
       '', '', results['input']['peak_rss_mb']),
      ('input pipeline alone (no cache, as the baseline)',
       f'{rate["input_pipeline_uncached"]:.0f}', '', '', None),
  ]
  header = ('', 'img/s', 'ms/step', 'of matmul', 'peak RSS')
  table = [header] + [(name, r, m, p, f'{mb:,.0f} MB' if mb else '')
                      for name, r, m, p, mb in rows]
  widths = [max(len(row[i]) for row in table) for i in range(len(header))]
  lines = [f'fmx distillation benchmark: {workload.description}',
           f'{machine["cpu"]}, {machine["cores"]} cores, '
           f'{machine["memory_gb"]} GB, TensorFlow {machine["tensorflow"]}; '
           f'load average before: {machine["load_average"][0]}', '']
  for row in table:
    lines.append('  '.join([row[0].ljust(widths[0])] +
                           [cell.rjust(w) for cell, w in zip(row[1:], widths[1:])]))
  lines.append('')
  for key, (what, op, bound) in TARGETS.items():
    value = summary['ratios'][key]
    verdict = 'met' if summary['targets_met'][key] else 'MISSED'
    lines.append(f'{what:<52} {value:6.2f}x  (target {op} {bound:.2f}x: {verdict})')
  lines += [
      'fmx / baseline, other estimates: '
      f'steps alone {summary["fmx_step_over_baseline_step"]:.2f}x, '
      f'median of adjacent loops {summary["fmx_over_baseline_median_of_pairs"]:.2f}x, '
      f'images per CPU-second {summary["fmx_over_baseline_on_cpu_time"]:.2f}x',
      f'teacher share of the step: {summary["teacher_share_of_flops"]:.0%} of '
      f'FLOPs, {summary["teacher_share_of_time"]:.0%} of the time of teacher + '
      'student',
      'img/s: over all timed loops (fmx, baseline) or rounds (the others); '
      '"of matmul": FLOP/s achieved (FLOPs counted from the layers) / the rate'
      ' of float32 2048^2 matmuls timed alongside '
      f'({summary["compare_matmul_gflops"]:.0f} GFLOP/s with fmx and baseline,'
      f' {summary["matmul_gflops"]:.0f} with the parts); peak RSS of fmx and '
      'baseline: during their loops, both models loaded',
  ]
  return '\n'.join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--quick', action='store_true',
                      help='small CNNs at 32 px: a smoke check under a minute')
  parser.add_argument('--json', help='where to write the results (default: '
                      'benchmarks/results/distillation[-quick].json)')
  parser.add_argument('--keep', action='store_true',
                      help='keep the temporary folder (data, runs, phase logs)')
  parser.add_argument('--bind', action='append', default=[],
                      help="a gin binding for the run, e.g. 'Runtime.xla = True' "
                      '(repeatable)')
  parser.add_argument('--teacher_precision', action='store_true',
                      help='baseline vs fmx float32 teacher vs fmx defaults '
                      '(bfloat16 teacher where native), for a SavedModel and a '
                      'BiT teacher, and bfloat16 fidelity (~10 min)')
  parser.add_argument('--only', action='append', default=[],
                      help='with --teacher_precision: run only these phases')
  parser.add_argument('--phase', choices=ORDER + PRECISION_ORDER,
                      help=argparse.SUPPRESS)
  parser.add_argument('--folder', help=argparse.SUPPRESS)
  args = parser.parse_args()
  workload = _workload(args.quick, args.bind)
  if args.phase:
    run_phase(args.phase, args.folder, workload)
    return

  import measure  # pylint: disable=g-import-not-at-top
  import workload as workload_lib  # pylint: disable=g-import-not-at-top
  machine = measure.machine()  # load average before we add to it
  folder = tempfile.mkdtemp(prefix='fmx_distillation_bench_')
  start = time.perf_counter()
  if args.teacher_precision:
    precision_benchmark(folder, start, machine, args)
    return
  try:
    print(f'workload: {workload.description}; phases, each in its own process:',
          flush=True)
    workload_lib.prepare(folder, workload)
    if args.quick:
      # One process: saves ~15 s of start-up per phase; the peak memory of
      # a phase then includes what earlier phases left.
      results = {name: measure_phase(name, folder, workload) for name in ORDER}
    else:
      results = {name: spawn_phase(name, folder, args.quick, args.bind)
                 for name in ORDER}
  finally:
    if args.keep:
      print(f'kept {folder}')
    else:
      shutil.rmtree(folder, ignore_errors=True)
  summary = summarize(results, workload)
  print()
  print(format_table(summary, results, workload, machine))
  path = args.json or os.path.join(
      RESULTS, 'distillation-quick.json' if args.quick else 'distillation.json')
  measure.write_results(path, workload, machine, start, summary=summary,
                        phases=results)


def format_precision(results: dict, machine: dict) -> str:
  """The table of the teacher-precision comparison."""
  lines = [f'{machine["cpu"]}, {machine["cores"]} cores, TensorFlow '
           f'{machine["tensorflow"]}; load average before: '
           f'{machine["load_average"][0]}', '']
  for phase in ('speed_saved_model', 'speed_bit'):
    if phase not in results:
      continue
    result = results[phase]
    rates, ratios = result['rates'], result['ratios']
    lines.append(f'{result["description"]} (teacher precision: fmx_auto = '
                 f'{result["teacher_precision"]["fmx_auto"]})')
    for side in ('baseline', 'fmx_float32', 'fmx_auto'):
      over = (f'{ratios[f"{side}_over_baseline"]:.2f}x the baseline '
              f'(CPU time {ratios[f"{side}_over_baseline_cpu"]:.2f}x, median '
              f'of rounds {ratios[f"{side}_over_baseline_median_of_rounds"]:.2f}x)'
              if side != 'baseline' else '')
      lines.append(f'  {side:<12} {rates[side]["images_per_second"]:6.1f} img/s'
                   f'  {over}')
    verdict = ('met' if ratios['fmx_auto_over_baseline'] >= PRECISION_TARGET
               else 'MISSED')
    lines += [f'  fmx defaults / baseline {ratios["fmx_auto_over_baseline"]:.2f}x '
              f'(target >= {PRECISION_TARGET:.1f}x: {verdict}); bfloat16 / float32 '
              f'teacher {ratios["auto_over_float32"]:.2f}x', '']
  if 'fidelity' in results:
    fidelity = results['fidelity']
    for name in ('demo_teacher', 'bit_r26x1'):
      f = fidelity[name]
      lines.append(f'{name}: bfloat16 vs float32 teacher on {f["images"]} test '
                   f'images: top-1 agreement {f["top1_agreement"]:.2%}, max '
                   f'|logit difference| {f["max_abs_logit_difference"]:.4f} '
                   f'(max |logit| {f["max_abs_logit"]:.1f}); teacher test top-1 '
                   f'{f["teacher_test_top1"]:.2%}')
      if 'top1_agreement_cloned' in f:
        lines.append(f'  (cloned into bfloat16 layers instead: agreement '
                     f'{f["top1_agreement_cloned"]:.2%}, max |logit difference| '
                     f'{f["max_abs_logit_difference_cloned"]:.4f})')
    for precision, r in fidelity['demo_student'].items():
      lines.append(f'demo student, teacher_precision {precision!r}: test top-1 '
                   f'{r["student_top1"]:.2%}, agreement {r["agreement"]:.2%}')
  return '\n'.join(lines)


def precision_benchmark(folder: str, start: float, machine: dict, args) -> None:
  import measure  # pylint: disable=g-import-not-at-top
  import workload as workload_lib  # pylint: disable=g-import-not-at-top
  names = args.only or PRECISION_ORDER
  results = {}
  try:
    for name in names:
      results[name] = spawn_phase(name, folder, False, args.bind,
                                  ['--teacher_precision'])
  finally:
    if args.keep:
      print(f'kept {folder}')
    else:
      shutil.rmtree(folder, ignore_errors=True)
  machine['load_average_after'] = os.getloadavg()
  print()
  print(format_precision(results, machine))
  path = args.json or os.path.join(RESULTS, 'teacher-precision.json')
  measure.write_results(path, workload_lib.DEFAULT, machine, start,
                        phases=results)


if __name__ == '__main__':
  main()
