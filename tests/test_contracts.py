"""The contracts users code against: the error codes are published and stable, each has its answer on
every surface, and a client can read the contracts without the service's heavy dependencies."""

import subprocess
import sys

import pytest

from s2i.contracts.errors import ERRORS, PAGE_PLACES, CodedError, ErrorCode, kind_of
from s2i.contracts.params import ParameterError
from s2i.contracts.stable_diffusion import GenerationParams

# Every code ever published. A code may be added (here and in errors.py); none may be renamed or
# removed, since users' programs branch on them.
PUBLISHED = {
    'invalid_api_key', 'origin_not_allowed', 'invalid_request', 'invalid_parameter', 'unknown_parameter',
    'duplicate_field', 'unsupported_media_type', 'input_too_large', 'not_found', 'method_not_allowed',
    'model_not_found', 'unsupported', 'rate_limited', 'missing_input', 'audio_unreadable', 'audio_too_long',
    'unknown_language', 'no_speech', 'language_uncertain', 'cannot_translate', 'image_unreadable',
    'prompt_too_long', 'executor_unavailable', 'model_unavailable', 'out_of_memory', 'interrupted',
    'store_failed', 'cancelled', 'job_timeout', 'internal_error',
}
GRPC_STATUSES = {'INVALID_ARGUMENT', 'UNAUTHENTICATED', 'PERMISSION_DENIED', 'RESOURCE_EXHAUSTED', 'NOT_FOUND',
                 'UNIMPLEMENTED', 'UNAVAILABLE', 'INTERNAL', 'CANCELLED', 'DEADLINE_EXCEEDED'}


def test_no_published_code_is_renamed_or_removed():
    assert PUBLISHED <= {code.value for code in ErrorCode}


@pytest.mark.parametrize('code', list(ErrorCode), ids=lambda code: code.value)
def test_every_code_has_an_answer_on_every_surface(code):
    kind = ERRORS[code]
    assert 400 <= kind.http_status <= 599
    assert kind.openai_type in {'invalid_request_error', 'rate_limit_error', 'server_error'}
    assert kind.grpc_status in GRPC_STATUSES
    assert kind.exit_status in range(64, 79)  # sysexits.h
    assert kind.page in PAGE_PLACES
    assert kind.meaning


def test_client_errors_and_service_errors_are_told_apart():
    """A user fixes a 4xx and retries a 5xx: the two families must not mix on any surface."""
    for code, kind in ERRORS.items():
        assert (kind.openai_type == 'server_error') == (kind.http_status >= 500), code


def test_an_unknown_code_from_a_newer_service_reads_as_an_internal_error():
    assert kind_of('a_code_from_the_future') == ERRORS[ErrorCode.INTERNAL_ERROR]
    assert kind_of('') == ERRORS[ErrorCode.INTERNAL_ERROR]
    assert kind_of('no_speech') == ERRORS[ErrorCode.NO_SPEECH]


def test_a_bad_parameter_carries_its_code_and_the_field_to_blame():
    with pytest.raises(ParameterError) as raised:
        GenerationParams.from_request(GenerationParams(), {'steps': True})
    assert (raised.value.code, raised.value.param) == (ErrorCode.INVALID_PARAMETER, 'steps')
    with pytest.raises(ParameterError) as raised:
        GenerationParams.from_request(GenerationParams(), {'num_images': 3, 'best_of': 2})
    assert (raised.value.code, raised.value.param) == (ErrorCode.INVALID_PARAMETER, 'best_of')


def test_a_coded_error_keeps_its_message_for_people():
    error = CodedError('no speech detected', ErrorCode.NO_SPEECH)
    assert (str(error), error.kind.http_status) == ('no speech detected', 400)


def test_the_contracts_load_without_torch_jina_or_docarray():
    """What a client needs (codes, parameter models) imports in a bare interpreter without the heavy stack."""
    modules = ['s2i.contracts.errors', 's2i.contracts.params', 's2i.contracts.whisper', 's2i.contracts.stable_diffusion',
               's2i.contracts.caption', 's2i.contracts.clip', 's2i.contracts.store']
    script = f'import sys; [__import__(m) for m in {modules}]; print(sorted({{"torch", "jina", "docarray"}} & set(sys.modules)))'
    heavy = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, check=True).stdout.strip()
    assert heavy == '[]'
