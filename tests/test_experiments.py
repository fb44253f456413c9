"""Every shipped experiment builds and steps: `fmx run --dry_run` on each.

Offline and at a tiny shape (mock TFDS data, a local stand-in for TF-Hub
modules), so no experiment in experiments/ can rot unnoticed.
"""

import glob
import math
import os
import re

import pytest

from conftest import REPO
from fmx.training import run

EXPERIMENTS = sorted(os.path.relpath(p, REPO) for p in
                     glob.glob(os.path.join(REPO, 'experiments', '**', '*.gin'),
                               recursive=True))


@pytest.fixture(scope='module')
def dry_run_root(tmp_path_factory):
  return str(tmp_path_factory.mktemp('dry_runs'))


def test_experiments_are_found():
  assert 'experiments/demo.gin' in EXPERIMENTS
  assert len(EXPERIMENTS) >= 10


@pytest.mark.parametrize('experiment', EXPERIMENTS)
def test_experiment_opens_with_command_and_expectation(experiment):
  header = open(os.path.join(REPO, experiment)).read().split('include')[0]
  assert header.startswith('#'), 'an experiment opens with a comment'
  assert re.search(r'fmx (run|grid|tune) --gin ' + re.escape(experiment), header), (
      'the header gives the command that runs it')


@pytest.mark.parametrize('experiment', EXPERIMENTS)
def test_dry_run(experiment, dry_run_root, monkeypatch):
  monkeypatch.chdir(dry_run_root)  # nothing may be written where a user runs
  results = run.run([os.path.join(REPO, experiment)], dry_run=True,
                    dry_run_root=dry_run_root)
  assert results['dry_run_dir'] == dry_run_root
  assert results['global_step'] == 1
  metrics = [v for k, v in results.items() if k.endswith('top1') or k == 'agreement']
  assert metrics and all(0.0 <= v <= 1.0 for v in metrics)
  assert all(math.isfinite(v) for v in results.values() if isinstance(v, float))
  assert not os.path.exists(os.path.join(dry_run_root, 'runs', 'demo', 'teacher'))
  assert not os.path.exists(os.path.join(REPO, 'runs', 'dry'))
