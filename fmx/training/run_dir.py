"""A run folder's safety: writable, roomy, one config, readable checkpoints.

A run folder outlives the process that trains into it: runs are killed,
preempted and restarted for days. Everything here runs before training
starts and either fixes what can be fixed safely (a corrupt latest
checkpoint is moved aside, never deleted) or stops with a UserError that
says what to do, without touching what is already written.
"""

import contextlib
import inspect
import os
import re
import shutil
import time
from typing import Any, Dict, List, Mapping, Optional

import gin
import tensorflow as tf
from absl import logging
from official.core import train_utils

from fmx.errors import UserError

OPERATIVE_CONFIG = 'operative_config.gin'
CORRUPT_FOLDER = 'corrupt_checkpoints'
# Values that do not change what a run computes: where it is written, and
# how many threads share the cores (`fmx grid --parallel`).
_IGNORED_KEYS = ('Experiment.model_dir', 'Runtime.intra_op_threads')
# Settings added to fmx whose 'auto' default may change what a run did before
# they existed: the value those runs ran with. Resuming such a run where
# 'auto' now resolves otherwise is a config change, not an added default.
_BEFORE_ADDED = {'distillation.teacher_precision': 'float32'}
_DISK_ERRORS = ('No space left', 'Read-only file system', 'Permission denied',
                'Disk quota exceeded')


def write_text(path: str, text: str) -> None:
  """Writes via a temporary file and a rename, so a kill never leaves half a file."""
  tmp = path + '.tmp'
  with tf.io.gfile.GFile(tmp, 'w') as f:
    f.write(text)
  tf.io.gfile.rename(tmp, path, overwrite=True)


def prepare(model_dir: str) -> None:
  """Creates model_dir and checks that it can be written."""
  try:
    tf.io.gfile.makedirs(model_dir)
    probe = os.path.join(model_dir, '.fmx_write_test')
    write_text(probe, '')
    tf.io.gfile.remove(probe)
  except (tf.errors.OpError, OSError) as e:
    raise UserError(f'model_dir {model_dir!r} is not writable ({_reason(e)}); '
                    'choose another --model_dir or fix its permissions.') from None


@contextlib.contextmanager
def removed_if_left_empty(model_dir: str):
  """A run folder this start created is removed if it fails with it empty.

  A failed start (a model that does not build, a config refused) would
  otherwise leave an empty folder that looks like a run. Anything written
  in it (a checkpoint, a config) keeps it.
  """
  existed = tf.io.gfile.exists(model_dir)
  try:
    yield
  except BaseException:
    if not existed and _holds_no_file(model_dir):
      tf.io.gfile.rmtree(model_dir)
    raise


def _holds_no_file(folder: str) -> bool:
  try:
    return tf.io.gfile.isdir(folder) and not any(
        names for _, _, names in tf.io.gfile.walk(folder))
  except tf.errors.OpError:
    return False


@contextlib.contextmanager
def disk_errors_as_user_errors(model_dir: str):
  """A full or read-only model_dir met while training ends as a UserError.

  TF writes a checkpoint to temporary files and renames them only when
  complete, so the latest checkpoint listed stays intact and readable.
  """
  try:
    yield
  except (tf.errors.OpError, OSError) as e:
    reason = _reason(e)
    if not any(text in reason for text in _DISK_ERRORS):
      raise
    raise UserError(
        f'writing to model_dir {model_dir!r} failed ({reason}); its latest '
        f'checkpoint, {tf.train.latest_checkpoint(model_dir)}, is intact. Free '
        'space or fix the folder, then rerun the same command to resume.'
    ) from None


def check_free_space(model_dir: str, checkpoint_bytes: int) -> None:
  """Fails before training if a local model_dir cannot hold two more checkpoints.

  A save writes the new checkpoint before the oldest is deleted, so two
  checkpoints' room is the least a run needs. Remote folders (gs://) are
  not checked.
  """
  if '://' in model_dir:
    return
  free = shutil.disk_usage(model_dir).free
  if free < 2 * checkpoint_bytes:
    raise UserError(
        f'model_dir {model_dir!r} has {free / 2**20:.1f} MiB free but a '
        f'checkpoint of this run takes {checkpoint_bytes / 2**20:.1f} MiB and '
        'a save needs room for two; free some space or choose another '
        '--model_dir.')


