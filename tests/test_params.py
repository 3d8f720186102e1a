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
        ({'seed': MAX_SEED, 'num_images': 2}, f'seed + num_images - 1 must be at most {MAX_SEED} (image i gets seed + i), got seed {MAX_SEED} with num_images 2'),
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


@pytest.mark.parametrize(
    'parameters, message',
    [
        ({'guidance_scale': math.inf}, 'guidance_scale must be a finite number, got inf'),
        ({'steps': math.inf}, 'steps must be an integer, got inf'),
        ({'seed': math.nan}, 'seed must be an integer, got nan'),
        ({'steps': 10**30}, 'steps must be between 1 and 200, got 1000000000000000000000000000000'),
        ({'num_images': 1e9}, 'num_images must be between 1 and 4, got 1000000000'),
        ({'width': -512}, 'width must be between 64 and 2048, got -512'),
        ({'width': 2048, 'height': 2048}, 'width x height must be at most 1048576 pixels (max_pixels), got 2048x2048'),
        ({'steps': [5]}, 'steps must be an integer, got [5]'),
        ({'scheduler': {'name': 'ddim'}}, "scheduler must be a string, got {'name': 'ddim'}"),
    ],
)
def test_non_finite_huge_negative_and_oversized_values_are_rejected(parameters, message):
    with pytest.raises(ParameterError) as error:
        GenerationParams.from_request(DEFAULTS, parameters, max_num_images=4, max_pixels=1024 * 1024)
    assert str(error.value) == message


# --- the schemas: whatever a client sends either becomes a document or raises pydantic's ValidationError

from docarray import DocList  # noqa: E402
from pydantic import ValidationError  # noqa: E402

from s2i.docs import GeneratedImage, PromptDoc  # noqa: E402

PROMPT_FIELDS = sorted(PromptDoc.model_fields)
tensor_like = st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), max_size=8) | st.lists(
    st.lists(st.floats(width=32), min_size=1, max_size=3), max_size=3
)
field_values = json_values | st.binary(max_size=16) | tensor_like


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(PROMPT_FIELDS + ['extra', 'matches']), field_values, max_size=6))
def test_any_prompt_doc_input_either_validates_or_raises_validation_error(fields):
    try:
        doc = PromptDoc(**fields)
    except ValidationError:
        return
    # What validates travels the Flow: through protobuf (gRPC) and JSON (HTTP) and back.
    assert PromptDoc.from_protobuf(doc.to_protobuf()).text == doc.text
    if doc.blob is None:  # JSON cannot carry raw bytes: HTTP clients send data URIs (client.py does)
        assert PromptDoc.model_validate_json(doc.model_dump_json()).error == doc.error


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(GeneratedImage.model_fields)), field_values, max_size=5))
def test_any_generated_image_input_either_validates_or_raises_validation_error(fields):
    try:
        image = GeneratedImage(**fields)
    except ValidationError:
        return
    assert GeneratedImage.from_protobuf(image.to_protobuf()).seed == image.seed


@settings(max_examples=100, deadline=None)
@given(st.lists(st.dictionaries(st.sampled_from(['text', 'blob', 'language', 'sample_rate']), field_values, max_size=3), max_size=4))
def test_any_list_of_prompt_docs_either_validates_or_raises_validation_error(items):
    try:
        docs = DocList[PromptDoc]([PromptDoc(**item) for item in items])
    except ValidationError:
        return
    assert len(DocList[PromptDoc].from_protobuf(docs.to_protobuf())) == len(items)


@pytest.mark.parametrize('value', [b'abcd', 10**10, 5.0, '5'], ids=['bytes', 'int', 'float', 'string'])
def test_bytes_or_a_number_given_as_a_tensor_are_refused_instead_of_read_as_a_shape(value):
    # docarray alone reads them as a shape: 10**10 (which JSON over HTTP can carry) would allocate 80 GB
    with pytest.raises(ValidationError, match='tensor must be an array or a list of numbers'):
        PromptDoc(tensor=value)


def test_a_tensor_over_http_is_a_json_list_of_samples():
    assert PromptDoc.model_validate_json('{"tensor": [0.0, 0.5, -0.5]}').tensor.shape == (3,)


def test_a_zero_dimensional_tensor_is_refused():
    with pytest.raises(ValidationError, match='tensor must have at least one dimension'):
        PromptDoc(tensor=__import__('numpy').array(1.0, dtype='float32'))
