// The page: three ways in (record, upload, type), one job followed at a time, and the session's gallery;
// and an image to caption, tag or restyle (images.js). The settings form is built from the parameter
// models' schemas (settings.js), and errors show where their code says (errors.js).

import { TERMINAL, cancelJob, followJob, pageSchema, parameterSchemas, setToken, submitJob, token } from './api.js';
import { $, dropZone } from './dom.js';
import { clearError, knowPlaces, placeOf, showError, showFailure, tokenErrorShown } from './errors.js';
import { boundStrength, wireImages } from './images.js';
import { Recorder } from './recorder.js';
import { applyBounds, buildSettings, settingInput, settingKeys, settingValues } from './settings.js';

const JOB_KEY = 's2i.job';          // the job being followed: a reload resumes it
const GALLERY_KEY = 's2i.gallery';  // this session's images
// POST /v1/jobs takes three parameters under OpenAI's names: n (num_images) and size (width x height).
const JOB_FIELD_INPUTS = { n: 'num_images', size: 'width' };
// The page's inputs, beside the settings, that a parameter or field of an error can name.
const PAGE_INPUTS = { prompt: 'prompt', text: 'prompt', labels: 'labels', strength: 'strength', image: 'image-file', image_uri: 'image-file' };
// The input each way in sends from: where an error about the input itself shows.
const SOURCE_INPUTS = { record: 'record', file: 'file', prompt: 'prompt', again: 'generate' };

let job = null;       // {id, source, follower, images}
let recorder = null;
let formBuilt = null; // resolves once the settings form is built from the schemas

/** The id of the input that sets ``param`` (a parameter, or a job field), if the page has one. */
function inputFor(param) {
  return settingInput(param) || settingInput(JOB_FIELD_INPUTS[param]) || PAGE_INPUTS[param];
}

/** Shows a refused request's or a failed job's ``error`` at its code's place; ``source``: the way in it came from. */
function fail(error, source) {
  showFailure(error, SOURCE_INPUTS[source] || source, inputFor);
}

// The settings, from the schemas, with the executors' configured defaults once the token is known

async function buildForm() {
  try {
    const schema = await pageSchema();
    knowPlaces(schema.errors);
    const fields = [...Object.entries(schema.settings.properties), ['language', schema.transcription.properties.language]];
    buildSettings($('settings-fields'), fields);
    boundStrength(schema.restyle.properties.strength);
    return Object.keys(schema.restyle.properties);
  } catch (e) {
    fail(e, 'generate');
    return [];
  }
}

let boundsLoaded = false;

/** The executors' configured defaults; without a token only once a job went through (a service without one). */
async function loadBounds(force = false) {
  if (!token() && !force) return;
  let answer;
  try {
    answer = await parameterSchemas();
  } catch (e) {
    if (placeOf(e) === 'token') fail(e, 'token');
    return;
  }
  boundsLoaded = true;
  if (tokenErrorShown()) clearError();
  await formBuilt;
  for (const { json_schema: schema } of answer.data) {
    for (const [key, property] of Object.entries(schema.properties || {})) applyBounds(key, property);
  }
}

/** The settings (with ``overrides``, by parameter) as the fields of POST /v1/jobs. */
function settings(overrides = {}) {
  const { num_images: n, width, height, ...rest } = { ...settingValues(), ...overrides };
  const size = width || height ? `${width ?? ''}x${height ?? ''}` : undefined;
  return Object.fromEntries(Object.entries({ ...rest, n, size }).filter(([, value]) => value !== '' && value !== null && value !== undefined));
}

// Submitting and following a job

async function start(source, body) {
  if (job) return;
  clearError();
  const form = new FormData();
  for (const [key, value] of Object.entries(body)) form.append(key, value);
  setBusy(true);
  resetJobView();
  $('status').textContent = source === 'record' || source === 'file' ? 'Sending the audio…' : 'Sending…';
  try {
    const answer = await submitJob(form);
    sessionStorage.setItem(JOB_KEY, JSON.stringify({ id: answer.id, source }));
    follow(answer.id, source);
    if (!boundsLoaded) loadBounds(true);
  } catch (e) {
    setBusy(false);
    $('status').textContent = 'Not started.';
    fail(e, source);
  }
}

function follow(id, source) {
  job = { id, source, images: 0 };
  setBusy(true);
  $('cancel').hidden = false;
  job.follower = followJob(id, 0, (event) => onEvent(event));
}

