"""The page (/ui) in a real browser: Debian's Chromium driven by Playwright, against the real service
(tests/front_door.py: gateway, bundled Whisper, tiny SD, BLIP and CLIP). Each test reads like a person's steps; the
main states are saved as screenshots in tests/artifacts/ (git-ignored) for a reviewer to look at."""

import http.client
import json
import re
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, Iterator, List, Optional, Tuple, get_args
from urllib.parse import urlsplit

import pytest

from conftest import DATA, ENGLISH_CLIP, GERMAN_CLIP, ROOT, free_port
from front_door import TOKEN
from step_hooks import HELD_AT, HELD_SIZE, HELD_STEPS, step_hold
from s2i.contracts.errors import ERRORS, ErrorCode
from s2i.contracts.params import MAX_SEED
from s2i.contracts.stable_diffusion import GenerationParams, Scheduler

CHROMIUM = '/usr/bin/chromium'
ARTIFACTS = ROOT / 'tests' / 'artifacts'
JOB_WAIT_MS = 120_000  # any one job (a cold Whisper on 2 cores)
SMALL = {'num_images': '1', 'width': '64', 'height': '64', 'steps': '2'}

sync_api = pytest.importorskip('playwright.sync_api', reason='Playwright for Python is not installed (requirements-dev.txt)')
if not Path(CHROMIUM).exists():
    pytest.skip(f'no Chromium at {CHROMIUM} (apt install chromium)', allow_module_level=True)


@pytest.fixture(scope='module')
def browser() -> Iterator:
    """One headless Chromium for the module, its microphone a fake one that plays the English clip once."""
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            '--use-fake-ui-for-media-stream', '--use-fake-device-for-media-stream',
            f'--use-file-for-fake-audio-capture={ENGLISH_CLIP}%noloop',
        ])
        yield launched
        launched.close()


class Visit:
    """A page of the UI in a fresh browser context, with what it asked for and complained about."""

    def __init__(self, browser, base: str):
        self.base = base
        self.context = browser.new_context(viewport={'width': 1100, 'height': 900})
        self.context.set_default_timeout(JOB_WAIT_MS)
        self.page = self.context.new_page()
        self.requests: List[str] = []
        self.console_errors: List[str] = []
        self.page.on('request', lambda request: self.requests.append(request.url))
        self.page.on('websocket', lambda websocket: self.requests.append(websocket.url))
        self.page.on('console', lambda message: message.type == 'error' and self.console_errors.append(message.text))
        self.page.on('pageerror', lambda error: self.console_errors.append(str(error)))

    def open(self, token: str = TOKEN, **settings: str):
        self.page.goto(f'{self.base}/ui')
        self.page.get_by_test_id('token').fill(token)
        self.page.get_by_test_id('token').press('Tab')  # "change": kept, and the bounds are asked for
        for name, value in settings.items():
            self.page.locator(f'#{name}').fill(value)
        self.page.locator('h1').click()  # nothing focused: the screenshots show the page as it rests
        return self.page

    def foreign_hosts(self) -> List[str]:
        ours = urlsplit(self.base).netloc
        return [url for url in self.requests if urlsplit(url).scheme not in ('data', 'blob') and urlsplit(url).netloc != ours]

    def screenshot(self, name: str) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / f'{name}.png'), full_page=True)


@pytest.fixture
def visit(browser, front_door) -> Iterator[Visit]:
    opened = Visit(browser, front_door.http)
    yield opened
    opened.context.close()


def wait_until_done(page) -> None:
    """Until the job has ended well: the next job would otherwise wait behind it."""
    sync_api.expect(page.locator('#status')).to_have_text(re.compile('^Done'), timeout=JOB_WAIT_MS)


def images(page):
    return page.get_by_test_id('image')


