"""The result store: every answer kept, in a local folder or an S3-compatible bucket (moto's real
HTTP server on 127.0.0.1, reached only through the executor's own code and AWS_ENDPOINT_URL)."""

import json
import re
import threading
import urllib.request
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import urlparse

import boto3
import pytest
import requests
from docarray import DocList
from PIL import Image

from executors.store.executor import ResultStoreExecutor
from s2i.contracts.documents import GeneratedImage, PromptDoc, Segment
from s2i.encoding import encode_png, read_png_parameters
from s2i.runtime import INTERNAL_KEY_PARAMETER, UNAUTHENTICATED, free_port

BUCKET = 'results-bucket'
REGION = 'us-east-1'
KEY = re.compile(r'(\d{4}-\d{2}-\d{2})/([0-9a-f]{32})/(\d+\.png|result\.json|input\.\w+)')  # the documented layout


# --- the S3-compatible server, and the two kinds of store -------------------------------------------

@pytest.fixture(scope='module')
def s3_server():
    """moto's S3 over HTTP, with signatures checked: a bucket, and one user's credentials allowed s3:*."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address='127.0.0.1', port=port)
    server.start()
    endpoint = f'http://127.0.0.1:{port}'
    admin = dict(endpoint_url=endpoint, region_name=REGION, aws_access_key_id='admin', aws_secret_access_key='admin')
    boto3.client('s3', **admin).create_bucket(Bucket=BUCKET)
    iam = boto3.client('iam', **admin)
    iam.create_user(UserName='s2i')
    iam.put_user_policy(UserName='s2i', PolicyName='s3', PolicyDocument=json.dumps(
        {'Version': '2012-10-17', 'Statement': [{'Effect': 'Allow', 'Action': 's3:*', 'Resource': '*'}]}
    ))
    key = iam.create_access_key(UserName='s2i')['AccessKey']
    previous = requests.post(f'{endpoint}/moto-api/reset-auth', data=b'0').json()  # from now on, every request is checked
    yield {'endpoint': endpoint, 'key_id': key['AccessKeyId'], 'secret': key['SecretAccessKey']}
    requests.post(f'{endpoint}/moto-api/reset-auth', data=previous['PREVIOUS_INITIAL_NO_AUTH_ACTION_COUNT'].encode())
    server.stop()


@pytest.fixture
def s3(s3_server, monkeypatch):
    """The standard AWS settings, as a user of an S3-compatible service sets them; a client to check with."""
    monkeypatch.setenv('AWS_ENDPOINT_URL', s3_server['endpoint'])
    monkeypatch.setenv('AWS_ACCESS_KEY_ID', s3_server['key_id'])
    monkeypatch.setenv('AWS_SECRET_ACCESS_KEY', s3_server['secret'])
    monkeypatch.setenv('AWS_REGION', REGION)
    monkeypatch.setenv('AWS_CONFIG_FILE', '/nonexistent')  # this machine's own AWS profiles stay out of it
    monkeypatch.setenv('AWS_SHARED_CREDENTIALS_FILE', '/nonexistent')
    return boto3.client('s3')


class LocalPlace:
    def __init__(self, root: Path):
        self.root, self.location = root, str(root)

    def read(self, url: str) -> bytes:
        path = Path(url)
        assert path.is_absolute() and path.is_relative_to(self.root)
        return path.read_bytes()

    def keys(self) -> list:
        return sorted(p.relative_to(self.root).as_posix() for p in self.root.rglob('*') if p.is_file()) if self.root.exists() else []


class S3Place:
    def __init__(self, client, prefix: str):
        self.client, self.prefix, self.location = client, prefix, f's3://{BUCKET}/{prefix}'

    def read(self, url: str) -> bytes:
        parsed = urlparse(url)
        assert parsed.scheme == 's3' and parsed.netloc == BUCKET and parsed.path.startswith(f'/{self.prefix}/')
        return self.client.get_object(Bucket=BUCKET, Key=parsed.path[1:])['Body'].read()

    def keys(self) -> list:
        pages = self.client.get_paginator('list_objects_v2').paginate(Bucket=BUCKET, Prefix=f'{self.prefix}/')
        return sorted(item['Key'][len(self.prefix) + 1:] for page in pages for item in page.get('Contents', []))


@pytest.fixture(params=['local', 's3'])
def place(request, tmp_path):
    """Where results go: a fresh local folder, or a fresh prefix of the bucket."""
    if request.param == 'local':
        return LocalPlace(tmp_path / 'results')
    return S3Place(request.getfixturevalue('s3'), f'runs/{uuid.uuid4().hex}')


# --- documents as they leave Stable Diffusion ---------------------------------------------------------

def small_png(seed: int, prompt: str) -> bytes:
    image = Image.new('RGB', (8, 6), ((seed * 40) % 256, 90, 200))
    return encode_png(image, {'prompt': prompt, 'seed': seed, 'steps': 1})


def drawn(prompt: str = 'a red fox in the snow', images: int = 2, **fields) -> PromptDoc:
    doc = PromptDoc(text=prompt, **fields)
    for i in range(images):
        parameters = read_png_parameters(small_png(7 + i, prompt))
        doc.matches.append(GeneratedImage(png=small_png(7 + i, prompt), width=8, height=6, seed=7 + i, parameters=parameters))
    return doc


def heard() -> PromptDoc:
    """An audio document after Whisper and Stable Diffusion."""
    return drawn(
        'A small dog plays in the snow.', images=1, blob=b'RIFF\x24\x00\x00\x00WAVEfmt ', language='de',
        language_probability=0.98, transcript='Ein kleiner Hund spielt im Schnee.',
        segments=DocList[Segment]([Segment(start=0.0, end=2.5, text='Ein kleiner Hund spielt im Schnee.')]),
    )


def store(executor: ResultStoreExecutor, *docs: PromptDoc, parameters=None) -> DocList[PromptDoc]:
    """Documents through the store's /generate, as the Flow would send them."""
    return executor.store_results(DocList[PromptDoc](docs), parameters or {})