function onEvent(event) {
  const status = $('status');
  switch (event.kind) {
    case 'queued':
      status.textContent = event.position ? `Queued: ${event.position} job(s) ahead.` : 'Queued.';
      break;
    case 'started':
      status.textContent = job.source === 'record' || job.source === 'file' ? 'Listening to the audio…' : 'Drawing…';
      break;
    case 'transcribed':
      $('transcript').textContent = event.transcript;
      $('transcript').lang = event.language || '';
      $('english').textContent = event.text;
      status.textContent = 'Drawing…';
      break;
    case 'progress':
      showProgress(event);
      break;
    case 'image':
      addImage({ job: job.id, ...event });
      job.images += 1;
      break;
    case 'reconnecting':
      status.textContent = 'Connection lost; reconnecting…';
      break;
    case 'succeeded':
      status.textContent = `Done: ${job.images} image${job.images === 1 ? '' : 's'}.`;
      break;
    case 'cancelled':
      status.textContent = 'Cancelled.';
      break;
    case 'failed':
    case 'lost':
      status.textContent = 'Failed.';
      fail({ message: event.error, code: event.error_code, param: event.error_param, status: event.status }, job.source);
      break;
  }
  if (TERMINAL.has(event.kind) || event.kind === 'lost') finish();
}

function finish() {
  sessionStorage.removeItem(JOB_KEY);
  job = null;
  setBusy(false);
  $('cancel').hidden = true;
}

function resetJobView() {
  $('transcript').textContent = '';
  $('english').textContent = '';
  $('progress').replaceChildren();
}

function showProgress(event) {
  const key = `call-${event.image}`;
  let row = document.getElementById(key);
  if (!row) {
    row = document.createElement('div');
    row.id = key;
    row.className = 'call';
    const label = document.createElement('span');
    label.textContent = event.images > 1 ? `Images ${event.image + 1}–${event.image + event.images}` : `Image ${event.image + 1}`;
    const bar = document.createElement('progress');
    bar.setAttribute('aria-label', `${label.textContent}: steps done`);
    row.append(label, bar, document.createElement('span'));
    $('progress').append(row);
  }
  const [, bar, count] = row.children;
  bar.max = event.steps;
  bar.value = event.step;
  count.textContent = `${event.step}/${event.steps}`;
}

function setBusy(busy) {
  for (const id of ['generate', 'record', 'file', 'again', 'variations']) $(id).disabled = busy;
  if (busy && recorder) $('record').disabled = false;  // a recording can always be stopped
}

// The gallery

function savedImages() {
  try {
    return JSON.parse(sessionStorage.getItem(GALLERY_KEY) || '[]');
  } catch {
    return [];
  }
}

function addImage(image) {
  const saved = savedImages();
  if (saved.some((old) => old.job === image.job && old.index === image.index)) return;  // replayed after a reload
  const kept = { job: image.job, index: image.index, seed: image.seed, width: image.width, height: image.height,
    parameters: image.parameters, src: image.src || (image.b64_json ? `data:image/png;base64,${image.b64_json}` : image.url) };
  saved.push(kept);
  while (saved.length) {  // the oldest images go when the session's storage is full
    try {
      sessionStorage.setItem(GALLERY_KEY, JSON.stringify(saved));
      break;
    } catch {
      saved.shift();
    }
  }
  showImage(kept);
}

function showImage(image) {
  const item = document.createElement('li');
  const button = document.createElement('button');
  button.type = 'button';
  button.setAttribute('aria-label', `Image, seed ${image.seed}: show its parameters`);
  const img = document.createElement('img');
  img.src = image.src;
  img.alt = image.parameters?.prompt || 'generated image';
  img.width = image.width;
  img.height = image.height;
  img.dataset.testid = 'image';
  img.dataset.seed = image.seed;
  button.append(img);
  button.addEventListener('click', () => showDetails(image));
  item.append(button);
  $('gallery').prepend(item);
}

let shown = null;  // the image whose details are open