def parse_config(text: str) -> Dict[str, str]:
  """`key -> value` of a gin operative config (values with their line breaks)."""
  values, key = {}, None
  for line in text.splitlines():
    if not line.strip() or line.lstrip().startswith('#'):
      continue
    match = re.match(r'^([\w./]+)\s*=\s*(.*)$', line)
    if match and not line[0].isspace():
      key = match[1]
      values[key] = match[2].strip()
    elif key and not line.startswith(('import ', 'include ', 'from ')):
      values[key] += ' ' + line.strip()  # a value continued on this line
  # gin breaks long values after 'KEY = \'; the break is not part of it.
  return {k: re.sub(r'^\\\s*', '', v) for k, v in values.items()}


def config_differences(old: str, new: str,
                       ignore_added_defaults: bool = False,
                       resolved: Optional[Mapping[str, Any]] = None) -> List[str]:
  """'key: old -> new' for every key whose value differs between two configs.

  With `ignore_added_defaults`, a key only `new` has, at its parameter's
  default, is no difference: it is a setting a later fmx added, and the old
  run ran with that default's behaviour (e.g. a run folder written before
  `distillation.teacher_jit_compile` existed). `resolved` maps keys whose
  new value is resolved at run time ('auto') to what it resolved to; an old
  value equal to that is no difference either (a run from before
  `Runtime.mixed_precision = 'auto'` that used None, resumed on a CPU).
  An added key whose default resolves to other behaviour than the old run's
  (`distillation.teacher_precision = 'auto'` meaning bfloat16 on a run that
  computed its teacher in float32) is a difference.
  """
  resolved = resolved or {}
  before, after = parse_config(old), parse_config(new)
  lines = []
  for key in sorted(set(before) | set(after)):
    if key in _IGNORED_KEYS or before.get(key) == after.get(key):
      continue
    if (ignore_added_defaults and key not in before
        and _is_default(key, after[key])
        and (key not in _BEFORE_ADDED
             or resolved.get(key, _BEFORE_ADDED[key]) == _BEFORE_ADDED[key])):
      continue
    if key in resolved and key in before and _value(before[key]) == resolved[key]:
      continue
    unset = (f'(unset: {_BEFORE_ADDED[key]})' if key in _BEFORE_ADDED
             else '(unset)')
    here = (f' ({resolved[key]} here)' if key in resolved
            and _value(after.get(key, '')) != resolved[key] else '')
    lines.append(f'{key}: {before.get(key, unset)} -> '
                 f'{after.get(key, "(unset)")}{here}')
  return lines


def _value(text: str) -> Any:
  try:
    return gin.config.parse_value(text)
  except (ValueError, SyntaxError):
    return text  # not a literal (a reference): compared as written


def _is_default(key: str, value: str) -> bool:
  """True if `value` is the default of the gin parameter `key`."""
  # 'scope/module.configurable.parameter': the scope does not change defaults.
  name, _, parameter = key.rpartition('/')[2].rpartition('.')
  try:
    signature = inspect.signature(gin.config.get_configurable(name))
    default = signature.parameters[parameter].default
    return (default is not inspect.Parameter.empty
            and gin.config.parse_value(value) == default)
  except (ValueError, KeyError, SyntaxError, TypeError):
    return False  # unknown to this fmx, or not a literal: a real difference