def record_of(place, doc: PromptDoc) -> dict:
    return json.loads(place.read(doc.result_url))


# --- both stores -----------------------------------------------------------------------------------

def test_stored_pngs_are_the_returned_bytes_and_keep_their_parameters(place):
    (doc,) = store(ResultStoreExecutor(store=place.location), drawn())
    assert doc.error == ''
    for i, image in enumerate(doc.matches):
        assert image.png is not None  # still inline
        stored = place.read(image.url)
        assert stored == image.png
        assert read_png_parameters(stored) == {'prompt': 'a red fox in the snow', 'seed': 7 + i, 'steps': 1}
        assert image.url.endswith(f'/{i}.png') and image.presigned_url == ''


def test_each_result_is_a_date_folder_with_its_images_and_record(place):
    store(ResultStoreExecutor(store=place.location), drawn(images=2))
    keys = place.keys()
    assert len(keys) == 3
    matches = [KEY.fullmatch(key) for key in keys]
    assert all(matches), keys
    assert {m[1] for m in matches} == {datetime.now(timezone.utc).strftime('%Y-%m-%d')}
    assert len({m[2] for m in matches}) == 1  # one folder per result
    assert sorted(m[3] for m in matches) == ['0.png', '1.png', 'result.json']
    assert not any(Path(key).name.startswith('.') for key in keys)  # no temporary file left behind


def test_the_record_describes_the_document(place):
    (doc,) = store(ResultStoreExecutor(store=place.location), heard())
    record = record_of(place, doc)
    folder = KEY.fullmatch(place.keys()[0])
    assert record['id'] == folder[2] and record['document_id'] == doc.id
    assert record['input'] == 'audio' and record['language'] == 'de' and record['language_probability'] == 0.98
    assert record['transcript'] == 'Ein kleiner Hund spielt im Schnee.' and record['text'] == 'A small dog plays in the snow.'
    assert record['segments'] == [{'start': 0.0, 'end': 2.5, 'text': 'Ein kleiner Hund spielt im Schnee.'}]
    assert record['error'] == '' and record['audio_url'] == ''
    (image,) = record['images']
    assert image['url'] == doc.matches[0].url and image['key'] == f'{folder[1]}/{folder[2]}/0.png'
    assert (image['seed'], image['width'], image['height']) == (7, 8, 6)
    assert image['parameters'] == doc.matches[0].parameters
    assert datetime.fromisoformat(record['stored_at']).tzinfo is not None