def pixel_difference(page, first: int, second: int) -> Tuple[int, float]:
    """The largest difference between two gallery images' RGBA values, and the share of values that differ."""
    return tuple(page.evaluate('''([first, second]) => {
        const data = [first, second].map(index => {
            const img = document.querySelectorAll('[data-testid="image"]')[index];
            const canvas = document.createElement('canvas');
            canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
            const context = canvas.getContext('2d');
            context.drawImage(img, 0, 0);
            return context.getImageData(0, 0, canvas.width, canvas.height).data;
        });
        if (data[0].length !== data[1].length) return [255, 1];
        let largest = 0, differing = 0;
        data[0].forEach((value, i) => {
            const difference = Math.abs(value - data[1][i]);
            largest = Math.max(largest, difference);
            differing += difference > 0;
        });
        return [largest, differing / data[0].length];
    }''', [first, second]))


def test_a_typed_prompt_gives_the_requested_images_and_their_seed_gives_them_again(visit):
    page = visit.open(num_images='2', width='64', height='80', steps='2')
    sync_api.expect(page.locator('#scheduler option')).to_have_count(5)  # the bounds and choices are the server's
    assert page.locator('#steps').get_attribute('max') == '200'
    page.get_by_test_id('prompt').fill('a red fox in the snow')
    page.get_by_test_id('generate').click()

    sync_api.expect(images(page)).to_have_count(2, timeout=JOB_WAIT_MS)
    wait_until_done(page)
    sizes = images(page).evaluate_all('imgs => imgs.map(img => [img.naturalWidth, img.naturalHeight])')
    assert sizes == [[64, 80], [64, 80]]
    visit.screenshot('prompt-images')

    first = images(page).nth(1)  # the gallery shows the newest first
    seed = first.get_attribute('data-seed')
    first.click()
    sync_api.expect(page.get_by_test_id('parameter-seed')).to_have_text(seed)
    visit.screenshot('image-parameters')
    page.get_by_role('button', name='Again with this seed').click()

    sync_api.expect(images(page)).to_have_count(3, timeout=JOB_WAIT_MS)
    wait_until_done(page)
    assert images(page).first.get_attribute('data-seed') == seed
    # The same seed, the same pixels: but for float rounding, as the first image shared its pipeline call (batch of 2)
    largest, share = pixel_difference(page, 0, 2)
    assert largest <= 1 and share < 0.001, (largest, share)

    images(page).first.click()
    page.get_by_role('button', name='Variations').click()  # the same prompt, as many images as set, new seeds
    sync_api.expect(images(page)).to_have_count(5, timeout=JOB_WAIT_MS)
    wait_until_done(page)
    assert seed not in [images(page).nth(i).get_attribute('data-seed') for i in range(2)]
    assert visit.foreign_hosts() == []
    assert visit.console_errors == []


def test_speech_from_the_microphone_is_transcribed_then_drawn(visit):
    page = visit.open(**SMALL)
    page.get_by_test_id('record').click()
    sync_api.expect(page.get_by_test_id('record')).to_have_text('Stop and send')
    page.wait_for_timeout(4500)  # the clip is 3.5 s
    visit.screenshot('recording')
    page.get_by_test_id('record').click()

    sync_api.expect(page.get_by_test_id('transcript')).to_contain_text('fox', ignore_case=True, timeout=JOB_WAIT_MS)
    sync_api.expect(page.get_by_test_id('transcript')).to_contain_text('snow', ignore_case=True)
    sync_api.expect(images(page)).to_have_count(1, timeout=JOB_WAIT_MS)
    wait_until_done(page)
    visit.screenshot('microphone-images')
    assert visit.foreign_hosts() == []
    assert visit.console_errors == []


def test_an_uploaded_german_clip_is_shown_in_english(visit):
    page = visit.open(**SMALL)
    page.get_by_test_id('file').set_input_files(str(GERMAN_CLIP))

    sync_api.expect(page.get_by_test_id('english')).to_contain_text('snow', ignore_case=True, timeout=JOB_WAIT_MS)
    sync_api.expect(page.get_by_test_id('transcript')).to_contain_text('Schnee')
    sync_api.expect(images(page)).to_have_count(1, timeout=JOB_WAIT_MS)
    wait_until_done(page)
    visit.screenshot('upload-german')

    page.set_viewport_size({'width': 390, 'height': 844})  # a phone: one column, nothing wider than the screen
    assert page.evaluate('document.documentElement.scrollWidth') <= 390
    visit.screenshot('phone')
    assert visit.console_errors == []


