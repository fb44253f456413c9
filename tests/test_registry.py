"""The registry contract: unique names, helpful lookups, `fmx list`."""

import gin
import pytest

from fmx import cli, entries, registry
from fmx.errors import UserError

entries.load_all()
ALL_ENTRIES = [(kind, name) for kind, reg in registry.ALL.items()
               for name in reg.names()]


def test_every_kind_has_entries():
  assert set(registry.ALL) == {'datasets', 'backbones', 'augmentations',
                               'losses', 'tasks'}
  for kind, reg in registry.ALL.items():
    assert reg.names(), kind


@pytest.mark.parametrize('kind,name', ALL_ENTRIES)
def test_lint_entry_has_a_one_line_description(kind, name):
  description = dict(registry.ALL[kind].describe())[name]
  assert description and description.endswith('.'), (
      f'{kind}.{name} needs a one-line docstring for `fmx list`')


@pytest.mark.parametrize('kind,name', ALL_ENTRIES)
def test_entry_is_gin_configurable(kind, name):
  # Every entry can be parameterised from gin under its kind's module.
  assert gin.config._REGISTRY.get_match(f'{kind}.{name}') is not None  # pylint: disable=protected-access


def test_duplicate_registration_is_an_error():
  things = registry.Registry('thing', 'things_dup_test')

  @things.register()
  def widget():
    """A widget."""

  with pytest.raises(ValueError, match="thing 'widget' is registered twice"):
    @things.register('widget')
    def other_widget():
      """Another."""


def test_unknown_name_suggests_closest_and_lists_known():
  with pytest.raises(UserError) as info:
    registry.AUGMENTATIONS.get('mixup_rol')
  message = str(info.value)
  assert "unknown augmentation 'mixup_rol'; did you mean 'mixup_roll'?" in message
  for name in registry.AUGMENTATIONS.names():
    assert name in message


def test_unknown_name_without_close_match_lists_known():
  with pytest.raises(UserError) as info:
    registry.LOSSES.get('zzzz')
  assert 'did you mean' not in str(info.value)
  assert 'kl' in str(info.value)


@pytest.mark.parametrize('kind', sorted(registry.ALL))
def test_fmx_list_prints_every_entry_with_description(kind, capsys):
  assert cli.main(['list', kind]) == 0
  out = capsys.readouterr().out
  for name, description in registry.ALL[kind].describe():
    assert f'{name}' in out and description in out


def test_fmx_list_unknown_kind(capsys):
  assert cli.main(['list', 'optimisers']) == cli.EXIT_USER_ERROR
  assert "unknown registry kind 'optimisers'" in capsys.readouterr().err
