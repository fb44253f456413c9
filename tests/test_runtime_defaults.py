"""Runtime's per-device defaults: XLA and mixed precision resolved from 'auto'.

No training and no devices: device detection is monkeypatched, and a TPU is
only named (Runtime never connects to it before `strategy()`).
"""

import gin
import pytest
import tensorflow as tf
from official.core import config_definitions as cfg

from fmx.errors import UserError
from fmx.training import trainer as trainer_lib
from fmx.training.settings import Runtime


@pytest.fixture
def gpus(monkeypatch):
  """Makes TensorFlow report `count` GPUs to Runtime's detection."""
  def set_count(count):
    real = tf.config.list_physical_devices
    monkeypatch.setattr(tf.config, 'list_physical_devices', lambda kind=None: (
        [f'/physical_device:GPU:{i}' for i in range(count)] if kind == 'GPU'
        else real(kind)))
  return set_count


@pytest.mark.parametrize('count, device, xla, precision', [
    (0, 'cpu', False, None),
    (1, 'gpu', True, 'float16'),
    (4, 'gpu', True, 'float16'),
])
def test_auto_follows_the_detected_device(gpus, count, device, xla, precision):
  gpus(count)
  runtime = Runtime()
  assert (runtime.device, runtime.xla, runtime.mixed_precision) == (
      device, xla, precision)


@pytest.mark.parametrize('settings', [dict(tpu='grpc://10.0.0.2:8470'),
                                      dict(distribution_strategy='tpu')])
def test_a_tpu_means_xla_and_bfloat16(gpus, settings):
  gpus(0)
  runtime = Runtime(**settings)
  assert (runtime.device, runtime.xla, runtime.mixed_precision) == (
      'tpu', True, 'bfloat16')


def test_explicit_values_win_over_the_device_default(gpus):
  gpus(0)
  runtime = Runtime(xla=True, mixed_precision='bfloat16')
  assert (runtime.xla, runtime.mixed_precision) == (True, 'bfloat16')
  gpus(1)
  runtime = Runtime(xla=False, mixed_precision=None)
  assert (runtime.xla, runtime.mixed_precision) == (False, None)


def test_a_tpu_always_compiles():
  assert Runtime.resolve_numerics('tpu', False, 'auto') == (True, 'bfloat16')


def test_gin_binds_both(gpus):
  gpus(0)
  gin.parse_config("Runtime.xla = True\nRuntime.mixed_precision = 'auto'")
  runtime = Runtime()
  assert (runtime.xla, runtime.mixed_precision) == (True, None)


@pytest.mark.parametrize('settings', [dict(mixed_precision='float32'),
                                      dict(mixed_precision='mixed_bfloat16'),
                                      dict(xla='auto')])
def test_unknown_values_are_user_errors(settings):
  with pytest.raises(UserError, match='Runtime.'):
    Runtime(**settings)


def test_model_garden_config_gets_resolved_values(gpus):
  gpus(1)
  config = Runtime().runtime_config()
  assert config.enable_xla is True
  assert config.mixed_precision_dtype == 'float16'
  gpus(0)
  config = Runtime().runtime_config()
  assert config.enable_xla is False and config.mixed_precision_dtype is None


@pytest.mark.parametrize('enable_xla', [True, False])
def test_fmx_trainer_compiles_on_a_cpu_when_asked(enable_xla):
  # Model Garden's own trainer would compile only with GPUs (num_gpus > 0).
  config = cfg.ExperimentConfig(runtime=cfg.RuntimeConfig(enable_xla=enable_xla,
                                                          num_gpus=0))
  strategy = tf.distribute.OneDeviceStrategy('/cpu:0')
  assert trainer_lib.compiles_train_step(config, strategy) is enable_xla