function showDetails(image) {
  shown = image;
  $('details-image').src = image.src;
  $('details-image').alt = image.parameters?.prompt || '';
  const rows = { seed: image.seed, size: `${image.width}×${image.height}`, ...image.parameters };
  delete rows.width;
  delete rows.height;
  $('details-parameters').replaceChildren(...Object.entries(rows).flatMap(([key, value]) => {
    const term = document.createElement('dt');
    const description = document.createElement('dd');
    term.textContent = key.replace(/_/g, ' ');
    description.textContent = value;
    description.dataset.testid = `parameter-${key}`;
    return [term, description];
  }));
  $('download').href = image.src;
  $('download').download = `s2i-${image.seed}.png`;
  const restyled = image.parameters?.mode === 'restyle';  // its input image is not kept: nothing to draw again from
  $('again').hidden = restyled;
  $('variations').hidden = restyled;
  $('details').showModal();
}

/** The shown image's prompt and settings again: with its seed (that image), or new seeds (variations). */
function again(seeded) {
  const recorded = shown.parameters || {};
  $('details').close();
  const kept = settingKeys().filter((key) => !['num_images', 'seed', 'best_of'].includes(key) && recorded[key] != null);
  const same = { ...Object.fromEntries(kept.map((key) => [key, recorded[key]])), prompt: recorded.prompt,
    width: shown.width, height: shown.height };
  // One image from its seed; best_of would draw candidates from it and could keep another one.
  start('again', settings(seeded ? { ...same, num_images: 1, seed: shown.seed, best_of: '' } : { ...same, seed: '' }));
}

// The three ways in

async function toggleRecording() {
  const button = $('record');
  if (!recorder) {
    clearError();
    recorder = new Recorder((level, seconds) => {
      $('level').value = level;
      $('timer').textContent = `${Math.floor(seconds / 60)}:${String(Math.floor(seconds % 60)).padStart(2, '0')}`;
    });
    try {
      await recorder.start();
    } catch (e) {
      recorder = null;
      return showError(`The microphone cannot be used: ${e.message || e.name}.`, 'record');
    }
    button.textContent = 'Stop and send';
    button.setAttribute('aria-pressed', 'true');
    setBusy(true);
    return;
  }
  const file = await recorder.stop();
  recorder = null;
  button.textContent = 'Record';
  button.setAttribute('aria-pressed', 'false');
  $('level').value = 0;
  setBusy(false);
  if (!file.size) return showError('Nothing was recorded; check the microphone.', 'record');
  start('record', settings({ file }));
}

function sendFile(file) {
  if (!file) return;
  start('file', settings({ file }));
  $('file').value = '';
}

/** Keeps the token typed in; the WebSocket carries it as a subprotocol, an HTTP token: letters, digits and
 * !#$%&'*+-.^_`|~ only. */
function keepToken() {
  setToken($('token').value);
  clearError();
  if (!/^[A-Za-z0-9!#$%&'*+.^_`|~-]*$/.test(token())) return showError('This token has characters a browser cannot send (spaces, commas, quotes…).', 'token');
  loadBounds();
}

async function cancel() {
  if (!job) return;
  const cancelled = job.id;
  $('cancel').disabled = true;
  try {
    await cancelJob(cancelled);
    if (job && job.id === cancelled) $('status').textContent = 'Cancelling…';  // unless its end came first
  } catch (e) {
    if (e.code !== 'job_ended') fail(e, 'cancel');  // it has just ended anyway
  } finally {
    $('cancel').disabled = false;
  }
}

function typed(event) {
  event.preventDefault();
  const prompt = $('prompt').value.trim();
  if (!prompt) return showError('Type what to draw, or record or upload speech.', 'prompt');
  start('prompt', settings({ prompt }));
}

function wire() {
  formBuilt = buildForm();
  $('token').value = token();
  $('token').addEventListener('change', keepToken);
  $('typed').addEventListener('submit', typed);
  $('prompt').addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && (event.ctrlKey || event.metaKey)) $('typed').requestSubmit();
  });
  $('record').addEventListener('click', toggleRecording);
  $('file').addEventListener('change', () => sendFile($('file').files[0]));
  dropZone($('drop'), (file) => { if (!job) sendFile(file); });
  $('cancel').addEventListener('click', cancel);
  $('again').addEventListener('click', () => again(true));
  $('variations').addEventListener('click', () => again(false));
  wireImages({ fail, addImage, restyleKeys: formBuilt });

  savedImages().forEach(showImage);
  const resumed = JSON.parse(sessionStorage.getItem(JOB_KEY) || 'null');
  if (resumed) {
    $('status').textContent = 'Reconnecting to the running job…';
    follow(resumed.id, resumed.source);
  }
  loadBounds();
}

wire();