def check_config(model_dir: str, config: str, allow_change: bool,
                 resolved: Optional[Mapping[str, Any]] = None) -> None:
  """Writes the operative config; refuses one that differs from the folder's.

  A checkpoint trained under one config and resumed under another is a run
  of neither. With allow_change the earlier config is kept beside the new
  one (operative_config.before-<time>.gin). Settings added to fmx since the
  run began, at their defaults, and 'auto' values that resolve to the old
  run's are not differences (see config_differences).
  """
  path = os.path.join(model_dir, OPERATIVE_CONFIG)
  if tf.io.gfile.exists(path):
    with tf.io.gfile.GFile(path) as f:
      previous = f.read()
    differences = config_differences(previous, config,
                                     ignore_added_defaults=True,
                                     resolved=resolved)
    if differences and not allow_change:
      shown = '; '.join(differences[:8]) + (
          f'; and {len(differences) - 8} more' if len(differences) > 8 else '')
      raise UserError(
          f'model_dir {model_dir!r} holds a run with another config ({path}): '
          f'{shown}. Use another --model_dir for a new run, or pass '
          '--allow_config_change to continue this one with the new values '
          '(the old config is kept beside it).')
    if previous != config:
      stamp = time.strftime('%Y%m%d-%H%M%S')
      tf.io.gfile.rename(path, path.replace('.gin', f'.before-{stamp}.gin'),
                         overwrite=True)
  write_text(path, config)


def _unreadable(prefix: str) -> Optional[str]:
  """Why the checkpoint at `prefix` cannot be restored, or None if it can.

  Reading every tensor verifies the checksums of the data files, so
  truncated or overwritten files are found, not only missing ones.
  """
  try:
    reader = tf.train.load_checkpoint(prefix)
    for name in reader.get_variable_to_shape_map():
      reader.get_tensor(name)
  except (tf.errors.OpError, ValueError, OSError, IndexError) as e:
    return _reason(e)
  return None


def restorable_step(model_dir: str) -> int:
  """The step of the newest readable checkpoint of model_dir (0: none).

  Checkpoints newer than it that cannot be read (a truncated copy, a disk
  error) are moved into model_dir/corrupt_checkpoints/ with a warning, and
  the checkpoint list is pointed at the readable one, so the trainer
  resumes from it.
  """
  state = tf.train.get_checkpoint_state(model_dir)
  if state is None or not state.model_checkpoint_path:
    return 0
  paths = list(state.all_model_checkpoint_paths) or [state.model_checkpoint_path]
  if state.model_checkpoint_path not in paths:
    paths.append(state.model_checkpoint_path)
  # get_checkpoint_state has already joined relative entries to model_dir.
  corrupt = []
  while paths:
    problem = _unreadable(paths[-1])
    if problem is None:
      break
    corrupt.append((paths.pop(), problem))
  if not corrupt:
    return checkpoint_step(paths[-1])
  folder = os.path.join(model_dir, CORRUPT_FOLDER)
  tf.io.gfile.makedirs(folder)
  for prefix, problem in corrupt:
    for name in tf.io.gfile.glob(prefix + '.*'):
      tf.io.gfile.rename(name, os.path.join(folder, os.path.basename(name)),
                         overwrite=True)
    message = (f'checkpoint {prefix} cannot be read ({problem}); moved it to '
               f'{folder}/ and falling back to '
               f'{paths[-1] if paths else "no checkpoint"}.')
    logging.warning(message)
    print(f'fmx: warning: {message}', flush=True)
  if not paths:
    raise UserError(
        f'no checkpoint of model_dir {model_dir!r} can be read (moved to '
        f'{folder}/); to start the run over, remove the file '
        f'{os.path.join(model_dir, "checkpoint")} and rerun.')
  tf.compat.v1.train.update_checkpoint_state(
      model_dir, paths[-1], all_model_checkpoint_paths=paths)
  return checkpoint_step(paths[-1])


def checkpoint_step(prefix: str) -> int:
  """The global step a checkpoint was saved at."""
  return int(train_utils.read_global_step_from_checkpoint(prefix))


def _reason(error: Exception) -> str:
  text = getattr(error, 'message', None) or str(error)
  return text.strip().splitlines()[0] if text.strip() else type(error).__name__