def test_an_uploaded_file_that_is_not_audio_shows_the_error_beside_the_file_input_and_no_image(visit):
    page = visit.open(**SMALL)
    page.get_by_test_id('file').set_input_files(str(DATA / 'not_audio.wav'))

    error = page.locator('#drop').get_by_test_id('error')
    sync_api.expect(error).to_be_visible(timeout=JOB_WAIT_MS)
    sync_api.expect(error).to_contain_text('cannot be read as audio')
    visit.screenshot('bad-file')
    assert images(page).count() == 0
    assert visit.console_errors == []


def test_a_running_job_is_cancelled(visit):
    page = visit.open(num_images='1', width=str(HELD_SIZE[0]), height=str(HELD_SIZE[1]), steps=str(HELD_STEPS))
    page.get_by_test_id('prompt').fill('a very slow lighthouse')
    with step_hold(HELD_SIZE, HELD_AT) as hold:  # the job waits at its first step: it runs when the cancel comes
        page.get_by_test_id('generate').click()
        assert hold.wait_until_held() == HELD_AT
        sync_api.expect(page.get_by_test_id('progress').locator('progress')).to_have_count(1, timeout=JOB_WAIT_MS)
        page.get_by_test_id('cancel').click()
        sync_api.expect(page.locator('#status')).to_have_text('Cancelled.', timeout=JOB_WAIT_MS)
    sync_api.expect(page.get_by_test_id('cancel')).to_be_hidden()
    visit.screenshot('cancelled')
    assert images(page).count() == 0
    assert visit.console_errors == []


def test_a_reload_mid_job_reconnects_and_finishes_the_job(visit):
    page = visit.open(num_images='1', width=str(HELD_SIZE[0]), height=str(HELD_SIZE[1]), steps=str(HELD_STEPS))
    page.get_by_test_id('prompt').fill('a harbour at night')
    with step_hold(HELD_SIZE, HELD_AT) as hold:  # the job waits at its first step while the page reloads
        page.get_by_test_id('generate').click()
        assert hold.wait_until_held() == HELD_AT
        sync_api.expect(page.get_by_test_id('progress').locator('progress')).to_have_count(1, timeout=JOB_WAIT_MS)
        page.reload()
        sync_api.expect(page.get_by_test_id('cancel')).to_be_visible()  # following the same job again
    sync_api.expect(images(page)).to_have_count(1, timeout=JOB_WAIT_MS)
    wait_until_done(page)
    assert images(page).evaluate('img => img.naturalWidth') == HELD_SIZE[0]
    visit.screenshot('reloaded')
    assert visit.console_errors == []


def test_a_dropped_connection_reconnects_from_the_last_event_seen(visit):
    page = visit.open(num_images='1', width='64', height='64', steps='20')
    opened: List[str] = []

    def drop_the_first_after_a_progress_event(ws):
        opened.append(ws.url)
        server = ws.connect_to_server()
        if len(opened) == 1:
            def relay(message):
                ws.send(message)
                if '"progress"' in message:
                    ws.close()  # the page's side only: as a network failure would
            server.on_message(relay)

    page.route_web_socket(re.compile('/v1/jobs/'), drop_the_first_after_a_progress_event)
    page.get_by_test_id('prompt').fill('a lighthouse in the fog')
    page.get_by_test_id('generate').click()

    sync_api.expect(images(page)).to_have_count(1, timeout=JOB_WAIT_MS)
    wait_until_done(page)
    assert len(opened) == 2 and opened[0].endswith('after=0') and not opened[1].endswith('after=0'), opened
    assert page.get_by_test_id('progress').locator('progress').count() == 1
    assert visit.foreign_hosts() == [] and visit.console_errors == []


def test_a_wrong_token_shows_the_error_beside_the_token(visit):
    page = visit.open(token='not-the-token')
    page.get_by_test_id('prompt').fill('a fox')
    page.get_by_test_id('prompt').press('Control+Enter')  # the keyboard's way to generate

    error = page.locator('header').get_by_test_id('error')
    sync_api.expect(error).to_contain_text('token')
    visit.screenshot('wrong-token')
    assert images(page).count() == 0
    assert all('401' in message for message in visit.console_errors)  # the browser logs the refused requests


