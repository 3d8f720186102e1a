"""Settings: each from a config.yml's ``with:``, else its S2I_ variable, else its one default; a misspelt
variable is named in a warning, a misspelt key or a bad value stops the start naming it."""

import importlib
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from executors.stable_diffusion.executor import StableDiffusionExecutor
from executors.store.executor import ResultStoreExecutor
from s2i.settings import SETTINGS_CLASSES, warn_unknown_variables

ROOT = Path(__file__).resolve().parent.parent
EXECUTORS = {  # config.yml -> its settings class
    'whisper': 'executors.whisper.settings:WhisperSettings',
    'stable_diffusion': 'executors.stable_diffusion.settings:StableDiffusionSettings',
    'caption': 'executors.caption.settings:CaptionSettings',
    'clip': 'executors.clip.settings:ClipSettings',
    'store': 'executors.store.settings:StoreSettings',
}


def settings_class(path: str):
    module, _, name = path.partition(':')
    return getattr(importlib.import_module(module), name)


def test_a_misspelt_variable_is_named_with_the_closest_known_one(monkeypatch, caplog):
    monkeypatch.setenv('S2I_SD_MODLE', 'tiny')
    with caplog.at_level(logging.WARNING):
        warn_unknown_variables(logging.getLogger('test'))
    assert 'S2I_SD_MODLE (did you mean S2I_SD_MODEL?)' in caplog.text


def test_an_executor_names_a_misspelt_variable_when_it_starts(monkeypatch, capfd, tmp_path):
    monkeypatch.setenv('S2I_STORE_AUDOI', 'true')
    monkeypatch.setenv('COLUMNS', '500')  # Jina's log lines, unwrapped
    ResultStoreExecutor(store=str(tmp_path))
    logged = ' '.join(''.join(capfd.readouterr()).split())
    assert 'S2I_STORE_AUDOI (did you mean S2I_STORE_AUDIO?)' in logged


def test_a_variable_sets_its_setting(monkeypatch, tmp_path):
    monkeypatch.setenv('S2I_STORE', str(tmp_path / 'from the environment'))
    monkeypatch.setenv('S2I_STORE_AUDIO', 'true')
    monkeypatch.setenv('S2I_STORE_MAX_AGE_DAYS', '3')
    settings = ResultStoreExecutor().settings
    assert (settings.store, settings.store_audio, settings.max_age_days) == (str(tmp_path / 'from the environment'), True, 3)


@pytest.mark.parametrize('name', ['whisper', 'stable_diffusion', 'caption', 'clip'])
def test_every_executor_with_a_model_reads_the_shared_s2i_device(monkeypatch, name):
    monkeypatch.setenv('S2I_DEVICE', 'cuda:1')
    assert settings_class(EXECUTORS[name])().device == 'cuda:1'


def test_an_empty_variable_counts_as_unset(monkeypatch):
    monkeypatch.setenv('S2I_STORE_MAX_AGE_DAYS', '')
    assert ResultStoreExecutor(store='none').settings.max_age_days is None


def test_a_value_given_in_config_yml_wins_over_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv('S2I_STORE_MAX_AGE_DAYS', '3')
    monkeypatch.setenv('S2I_STORE', str(tmp_path / 'from the environment'))
    settings = ResultStoreExecutor(store=str(tmp_path / 'given'), max_age_days=5).settings
    assert (settings.store, settings.max_age_days) == (str(tmp_path / 'given'), 5)


def test_null_given_in_config_yml_is_a_value_not_a_missing_one(monkeypatch):
    monkeypatch.setenv('S2I_STORE_MAX_AGE_DAYS', '3')
    assert ResultStoreExecutor(store='none', max_age_days=None).settings.max_age_days is None


def test_a_misspelt_key_in_config_yml_stops_the_start_naming_it(tmp_path):
    from jina import Executor

    config = tmp_path / 'config.yml'
    config.write_text('jtype: ResultStoreExecutor\nwith:\n  store_audoi: true\nmetas:\n  py_modules:\n    - executors.store.executor\n')
    with pytest.raises(TypeError, match=re.escape('ResultStoreExecutor has no setting(s) store_audoi')):
        Executor.load_config(str(config))


def test_a_bad_value_stops_the_start_naming_its_variable(monkeypatch):
    monkeypatch.setenv('S2I_STORE_MAX_AGE_DAYS', 'soon')
    with pytest.raises(ValueError, match=re.escape('max_age_days (S2I_STORE_MAX_AGE_DAYS): Input should be a valid integer')):
        ResultStoreExecutor(store='none')


def test_a_bad_value_stops_an_executor_before_it_loads_its_model(monkeypatch):
    from s2i.executor_base import load_settings

    monkeypatch.setenv('S2I_SD_MAX_PIXELS', 'lots')
    with pytest.raises(ValueError, match=re.escape('max_pixels (S2I_SD_MAX_PIXELS): Input should be a valid integer')):
        load_settings(StableDiffusionExecutor, {'device': 'cpu'})  # the constructor's first step


def test_a_bad_serve_setting_stops_the_start_naming_its_variable(monkeypatch):
    from s2i.serve import apply_defaults

    monkeypatch.setenv('S2I_PORT', 'eighty')
    with pytest.raises(ValueError, match=re.escape('port (S2I_PORT): Input should be a valid integer')):
        apply_defaults()


def test_unset_serve_settings_get_their_documented_defaults(monkeypatch):
    from s2i.serve import DEFAULTS, apply_defaults

    for name in DEFAULTS:
        monkeypatch.setenv(name, '')  # empty is unset; monkeypatch restores the real values
    apply_defaults()
    assert {name: os.environ[name] for name in DEFAULTS} == {
        'S2I_HOST': '127.0.0.1', 'S2I_PORT': '8321', 'S2I_HTTP_PORT': '8322', 'S2I_SD_REPLICAS': '1'}


@pytest.mark.parametrize('name', EXECUTORS)
def test_each_config_yml_gives_only_known_settings_that_differ_from_their_defaults(name):
    config = yaml.safe_load((ROOT / 'executors' / name / 'config.yml').read_text())
    fields = settings_class(EXECUTORS[name]).model_fields
    for key, value in (config.get('with') or {}).items():
        assert key in fields, f'{name}: {key} is no setting'
        assert value != fields[key].default, f'{name}: {key} restates its default'


def test_the_settings_modules_import_pydantic_only():
    # The configuration reference is generated by importing every settings class, without the service's weight.
    modules = [path.partition(':')[0] for path in SETTINGS_CLASSES if not path.startswith('gateway.')]
    probe = (f'import sys\nfor m in {modules!r}: __import__(m)\n'
             "print(sorted(m for m in ('torch', 'jina', 'docarray', 'transformers', 'diffusers', 'PIL') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, '-c', probe], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == '[]'