def test_a_failed_document_is_stored_with_its_first_error(place):
    failed = PromptDoc(blob=b'not audio', error='audio could not be decoded')
    text = drawn(images=1)
    failed_after, text_after = store(ResultStoreExecutor(store=place.location), failed, text)
    assert failed_after.error == 'audio could not be decoded'  # kept as it was
    record = record_of(place, failed_after)
    assert record['error'] == 'audio could not be decoded' and record['images'] == [] and record['input'] == 'audio'
    assert record_of(place, text_after)['input'] == 'text'
    assert record_of(place, text_after)['id'] != record['id']


def test_images_a_client_attached_to_a_failed_document_are_not_kept(place):
    # Stable Diffusion gives a document all its images or an error: a failed one's matches came from
    # its client, and the store is no file host for whatever a client sends.
    smuggled = drawn(images=1, error='no speech detected')
    smuggled.matches.append(GeneratedImage(png=b'not a png, but any file a client likes'))
    text = drawn(images=1)
    smuggled_after, text_after = store(ResultStoreExecutor(store=place.location), smuggled, text)
    assert [image.url for image in smuggled_after.matches] == ['', '']
    assert record_of(place, smuggled_after)['images'] == []
    assert sorted(key.rsplit('/', 1)[1] for key in place.keys()) == ['0.png', 'result.json', 'result.json']


def test_the_input_audio_is_stored_only_when_asked(place):
    (without,) = store(ResultStoreExecutor(store=place.location), heard())
    assert record_of(place, without)['audio_url'] == ''
    assert not any('input.' in key for key in place.keys())
    (with_audio,) = store(ResultStoreExecutor(store=place.location, store_audio=True), heard())
    record = record_of(place, with_audio)
    assert record['audio_url'].endswith('/input.wav')
    assert place.read(record['audio_url']) == with_audio.blob


