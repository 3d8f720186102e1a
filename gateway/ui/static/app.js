// The page: three ways in (record, upload, type), one job followed at a time, and the session's gallery;
// and an image to caption, tag or restyle (images.js).

import { TERMINAL, cancelJob, followJob, parameterSchemas, setToken, submitJob, token } from './api.js';
import { $, dropZone } from './dom.js';
import { NOT_AN_IMAGE, wireImages } from './images.js';
import { Recorder } from './recorder.js';

const JOB_KEY = 's2i.job';          // the job being followed: a reload resumes it
const GALLERY_KEY = 's2i.gallery';  // this session's images
const MAX_SEED = 2 ** 31 - 1;
const LANGUAGES = { en: 'English', de: 'German', fr: 'French', es: 'Spanish', it: 'Italian', pt: 'Portuguese',
  nl: 'Dutch', pl: 'Polish', sv: 'Swedish', da: 'Danish', no: 'Norwegian', fi: 'Finnish', cs: 'Czech',
  ru: 'Russian', uk: 'Ukrainian', tr: 'Turkish', el: 'Greek', ar: 'Arabic', he: 'Hebrew', hi: 'Hindi',
  zh: 'Chinese', ja: 'Japanese', ko: 'Korean', vi: 'Vietnamese', id: 'Indonesian' };
// The settings' inputs by the parameter they set (the executors' names, as in their schemas and errors).
const SETTINGS = { num_images: 'n', width: 'width', height: 'height', steps: 'steps', guidance_scale: 'guidance_scale',
  seed: 'seed', negative_prompt: 'negative_prompt', scheduler: 'scheduler', language: 'language' };
// What to do about the audio errors a person meets most; the service's own words follow in brackets.
const ADVICE = [
  [/^(no speech|no usable speech)/i, 'No speech was heard. Speak closer to the microphone, or type a prompt.'],
  [/^could not decode/i, 'This file cannot be read as audio. Try a WAV, MP3, OGG, FLAC or WebM recording.'],
  [/^empty audio/i, 'The recording is empty. Check the microphone, or choose another file.'],
  [/^audio too (long|large)/i, 'The recording is too long or too large for this service.'],
  [/^not an image this service reads/i, NOT_AN_IMAGE],
];
const AUDIO_ERRORS = /^(no speech|no usable speech|empty audio|could not decode|audio too|bad audio|malformed audio)/i;

let job = null;       // {id, source, follower, images}
let recorder = null;

// Errors, next to the input that caused them

function showError(message, anchorId) {
  clearError();
  const error = $('error');
  const anchor = $(anchorId);
  error.textContent = message;
  error.hidden = false;
  (anchor.closest('.field, .way') || anchor.parentElement).append(error);
  anchor.setAttribute('aria-invalid', 'true');
  anchor.setAttribute('aria-describedby', 'error');
  if (anchor.closest('details')) anchor.closest('details').open = true;
}

function clearError() {
  $('error').hidden = true;
  $('error').textContent = '';
  document.querySelectorAll('[aria-invalid]').forEach((el) => {
    el.removeAttribute('aria-invalid');
    el.removeAttribute('aria-describedby');
  });
}

/** The input a refused request or a failed job is about: by the error's param, status or wording. */
function culprit(error, source) {
  if (error.status === 401) return 'token';
  if (error.param === 'n') return 'n';
  if (error.param === 'size') return 'width';
  if (error.param === 'file') return source === 'prompt' ? 'prompt' : source;
  if (SETTINGS[error.param]) return SETTINGS[error.param];
  const message = error.message || '';
  if (AUDIO_ERRORS.test(message) && source !== 'prompt') return source;
  const named = /^(?:invalid parameters: )?([a-z_]+)/.exec(message);
  if (named && SETTINGS[named[1]]) return SETTINGS[named[1]];
  if (/^prompt /.test(message)) return 'prompt';
  return source === 'again' ? 'generate' : source;
}

function plainly(error) {
  if (error.status === 401) return 'The access token is wrong or missing. Enter the token of this service.';
  if (error.status === 429) return `The service is busy: ${error.message}.`;
  if (error.status === 413) return `Too large: ${error.message}.`;
  const message = error.message || 'something went wrong';
  for (const [pattern, advice] of ADVICE) {
    if (pattern.test(message)) return `${advice} (${message})`;
  }
  return message.charAt(0).toUpperCase() + message.slice(1) + (/[.!?]$/.test(message) ? '' : '.');
}

// Settings, with the server's bounds

let boundsLoaded = false;

/** The inputs' bounds from the server; without a token only once a job went through (a service without one). */
async function loadBounds(force = false) {
  if (!token() && !force) return;
  let answer;
  try {
    answer = await parameterSchemas();
  } catch (e) {
    if (e.status === 401) showError(plainly(e), 'token');
    return;
  }
  boundsLoaded = true;
  if ($('error').parentElement.querySelector('#token')) clearError();
  for (const { json_schema: schema } of answer.data) {
    for (const [key, property] of Object.entries(schema.properties || {})) {
      if (SETTINGS[key]) applyBounds($(SETTINGS[key]), key, property);
    }
  }
}