def test_the_page_and_its_files_are_served_with_their_types_and_nothing_else(front_door):
    import requests

    for path, kind in [('/ui', 'text/html'), ('/ui/', 'text/html'), ('/ui/app.js', 'text/javascript'),
                       ('/ui/style.css', 'text/css')]:
        answer = requests.get(front_door.http + path, timeout=10)
        assert answer.status_code == 200 and answer.headers['content-type'].startswith(kind), path
    # Sent as written (requests would resolve the dots): no file but the page's own, and no listing.
    server = http.client.HTTPConnection(urlsplit(front_door.http).netloc, timeout=10)
    for path in ['/ui/../gateway/gateway.py', '/ui/%2e%2e/__init__.py', '/ui/..%2f__init__.py', '/ui/__init__.py',
                 '/ui/static', '/ui/static/', '/ui/static/app.js', '/ui//etc/passwd']:
        server.request('GET', path)
        answer = server.getresponse()
        body = answer.read()
        assert answer.status in (307, 401, 404) and b'import' not in body, (path, answer.status)  # 307: to /ui/static, a 404
    assert requests.get(f'{front_door.http}/ui/parameters', timeout=10).status_code == 401
    answer = requests.get(f'{front_door.http}/ui/parameters', headers={'authorization': f'Bearer {TOKEN}'}, timeout=10)
    schemas = {schema['executor']: schema['json_schema'] for schema in answer.json()['data']}
    assert any('steps' in schema['properties'] for schema in schemas.values())



@pytest.fixture
def shapes_png(tmp_path) -> Path:
    """A 96x64 PNG: a red square beside a blue circle."""
    from PIL import Image, ImageDraw

    image = Image.new('RGB', (96, 64), 'white')
    drawing = ImageDraw.Draw(image)
    drawing.rectangle((8, 12, 44, 48), fill='red')
    drawing.ellipse((54, 14, 88, 48), fill='blue')
    path = tmp_path / 'shapes.png'
    image.save(path)
    return path


def test_an_uploaded_image_is_captioned_and_tagged_best_first(visit, shapes_png):
    page = visit.open()
    page.get_by_test_id('image-file').set_input_files(str(shapes_png))
    sync_api.expect(page.get_by_test_id('image-preview')).to_be_visible()
    page.get_by_test_id('caption-button').click()
    sync_api.expect(page.get_by_test_id('caption')).to_have_text(re.compile(r'\S'), timeout=JOB_WAIT_MS)  # BLIP loads first

    page.get_by_test_id('labels').fill('a red square, a blue circle')
    page.get_by_test_id('labels').press('Enter')  # the keyboard's way to ask for tags
    tags = page.get_by_test_id('tags').get_by_test_id('tag')
    sync_api.expect(tags).to_have_count(2, timeout=JOB_WAIT_MS)  # CLIP loads first
    labels = tags.locator('span:first-child').all_text_contents()
    scores = [float(score) for score in tags.locator('.score').all_text_contents()]
    assert sorted(labels) == ['a blue circle', 'a red square']
    assert scores == sorted(scores, reverse=True) and all(0 <= score <= 1 for score in scores), scores
    visit.screenshot('image-caption-tags')
    assert visit.foreign_hosts() == []
    assert visit.console_errors == []


def test_an_image_restyled_after_the_typed_prompt_joins_the_gallery_at_its_size(visit, shapes_png):
    page = visit.open(num_images='1', steps='2')
    page.get_by_test_id('image-file').set_input_files(str(shapes_png))
    page.get_by_test_id('prompt').fill('as an oil painting')
    page.get_by_test_id('strength').fill('0.5')
    held = []
    page.route('**/restyle', lambda route: held.append(route))  # the request waits until let through: the page shows it is busy
    page.get_by_test_id('restyle').click()

    sync_api.expect(page.get_by_test_id('restyle')).to_have_attribute('aria-busy', 'true')
    sync_api.expect(page.get_by_test_id('restyle')).to_be_disabled()
    sync_api.expect(page.get_by_role('progressbar', name='Waiting for the service')).to_be_visible()
    held[0].continue_()
    sync_api.expect(images(page)).to_have_count(1, timeout=JOB_WAIT_MS)
    assert images(page).first.evaluate('img => [img.naturalWidth, img.naturalHeight]') == [96, 64]
    sync_api.expect(page.get_by_test_id('restyle')).to_be_enabled()  # no longer busy
    visit.screenshot('image-restyled')
    images(page).first.click()
    sync_api.expect(page.get_by_test_id('parameter-prompt')).to_have_text('as an oil painting')
    sync_api.expect(page.get_by_test_id('parameter-strength')).to_have_text('0.5')
    assert visit.foreign_hosts() == []
    assert visit.console_errors == []


