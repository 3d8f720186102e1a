"""Each executor's request parameters: parsed once, with errors that name the key and what it must be."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s2i.contracts.stable_diffusion import GenerationParams
from s2i.contracts.params import MAX_SEED, ParameterError

DEFAULTS = GenerationParams()


def parse(**parameters) -> GenerationParams:
    params = GenerationParams.from_request(DEFAULTS, parameters)
    params.check_limits(max_num_images=4, max_pixels=1024 * 1024, max_prompt_chars=20000, max_best_of=8)
    return params


def test_empty_request_gives_the_configured_defaults():
    configured = GenerationParams.with_defaults({'steps': 10, 'width': 256})
    assert GenerationParams.from_request(configured, {}) == configured
    assert (configured.steps, configured.width, configured.height) == (10, 256, 512)


def test_configured_defaults_are_checked_like_requests():
    with pytest.raises(ValueError, match='request_defaults: steps must be less than or equal to 200, got 500'):
        GenerationParams.with_defaults({'steps': 500})


def test_integral_floats_from_jinas_protobuf_transport_are_accepted_as_integers():
    params = parse(steps=3.0, width=64.0, seed=7.0)
    assert (params.steps, params.width, params.seed) == (3, 64, 7)
    assert isinstance(params.steps, int)


def test_keys_of_other_executors_and_jinas_own_are_left_to_their_owners():
    # The gateway refuses keys that no executor owns; each executor takes only its own.
    assert parse(language='de', beam_size=2, __results__={}, stable_diffusion={'steps': 3}) == DEFAULTS


@pytest.mark.parametrize(
    'parameters, message',
    [
        ({'steps': 2.5}, 'steps must be an integer, got 2.5'),
        ({'steps': '5'}, "steps must be an integer, got '5'"),
        ({'steps': True}, 'steps must be an integer, got True'),
        ({'steps': 0}, 'steps must be greater than or equal to 1, got 0'),
        ({'num_images': 5}, 'num_images must be between 1 and 4, got 5'),
        ({'width': 100}, 'width must be a multiple of 8, got 100'),
        ({'height': 4096}, 'height must be less than or equal to 2048, got 4096'),
        ({'guidance_scale': math.nan}, 'guidance_scale must be a finite number, got nan'),
        ({'guidance_scale': -1}, 'guidance_scale must be greater than or equal to 0, got -1'),
        ({'seed': -1}, 'seed must be greater than or equal to 0, got -1'),
        ({'seed': MAX_SEED + 1}, f'seed must be less than or equal to {MAX_SEED}'),
        ({'seed': MAX_SEED, 'num_images': 2}, f'seed + num_images - 1 must be at most {MAX_SEED} (image i gets seed + i), got seed {MAX_SEED} with num_images 2'),
        ({'scheduler': 'lms'}, "scheduler must be 'default', 'euler', 'euler_a', 'ddim' or 'dpm++'; got 'lms'"),
        ({'negative_prompt': 3}, 'negative_prompt must be a string, got 3'),
        ({'negative_prompt': 'x' * 20001}, 'negative_prompt too long: 20001 characters, the limit is 20000 (max_prompt_chars)'),
        ({'negative_prompt': 'a\ud800'}, 'negative_prompt must be valid Unicode text, got a lone surrogate at character 1'),
        ({'steps': None}, 'steps must be an integer, got None'),
    ],
)
def test_bad_generation_parameters_are_rejected_with_the_key_and_range(parameters, message):
    with pytest.raises(ParameterError) as error:
        parse(**parameters)
    assert message in str(error.value)


def test_a_null_seed_asks_for_a_random_seed_per_document():
    assert parse(seed=None).seed is None


def test_an_error_quotes_only_the_start_of_a_huge_bad_value():
    # 500 documents with a 200 KB scheduler once made a 100 MB answer: each echoed the value.
    with pytest.raises(ParameterError) as error:
        parse(scheduler='x' * 200_000)
    message = str(error.value)
    assert message == (
        "scheduler must be 'default', 'euler', 'euler_a', 'ddim' or 'dpm++'; "
        "got 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx… (200000 characters)"
    )
    assert len(message) < 300


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=5,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(GenerationParams.keys()) + ['other', 'stepz']), json_values, max_size=6))
def test_any_request_either_parses_to_valid_params_or_raises_parameter_error(parameters):
    try:
        params = parse(**parameters)
    except ParameterError:
        return
    # whatever parses is within range, and integers are integers
    assert 1 <= params.steps <= 200 and params.width % 8 == 0 and params.width * params.height <= 1024 * 1024
    assert isinstance(params.steps, int) and isinstance(params.width, int)


def nested_list(depth: int) -> list:
    value = []
    for _ in range(depth):
        value = [value]
    return value


hostile_values = (
    json_values
    | st.integers(0, 300_000).map(lambda n: 'x' * n)
    | st.integers(1, 3000).map(nested_list)  # deeper than repr() can go
    | st.dictionaries(st.text(max_size=5), json_values, max_size=5)
    | st.sampled_from([math.nan, math.inf, -math.inf, 10**5000, -(10**5000), 2**63, 1e308, '\ud800', 'a\x00b'])
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(GenerationParams.keys())), hostile_values, min_size=1, max_size=8))
def test_hostile_parameter_values_raise_only_parameter_error_and_a_short_message(parameters):
    try:
        parse(**parameters)
    except ParameterError as error:
        assert len(str(error)) <= 200 * len(parameters)


@pytest.mark.parametrize(
    'parameters, message',
    [
        ({'guidance_scale': math.inf}, 'guidance_scale must be a finite number, got inf'),
        ({'steps': math.inf}, 'steps must be an integer, got inf'),
        ({'seed': math.nan}, 'seed must be an integer, got nan'),
        ({'steps': 10**30}, 'steps must be less than or equal to 200, got 1000000000000000000000000000000'),
        ({'guidance_scale': 10**5000}, 'guidance_scale must be a finite number, got a value too large to quote (int)'),
        ({'steps': nested_list(3000)}, 'steps must be an integer, got a value too large to quote (list)'),
        ({'num_images': 1e9}, 'num_images must be between 1 and 4, got 1000000000'),
        ({'width': -512}, 'width must be greater than or equal to 64, got -512'),
        ({'width': 2048, 'height': 2048}, 'width x height must be at most 1048576 pixels (max_pixels), got 2048x2048'),
        ({'steps': [5]}, 'steps must be an integer, got [5]'),
        ({'scheduler': {'name': 'ddim'}}, "scheduler must be 'default', 'euler', 'euler_a', 'ddim' or 'dpm++'; got {'name': 'ddim'}"),
    ],
)
def test_non_finite_huge_negative_and_oversized_values_are_rejected(parameters, message):
    with pytest.raises(ParameterError) as error:
        parse(**parameters)
    assert str(error.value) == message


# --- the schemas: whatever a client sends either becomes a document or raises pydantic's ValidationError

from docarray import DocList  # noqa: E402
from pydantic import ValidationError  # noqa: E402

from s2i.contracts.documents import GeneratedImage, PromptDoc  # noqa: E402

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
    if doc.blob is None and doc.image is None:  # JSON cannot carry raw bytes: HTTP clients send data URIs
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