def test_fifty_concurrent_calls_store_fifty_distinct_complete_results(place):
    executor = ResultStoreExecutor(store=place.location)
    answers, failures = {}, []

    def call(n: int):
        try:
            (doc,) = store(executor, drawn(f'prompt number {n}', images=1))
            answers[n] = doc
        except Exception as e:  # pragma: no cover - reported below
            failures.append(e)

    threads = [threading.Thread(target=call, args=(n,)) for n in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == [] and len(answers) == 50
    records = {n: record_of(place, doc) for n, doc in answers.items()}
    assert len({record['id'] for record in records.values()}) == 50
    for n, record in records.items():
        assert record['text'] == f'prompt number {n}'
        assert place.read(record['images'][0]['url']) == answers[n].matches[0].png
    assert len(place.keys()) == 100  # one image and one record each, nothing else


def as_jina_sends_it(doc: PromptDoc, times: int) -> list:
    """``times`` copies of ``doc`` from its protobuf: what the store gets when Jina sends a call again."""
    proto = doc.to_protobuf()
    return [PromptDoc.from_protobuf(proto) for _ in range(times)]


def test_a_retried_call_stores_one_result_and_answers_the_same_urls(place):
    # Jina retries a call whose answer was lost (a GOAWAY on an idle channel), with the same document;
    # the retry may reach another replica of the store, so a second executor takes it here.
    first, retry = as_jina_sends_it(drawn(images=2), times=2)
    (first,) = store(ResultStoreExecutor(store=place.location), first)
    (retry,) = store(ResultStoreExecutor(store=place.location), retry)
    assert first.error == retry.error == ''
    assert retry.result_url == first.result_url
    assert [image.url for image in retry.matches] == [image.url for image in first.matches]
    assert sorted(key.rsplit('/', 1)[1] for key in place.keys()) == ['0.png', '1.png', 'result.json']
    assert record_of(place, retry)['document_id'] == first.id


def test_two_documents_with_the_same_prompt_and_images_are_two_results(place):
    executor = ResultStoreExecutor(store=place.location)
    one, other = store(executor, drawn(images=1), drawn(images=1))
    assert one.result_url != other.result_url
    assert len(place.keys()) == 4 and record_of(place, one)['id'] != record_of(place, other)['id']


def test_a_retry_just_after_midnight_finds_the_result_stored_the_day_before(place, monkeypatch):
    import executors.store.executor as store_module

    first, retry = as_jina_sends_it(drawn(images=1), times=2)
    monkeypatch.setattr(store_module, 'utc_now', lambda: datetime(2031, 5, 1, 23, 59, 58, tzinfo=timezone.utc))
    (first,) = store(ResultStoreExecutor(store=place.location), first)
    monkeypatch.setattr(store_module, 'utc_now', lambda: datetime(2031, 5, 2, 0, 0, 3, tzinfo=timezone.utc))
    (retry,) = store(ResultStoreExecutor(store=place.location), retry)
    assert retry.result_url == first.result_url and retry.matches[0].url == first.matches[0].url
    assert {KEY.fullmatch(key)[1] for key in place.keys()} == {'2031-05-01'} and len(place.keys()) == 2
    (later,) = store(ResultStoreExecutor(store=place.location), drawn(images=1))  # a new result: the new day
    assert '2031-05-02' in later.result_url


@pytest.mark.parametrize('crafted', ['../../etc', '/abs/path', 'a\x00b', '..', 'x/../../y'])
def test_a_crafted_document_id_never_reaches_a_key(place, crafted, tmp_path):
    doc = drawn(images=1)
    doc.id = crafted
    (doc,) = store(ResultStoreExecutor(store=place.location), doc)
    assert doc.error == ''
    assert all(KEY.fullmatch(key) for key in place.keys())
    assert record_of(place, doc)['document_id'] == crafted  # kept, as a field
    if isinstance(place, LocalPlace):
        assert [p.name for p in tmp_path.iterdir()] == ['results']  # nothing beside the folder


# --- local folder ------------------------------------------------------------------------------------

def test_the_default_store_is_results_in_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.delenv('S2I_STORE', raising=False)
    monkeypatch.chdir(tmp_path)
    (doc,) = store(ResultStoreExecutor(), drawn(images=1))
    assert Path(doc.result_url).is_relative_to(tmp_path / 'results') and Path(doc.result_url).is_absolute()


def test_S2I_STORE_takes_a_file_url_and_the_setting_wins_over_it(tmp_path, monkeypatch):
    monkeypatch.setenv('S2I_STORE', (tmp_path / 'from env').as_uri())
    (doc,) = store(ResultStoreExecutor(), drawn(images=1))
    assert Path(doc.result_url).is_relative_to(tmp_path / 'from env')
    (doc,) = store(ResultStoreExecutor(store=str(tmp_path / 'from config')), drawn(images=1))
    assert Path(doc.result_url).is_relative_to(tmp_path / 'from config')


def test_S2I_STORE_none_leaves_documents_untouched(tmp_path, monkeypatch):
    monkeypatch.setenv('S2I_STORE', 'none')
    monkeypatch.chdir(tmp_path)
    (doc,) = store(ResultStoreExecutor(), drawn(images=1))
    assert doc.error == '' and doc.result_url == '' and doc.matches[0].url == '' and doc.matches[0].png
    assert list(tmp_path.iterdir()) == []


def test_a_folder_that_cannot_be_written_fails_each_document_and_keeps_its_images(tmp_path):
    (tmp_path / 'afile').write_text('a file, where the store needs a folder')  # fails for root too, unlike chmod
    executor = ResultStoreExecutor(store=str(tmp_path / 'afile' / 'sub'))
    first, second = store(executor, drawn(images=2), drawn(images=1))
    for doc in (first, second):
        assert doc.error == f'could not store the result: {tmp_path / "afile" / "sub"}: Not a directory'
        assert doc.error_code == 'store_failed'
        assert doc.result_url == '' and all(image.url == '' and image.png for image in doc.matches)
    assert len(first.matches) == 2 and read_png_parameters(first.matches[0].png)['seed'] == 7


def test_a_failed_store_keeps_the_first_error_of_a_document(tmp_path):
    (tmp_path / 'afile').write_text('')
    (doc,) = store(ResultStoreExecutor(store=str(tmp_path / 'afile')), PromptDoc(text='', error='nothing to draw'))
    assert doc.error == 'nothing to draw'


def test_retention_deletes_only_date_folders_older_than_max_age_days(tmp_path):
    root = tmp_path / 'results'
    today = datetime.now(timezone.utc).date()
    old, recent = (today - timedelta(days=40)).isoformat(), (today - timedelta(days=5)).isoformat()
    for folder in (old, recent, 'notes', '2000-13-45'):
        (root / folder / 'x').mkdir(parents=True)
        (root / folder / 'x' / 'result.json').write_text('{}')
    (tmp_path / '1999-01-01').mkdir()  # beside the store: never its business
    executor = ResultStoreExecutor(store=str(root), max_age_days=30)
    assert sorted(p.name for p in root.iterdir()) == sorted([recent, 'notes', '2000-13-45'])
    assert (tmp_path / '1999-01-01').exists()
    (root / '2001-01-01').mkdir()  # within the hour: the next sweep has not come yet
    store(executor, drawn(images=1))
    assert (root / '2001-01-01').exists()


def test_without_max_age_days_nothing_is_deleted(tmp_path):
    (tmp_path / 'results' / '2001-01-01').mkdir(parents=True)
    store(ResultStoreExecutor(store=str(tmp_path / 'results')), drawn(images=1))
    assert (tmp_path / 'results' / '2001-01-01').exists()


# --- S3 ------------------------------------------------------------------------------------------------

def test_a_presigned_url_fetches_the_png(s3, s3_server):
    executor = ResultStoreExecutor(store=f's3://{BUCKET}/presigned')
    (doc,) = store(executor, drawn(images=1), parameters={'presign_seconds': 600.0})  # numbers arrive as floats
    url = doc.matches[0].presigned_url
    query = dict(part.split('=', 1) for part in urlparse(url).query.split('&'))
    assert urlparse(url).scheme in ('http', 'https') and urlparse(url).hostname == '127.0.0.1'
    assert query['X-Amz-Expires'] == '600' and query['X-Amz-Algorithm'] == 'AWS4-HMAC-SHA256'
    # moto's access checks answer a query-string signature with a 500, so they pause for the fetch.
    requests.post(f'{s3_server["endpoint"]}/moto-api/reset-auth', data=b'inf')
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            assert answer.read() == doc.matches[0].png
    finally:
        requests.post(f'{s3_server["endpoint"]}/moto-api/reset-auth', data=b'0')
    assert 'presigned_url' not in json.dumps(record_of(S3Place(s3, 'presigned'), doc))  # it expires: not kept


def test_wrong_credentials_fail_each_document_and_keep_its_images(s3, monkeypatch):
    monkeypatch.setenv('AWS_SECRET_ACCESS_KEY', 'not-the-secret')
    executor = ResultStoreExecutor(store=f's3://{BUCKET}/wrong')
    docs = store(executor, drawn(images=2), drawn(images=1))
    for doc in docs:
        assert doc.error.startswith(f'could not store the result: s3://{BUCKET}/wrong: SignatureDoesNotMatch')
        assert doc.result_url == '' and all(image.url == '' and image.png for image in doc.matches)
    monkeypatch.setenv('AWS_ACCESS_KEY_ID', 'AKIAUNKNOWNUNKNOWN00')
    (doc,) = store(ResultStoreExecutor(store=f's3://{BUCKET}/wrong'), drawn(images=1))
    assert doc.error.startswith(f'could not store the result: s3://{BUCKET}/wrong: InvalidAccessKeyId')


def test_a_missing_bucket_fails_each_document_and_keeps_its_images(s3):
    (doc,) = store(ResultStoreExecutor(store='s3://no-such-bucket/p'), drawn(images=1))
    assert doc.error == 'could not store the result: s3://no-such-bucket/p: NoSuchBucket: The specified bucket does not exist'
    assert doc.matches[0].png and doc.matches[0].url == ''


def test_an_unreachable_endpoint_fails_the_batch_within_a_bounded_time(s3, monkeypatch):
    monkeypatch.setenv('AWS_ENDPOINT_URL', f'http://127.0.0.1:{free_port()}')  # nothing listens there
    executor = ResultStoreExecutor(store=f's3://{BUCKET}/p')
    docs = store(executor, *(drawn(images=1) for _ in range(5)))
    for doc in docs:  # the first document's failure answers the rest: the batch does not wait once per document
        assert doc.error.startswith(f'could not store the result: s3://{BUCKET}/p: Could not connect to the endpoint URL')
        assert doc.matches[0].png


def test_a_failed_result_leaves_nothing_half_written(s3, monkeypatch):
    place = S3Place(s3, 'half')
    executor = ResultStoreExecutor(store=place.location)
    monkeypatch.setattr(executor.store.client, 'put_object', failing_after(executor.store.client.put_object, 1))
    (doc,) = store(executor, drawn(images=2))
    assert doc.error == 'could not store the result: s3://results-bucket/half: No space left on device'
    assert place.keys() == []  # the first image, stored before the failure, is gone again
    assert doc.matches[0].url == '' and doc.matches[0].png


def test_a_retry_that_fails_leaves_no_record_of_missing_images(s3, monkeypatch):
    place = S3Place(s3, f'retry-{uuid.uuid4().hex}')
    first, retry = as_jina_sends_it(drawn(images=2), times=2)
    store(ResultStoreExecutor(store=place.location), first)
    executor = ResultStoreExecutor(store=place.location)
    monkeypatch.setattr(executor.store.client, 'put_object', failing_after(executor.store.client.put_object, 1))
    (retry,) = store(executor, retry)
    assert retry.error == f'could not store the result: {place.location}: No space left on device'
    for key in place.keys():  # a record means a complete result
        if key.endswith('/result.json'):
            for image in json.loads(place.read(f's3://{BUCKET}/{place.prefix}/{key}'))['images']:
                place.read(image['url'])


def failing_after(put, successes: int):
    """``put`` that works ``successes`` times, then fails as a full disk would."""
    calls = []

    def put_then_fail(**kwargs):
        calls.append(kwargs['Key'])
        if len(calls) > successes:
            raise OSError(28, 'No space left on device')
        return put(**kwargs)

    return put_then_fail


# --- requests and settings ------------------------------------------------------------------------------

def test_presign_seconds_out_of_range_is_invalid_parameters(tmp_path):
    (doc,) = store(ResultStoreExecutor(store=str(tmp_path)), drawn(images=1), parameters={'presign_seconds': 604801})
    assert doc.error == 'invalid parameters: presign_seconds must be less than or equal to 604800, got 604801'
    assert (doc.error_code, doc.error_param) == ('invalid_parameter', 'presign_seconds')
    assert list(tmp_path.iterdir()) == []


def test_a_local_store_ignores_presign_seconds(tmp_path):
    (doc,) = store(ResultStoreExecutor(store=str(tmp_path)), drawn(images=1), parameters={'presign_seconds': 60})
    assert doc.error == '' and doc.matches[0].presigned_url == '' and Path(doc.matches[0].url).exists()


def test_the_parameters_endpoint_lists_presign_seconds(tmp_path):
    from s2i.contracts.documents import ParameterSchema

    (schema,) = ResultStoreExecutor(store=str(tmp_path)).describe_parameters(DocList[ParameterSchema]())
    assert schema.keys == ['presign_seconds']


def test_a_call_around_the_gateway_is_refused_and_nothing_stored(tmp_path, monkeypatch):
    monkeypatch.setenv('S2I_AUTH_TOKEN', 'secret')
    place = LocalPlace(tmp_path / 'results')
    (doc,) = store(ResultStoreExecutor(store=place.location), drawn(images=1), parameters={INTERNAL_KEY_PARAMETER: 'guess'})
    assert doc.error == UNAUTHENTICATED and doc.error_code == 'invalid_api_key' and doc.result_url == ''
    assert place.keys() == []


def test_config_yml_builds_the_executor_from_S2I_STORE(tmp_path, monkeypatch):
    from jina import Executor

    monkeypatch.setenv('S2I_STORE', str(tmp_path / 'kept'))
    executor = Executor.load_config(str(Path(__file__).resolve().parent.parent / 'executors' / 'store' / 'config.yml'))
    (doc,) = store(executor, drawn(images=1))
    assert Path(doc.result_url).is_relative_to(tmp_path / 'kept')


def test_where_a_result_is_stored_travels_over_protobuf(tmp_path):
    (doc,) = store(ResultStoreExecutor(store=str(tmp_path)), drawn(images=1))
    copy = PromptDoc.from_protobuf(doc.to_protobuf())
    assert copy.result_url == doc.result_url and copy.matches[0].url == doc.matches[0].url


@pytest.mark.parametrize('settings, message', [
    ({'store': 'gs://bucket'}, 'must be a folder, file:///path, s3://bucket/prefix or none'),
    ({'store': 's3://'}, 'names no bucket'),
    ({'max_age_days': 0}, 'max_age_days (S2I_STORE_MAX_AGE_DAYS): Input should be greater than or equal to 1'),
    ({'max_age_dayz': 3}, 'has no setting(s) max_age_dayz'),
])
def test_bad_settings_stop_the_start(tmp_path, settings, message):
    with pytest.raises((ValueError, TypeError), match=re.escape(message)):
        ResultStoreExecutor(**{'store': str(tmp_path), **settings})



# --- through the real Flow ------------------------------------------------------------------------------

@pytest.mark.slow
def test_through_the_flow_50_concurrent_requests_land_in_the_bucket_as_50_complete_results(s3_server, tiny_sd_dir):
    """`python -m s2i.serve` with S2I_STORE=s3://... and the standard AWS settings, asked by the client."""
    import sys
    from concurrent.futures import ThreadPoolExecutor

    from s2i import client
    from s2i.serve import READY_LINE

    from servers import flow_on_free_ports

    prefix = f'flow-{uuid.uuid4().hex}'
    aws = {'AWS_ENDPOINT_URL': s3_server['endpoint'], 'AWS_ACCESS_KEY_ID': s3_server['key_id'],
           'AWS_SECRET_ACCESS_KEY': s3_server['secret'], 'AWS_REGION': REGION,
           'AWS_CONFIG_FILE': '/nonexistent', 'AWS_SHARED_CREDENTIALS_FILE': '/nonexistent'}
    server, hosts = flow_on_free_ports([sys.executable, '-m', 's2i.serve'], S2I_SD_MODEL=tiny_sd_dir, S2I_DEVICE='cpu',
                                       S2I_STORE=f's3://{BUCKET}/{prefix}', **aws)
    small = {'width': 64, 'height': 64, 'steps': 1}
    try:
        server.wait_for(READY_LINE)
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda n: client.generate(prompts=[f'stored {n}'], parameters={**small, 'seed': n},
                                                              host=hosts['grpc' if n % 2 else 'http'], token='')[0], range(50)))
    finally:
        server.kill()
    bucket = S3Place(boto3.client('s3', endpoint_url=s3_server['endpoint'], region_name=REGION,
                                  aws_access_key_id=s3_server['key_id'], aws_secret_access_key=s3_server['secret']), prefix)
    assert len({doc.result_url for doc in answers}) == 50
    for n, doc in enumerate(answers):
        assert doc.error == '' and len(doc.matches) == 1
        (image,) = doc.matches
        assert bucket.read(image.url) == image.png  # the bytes the client got, unchanged
        assert read_png_parameters(bucket.read(image.url))['prompt'] == f'stored {n}'
        record = json.loads(bucket.read(doc.result_url))
        assert record['text'] == f'stored {n}' and [i['url'] for i in record['images']] == [image.url]
    assert len(bucket.keys()) == 100  # a PNG and a record each, nothing else