def test_a_file_that_is_not_an_image_shows_the_error_beside_the_image_input_and_no_image(visit, tmp_path):
    text = tmp_path / 'notes.txt'
    text.write_text('a fox in the snow, as words rather than pixels\n')
    svg = tmp_path / 'circle.svg'  # an image the browser shows but the service does not read
    svg.write_text('<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"><circle cx="32" cy="32" r="20"/></svg>')
    page = visit.open(**SMALL)
    page.get_by_test_id('prompt').fill('as an oil painting')
    error = page.locator('#image-drop').get_by_test_id('error')

    page.get_by_test_id('image-file').set_input_files(str(text))
    sync_api.expect(error).to_contain_text('cannot be read as an image')
    sync_api.expect(page.get_by_test_id('restyle')).to_be_disabled()
    visit.screenshot('image-bad-file')

    page.get_by_test_id('image-file').set_input_files(str(svg))
    sync_api.expect(error).to_be_hidden()
    page.get_by_test_id('restyle').click()
    sync_api.expect(error).to_contain_text('cannot be read as an image', timeout=JOB_WAIT_MS)
    sync_api.expect(error).to_contain_text('not an image this service reads')
    assert images(page).count() == 0
    assert visit.foreign_hosts() == []
    assert visit.console_errors == []


# The page alone: its own routes (gateway.ui) on a free port, and the answers of /v1 and the Flow stubbed per
# test (page.route), so that each error code can be met without making the service fail.

class ConfiguredFlow:
    """A Flow whose Stable Diffusion executor is configured with 30 steps by default: all the page asks of it."""

    async def schemas(self):
        return [SimpleNamespace(executor='stable_diffusion', json_schema={'properties': {'steps': {'type': 'integer', 'default': 30}}})]


@pytest.fixture(scope='module')
def page_alone() -> Iterator[str]:
    import uvicorn
    from fastapi import FastAPI

    from gateway.auth import ApiKeys
    from gateway.errors import add_error_handlers
    from gateway.ui import router

    app = FastAPI()
    add_error_handlers(app)
    app.include_router(router)
    app.state.keys, app.state.flow = ApiKeys(TOKEN), ConfiguredFlow()  # what create_app gives the routes
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host='127.0.0.1', port=port, log_level='warning', ws='none'))  # its WebSockets are stubbed
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), 'the page did not start'
        time.sleep(0.05)
    yield f'http://127.0.0.1:{port}'
    server.should_exit = True
    thread.join(10)


@pytest.fixture
def alone(browser, page_alone) -> Iterator[Visit]:
    opened = Visit(browser, page_alone)
    yield opened
    opened.context.close()


def refuse_jobs(page, code: ErrorCode, param: Optional[str], message: str) -> None:
    """POST /v1/jobs answers as the gateway refuses: OpenAI's error body with ``code``, at its HTTP status."""
    kind = ERRORS[code]
    body = {'error': {'message': message, 'type': kind.openai_type, 'param': param, 'code': code.value}}
    page.route('**/v1/jobs', lambda route: route.fulfill(status=kind.http_status, json=body))


def fail_jobs(page, event: Dict[str, Any]) -> None:
    """POST /v1/jobs takes the job, and its events end with ``event`` (a failed job's)."""
    page.route('**/v1/jobs', lambda route: route.fulfill(status=202, json={'id': 'job-1', 'status': 'queued'}))

    def events(ws):
        ws.send(json.dumps({'kind': 'queued', 'job': 'job-1', 'seq': 1, 'position': 0}))
        ws.send(json.dumps({'kind': 'failed', 'job': 'job-1', 'seq': 2, **event}))

    page.route_web_socket(re.compile('/v1/jobs/job-1/events'), events)