function applyBounds(input, key, property) {
  const merged = Object.assign({}, ...(property.anyOf || []), property);
  if (input.tagName === 'SELECT') {
    if (merged.enum) fillSelect(input, merged.enum.map((value) => [value, value]), merged.default);
    return;
  }
  if (merged.minimum !== undefined) input.min = merged.minimum;
  if (merged.maximum !== undefined) input.max = merged.maximum;
  if (merged.multipleOf !== undefined) input.step = merged.multipleOf;
  if (merged.maxLength !== undefined) input.maxLength = merged.maxLength;
  if (merged.default !== undefined && merged.default !== null && key !== 'seed' && !input.dataset.touched) {
    input.value = merged.default;
  }
}

function fillSelect(select, options, chosen) {
  const current = select.value;
  select.replaceChildren(...options.map(([value, label]) => new Option(label, value)));
  select.value = options.some(([value]) => value === current) ? current : (chosen ?? options[0][0]);
}

/** The job's fields from the settings (and ``overrides``): those of POST /v1/jobs. */
function settings(overrides = {}) {
  const fields = {
    n: $('n').value, size: `${$('width').value}x${$('height').value}`, steps: $('steps').value,
    guidance_scale: $('guidance_scale').value, seed: $('seed').value, negative_prompt: $('negative_prompt').value,
    scheduler: $('scheduler').value, language: $('language').value, ...overrides,
  };
  return Object.fromEntries(Object.entries(fields).filter(([, value]) => value !== '' && value !== null && value !== undefined));
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
    showError(plainly(e), culprit(e, source));
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
      showError(plainly({ message: event.error, status: event.status }), culprit({ message: event.error, status: event.status }, job.source));
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

function again(seeded) {
  const p = shown.parameters || {};
  $('details').close();
  const same = { prompt: p.prompt, size: `${shown.width}x${shown.height}`, steps: p.steps, guidance_scale: p.guidance_scale,
    negative_prompt: p.negative_prompt, scheduler: p.scheduler };
  start('again', settings(seeded ? { ...same, n: 1, seed: shown.seed } : { ...same, seed: '' }));
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

function wire() {
  $('token').value = token();
  $('token').addEventListener('change', () => {
    setToken($('token').value);
    clearError();
    // The WebSocket carries it as a subprotocol, an HTTP token: letters, digits and !#$%&'*+-.^_`|~ only.
    if (!/^[A-Za-z0-9!#$%&'*+.^_`|~-]*$/.test(token())) return showError('This token has characters a browser cannot send (spaces, commas, quotes…).', 'token');
    loadBounds();
  });
  fillSelect($('language'), [['', 'Detect it'], ...Object.entries(LANGUAGES)], '');
  fillSelect($('scheduler'), [['dpm++', 'dpm++']], 'dpm++');
  for (const id of Object.values(SETTINGS)) $(id).addEventListener('input', () => { $(id).dataset.touched = '1'; });

  $('typed').addEventListener('submit', (event) => {
    event.preventDefault();
    const prompt = $('prompt').value.trim();
    if (!prompt) return showError('Type what to draw, or record or upload speech.', 'prompt');
    start('prompt', settings({ prompt }));
  });
  $('prompt').addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && (event.ctrlKey || event.metaKey)) $('typed').requestSubmit();
  });
  $('record').addEventListener('click', toggleRecording);
  $('file').addEventListener('change', () => sendFile($('file').files[0]));
  dropZone($('drop'), (file) => { if (!job) sendFile(file); });
  $('dice').addEventListener('click', () => { $('seed').value = Math.floor(Math.random() * MAX_SEED); });
  $('cancel').addEventListener('click', async () => {
    if (!job) return;
    const cancelled = job.id;
    $('cancel').disabled = true;
    try {
      await cancelJob(cancelled);
      if (job && job.id === cancelled) $('status').textContent = 'Cancelling…';  // unless its end came first
    } catch (e) {
      if (e.status !== 409) showError(plainly(e), 'cancel');  // 409: it has just ended anyway
    } finally {
      $('cancel').disabled = false;
    }
  });
  $('again').addEventListener('click', () => again(true));
  $('variations').addEventListener('click', () => again(false));

  wireImages({ showError, clearError, plainly, settings, addImage, inputFor: (parameter) => SETTINGS[parameter] });

  savedImages().forEach(showImage);
  const resumed = JSON.parse(sessionStorage.getItem(JOB_KEY) || 'null');
  if (resumed) {
    $('status').textContent = 'Reconnecting to the running job…';
    follow(resumed.id, resumed.source);
  }
  loadBounds();
}

wire();
