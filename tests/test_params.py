import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s2i.params import MAX_SEED, REQUEST_KEYS, GenerationParams, ParameterError, TranscriptionParams

DEFAULTS = GenerationParams()


def parse(**parameters) -> GenerationParams:
    return GenerationParams.from_request(DEFAULTS, parameters, max_num_images=4)


def test_empty_request_gives_the_configured_defaults():
    configured = GenerationParams(steps=10, width=256)
    assert GenerationParams.from_request(configured, {}, max_num_images=4) == configured


def test_integral_floats_from_jinas_protobuf_transport_are_accepted_as_integers():
    params = parse(steps=3.0, width=64.0, seed=7.0)
    assert (params.steps, params.width, params.seed) == (3, 64, 7)
    assert isinstance(params.steps, int)


def test_transcription_keys_are_accepted_by_the_generation_parser():
    assert parse(language='de', beam_size=2) == DEFAULTS


def test_jina_internal_keys_are_ignored():
    assert parse(__results__={}) == DEFAULTS


@pytest.mark.parametrize(
    'parameters, message',
    [
        ({'step': 5}, "unknown parameter(s) 'step'"),
        ({'steps': 2.5}, 'steps must be an integer, got 2.5'),
        ({'steps': '5'}, "steps must be an integer, got '5'"),
        ({'steps': True}, 'steps must be an integer, got True'),
        ({'steps': 0}, 'steps must be between 1 and 200, got 0'),
        ({'num_images': 5}, 'num_images must be between 1 and 4, got 5'),
        ({'width': 100}, 'width must be a multiple of 8, got 100'),
        ({'height': 4096}, 'height must be between 64 and 2048, got 4096'),
        ({'guidance_scale': math.nan}, 'guidance_scale must be a finite number, got nan'),
        ({'guidance_scale': -1}, 'guidance_scale must be between 0.0 and 50.0, got -1.0'),
        ({'seed': -1}, f'seed must be between 0 and {MAX_SEED}, got -1'),
        ({'seed': MAX_SEED + 1}, f'seed must be between 0 and {MAX_SEED}'),
        ({'scheduler': 'lms'}, "scheduler must be one of default, euler, euler_a, ddim, dpm++; got 'lms'"),
        ({'negative_prompt': 3}, 'negative_prompt must be a string, got 3'),
        ({'steps': None}, 'steps must not be null'),
        ({'return_data_uri': 1}, 'return_data_uri must be true or false, got 1'),
    ],
)
def test_bad_generation_parameters_are_rejected_with_the_key_and_range(parameters, message):
    with pytest.raises(ParameterError) as error:
        parse(**parameters)
    assert message in str(error.value)


@pytest.mark.parametrize(
    'parameters, message',
    [
        ({'language': 'english'}, "language must be an ISO 639-1 code such as \"en\" or \"de\", got 'english'"),
        ({'beam_size': 0}, 'beam_size must be between 1 and 20, got 0'),
        ({'lang': 'de'}, "unknown parameter(s) 'lang'"),
    ],
)
def test_bad_transcription_parameters_are_rejected(parameters, message):
    with pytest.raises(ParameterError) as error:
        TranscriptionParams.from_request(TranscriptionParams(), parameters)
    assert message in str(error.value)


def test_seed_none_means_a_fresh_random_seed():
    assert parse(seed=None).seed is None


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=5,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(REQUEST_KEYS) + ['other', 'stepz']), json_values, max_size=6))
def test_any_request_either_parses_to_valid_params_or_raises_parameter_error(parameters):
    try:
        params = parse(**parameters)
    except ParameterError:
        return
    params.validate(max_num_images=4)  # whatever parses is within range
    assert isinstance(params.steps, int) and isinstance(params.width, int)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(REQUEST_KEYS) + ['other']), json_values, max_size=4))
def test_any_request_either_parses_to_transcription_params_or_raises_parameter_error(parameters):
    try:
        params = TranscriptionParams.from_request(TranscriptionParams(), parameters)
    except ParameterError:
        return
    assert params.language is None or isinstance(params.language, str)
    assert isinstance(params.beam_size, int) and 1 <= params.beam_size <= 20