def settings_field(page, label: str):
    """The settings field (its label, input and any error) whose label reads ``label``."""
    return page.locator('#settings .field').filter(has=page.get_by_label(label, exact=True))


def test_the_settings_form_shows_every_generation_parameter_with_the_models_bounds(alone):
    page = alone.open()
    schema = GenerationParams.model_json_schema()['properties']
    for key in GenerationParams.model_fields:
        sync_api.expect(page.locator(f'#settings-fields #{key}')).to_be_attached()
    for key in ('num_images', 'steps', 'guidance_scale', 'width', 'height'):
        field = page.locator(f'#{key}')
        assert field.get_attribute('type') == 'number', key
        assert field.get_attribute('min') == f'{schema[key]["minimum"]:g}', key
        if 'maximum' in schema[key]:
            assert field.get_attribute('max') == f'{schema[key]["maximum"]:g}', key
    assert page.get_by_label('Width', exact=True).get_attribute('step') == '8'
    assert page.get_by_label('Seed', exact=True).get_attribute('max') == str(MAX_SEED)  # Optional[int]'s bounds too
    choices = page.get_by_label('Scheduler', exact=True).locator('option').all_text_contents()
    assert choices == list(get_args(Scheduler))
    sync_api.expect(page.get_by_label('Scheduler', exact=True)).to_have_value('dpm++')
    sync_api.expect(page.get_by_label('Steps', exact=True)).to_have_value('30')  # the executor's configured default, once the token is in
    assert alone.console_errors == []


def test_a_parameter_added_to_the_model_shows_up_as_a_field_and_is_sent_with_the_job(alone):
    def with_clip_skip(route):
        schema = route.fetch().json()
        schema['settings']['properties']['clip_skip'] = {
            'type': 'integer', 'minimum': 1, 'maximum': 12, 'default': 2, 'title': 'Clip Skip', 'description': 'text encoder layers skipped'}
        route.fulfill(json=schema)

    sent = []
    alone.page.route('**/ui/schema.json', with_clip_skip)
    alone.page.route('**/v1/jobs', lambda route: (sent.append(route.request.post_data), route.abort()))
    page = alone.open(num_images='2', width='64', height='80')
    field = page.get_by_label('Clip skip', exact=True)
    assert (field.get_attribute('min'), field.get_attribute('max'), field.input_value()) == ('1', '12', '2')
    assert field.get_attribute('title') == 'text encoder layers skipped'
    field.fill('3')
    page.get_by_test_id('prompt').fill('a fox')
    page.get_by_test_id('generate').click()

    sync_api.expect(page.locator('#status')).to_have_text('Not started.')
    form = dict(re.findall(r'name="([^"]+)"\r\n\r\n([^\r]*)', sent[0]))
    assert form['clip_skip'] == '3'
    assert (form['n'], form['size'], form['prompt']) == ('2', '64x80', 'a fox')


# Each place of the code table, with a message that names another place's things: the code decides, not the words.
MISLEADING = 'no speech: steps must be at most 200, the token is wrong'


@pytest.mark.parametrize('code, param, place', [
    (ErrorCode.INVALID_API_KEY, None, 'header'),
    (ErrorCode.PROMPT_TOO_LONG, None, '#typed'),
    (ErrorCode.INVALID_PARAMETER, 'guidance_scale', 'Guidance'),
    (ErrorCode.INVALID_PARAMETER, 'size', 'Width'),  # the job field stands for the parameters width and height
    (ErrorCode.UNKNOWN_PARAMETER, 'clip_skip', '#settings'),  # no field sets it: the settings as a whole
    (ErrorCode.OUT_OF_MEMORY, None, '#banner'),
])
def test_a_refused_job_shows_its_error_where_its_code_places_it(alone, code, param, place):
    page = alone.open()
    refuse_jobs(alone.page, code, param, MISLEADING)
    page.get_by_test_id('prompt').fill('a fox')
    page.get_by_test_id('generate').click()

    where = settings_field(page, place) if place[0].isupper() else page.locator(place)
    error = where.get_by_test_id('error')
    sync_api.expect(error).to_be_visible()
    sync_api.expect(error).to_contain_text(MISLEADING, ignore_case=True)
    assert page.get_by_test_id('error').count() == 1
    if place[0].isupper():
        sync_api.expect(page.get_by_label(place, exact=True)).to_have_attribute('aria-invalid', 'true')


@pytest.mark.parametrize('code, param, place', [
    (ErrorCode.AUDIO_UNREADABLE, None, '#drop'),
    (ErrorCode.INVALID_PARAMETER, 'width', 'Width'),
    (ErrorCode.STORE_FAILED, None, '#banner'),
])
def test_a_failed_job_shows_its_error_where_its_code_places_it(alone, code, param, place):
    page = alone.open()
    fail_jobs(alone.page, {'error': MISLEADING, 'error_code': code.value, 'error_param': param})
    page.get_by_test_id('file').set_input_files(str(DATA / 'not_audio.wav'))

    sync_api.expect(page.locator('#status')).to_have_text('Failed.')
    where = settings_field(page, place) if place[0].isupper() else page.locator(place)
    sync_api.expect(where.get_by_test_id('error')).to_contain_text(MISLEADING, ignore_case=True)
    if code is ErrorCode.AUDIO_UNREADABLE:
        sync_api.expect(where.get_by_test_id('error')).to_contain_text('cannot be read as audio')  # the advice for its code


def test_an_image_request_failed_for_a_label_shows_beside_the_labels(alone, shapes_png):
    page = alone.open()
    answered = {'data': [{'error': MISLEADING, 'error_code': 'invalid_parameter', 'error_param': 'labels'}]}
    page.route('**/tag', lambda route: route.fulfill(json=answered))
    page.get_by_test_id('image-file').set_input_files(str(shapes_png))
    page.get_by_test_id('labels').fill('a dog, a dog')
    page.get_by_test_id('tags-button').click()

    sync_api.expect(page.locator('#tagging').get_by_test_id('error')).to_contain_text(MISLEADING, ignore_case=True)
    sync_api.expect(page.get_by_test_id('labels')).to_have_attribute('aria-invalid', 'true')


def test_the_page_schema_is_open_and_places_every_error_code(page_alone):
    import requests

    answer = requests.get(f'{page_alone}/ui/schema.json', timeout=10)
    assert answer.status_code == 200 and 'default-src' in answer.headers['content-security-policy']
    schema = answer.json()
    assert schema['settings']['properties'].keys() == GenerationParams.model_fields.keys()
    assert schema['errors'] == {code.value: {'page': kind.page} for code, kind in ERRORS.items()}
    assert set(schema['places']) == {kind.page for kind in ERRORS.values()}
    assert requests.get(f'{page_alone}/ui/parameters', timeout=10).status_code == 401  # the configured ones need the token
    configured = requests.get(f'{page_alone}/ui/parameters', headers={'authorization': f'Bearer {TOKEN}'}, timeout=10)
    assert configured.json()['data'][0]['json_schema']['properties']['steps']['default'] == 30


def test_a_restyle_sends_the_settings_it_takes_as_numbers_and_the_size_of_the_image(alone, shapes_png):
    asked = []
    alone.page.route('**/restyle', lambda route: (asked.append(route.request.post_data_json), route.fulfill(json={'data': [{'matches': []}]})))
    page = alone.open(num_images='2', steps='3', seed='42', width='128')
    page.get_by_test_id('image-file').set_input_files(str(shapes_png))
    page.get_by_test_id('prompt').fill('as an oil painting')
    page.get_by_test_id('strength').fill('0.5')
    page.get_by_test_id('restyle').click()

    sync_api.expect(page.locator('#image-status')).to_have_text('Done: 0 images added below.')
    assert asked[0]['data'][0]['text'] == 'as an oil painting'
    assert asked[0]['parameters'] == {'num_images': 2, 'steps': 3, 'seed': 42, 'guidance_scale': 7.5, 'scheduler': 'dpm++', 'strength': 0.5}
