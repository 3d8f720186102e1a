// Starting from an image: one image chosen or dropped, then its caption, its tags, or restyled after the prompt.
// The Flow's /caption, /tag and /restyle over Jina's HTTP routes: one request each, answered when done.

import { imageRequest } from './api.js';
import { $, dropZone } from './dom.js';
import { NOT_AN_IMAGE, clearError, showError } from './errors.js';
import { described, settingValues, typed } from './settings.js';

const ACTIONS = ['caption-button', 'tags-button', 'restyle'];
// Restyled images take their size from the image: the settings' width and height are left out.
const SIZE_KEYS = ['width', 'height'];

/** The strength slider's upper bound and default from /restyle's schema (its lower end stays above 0). */
export function boundStrength(property) {
  const strength = described(property);
  if (strength.maximum !== undefined) $('strength').max = strength.maximum;
  if (strength.default != null) $('strength').value = strength.default;
  $('strength-value').textContent = Number($('strength').value).toFixed(2);
}

let page = null;    // app.js's: fail(error, inputId), addImage(image), restyleKeys (a promise of /restyle's parameters)
let chosen = null;  // the image as a data: URI, once the browser could show it
let busy = false;

async function choose(file) {
  if (!file || busy) return;
  clearError();
  chosen = null;
  $('caption').textContent = '';
  $('tags').replaceChildren();
  const preview = $('image-preview');
  preview.src = await new Promise((resolve) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => resolve('');
    reader.readAsDataURL(file);
  });
  try {
    await preview.decode();
    chosen = preview.src;
    preview.alt = `The chosen image: ${file.name}`;
    preview.hidden = false;
  } catch {
    preview.hidden = true;
    preview.removeAttribute('src');
    showError(NOT_AN_IMAGE, 'image-file');
  }
  for (const id of ACTIONS) $(id).disabled = !chosen;
}

/** One request for ``action`` (the button's id): busy meanwhile, the error beside its cause if it fails. */
async function send(action, endpoint, document, parameters, waiting) {
  if (!chosen || busy) return null;
  clearError();
  busy = true;
  for (const id of [...ACTIONS, 'image-file']) $(id).disabled = true;
  $(action).setAttribute('aria-busy', 'true');
  $('image-status').textContent = waiting;
  $('image-busy').hidden = false;
  try {
    const answered = await imageRequest(endpoint, { image_uri: chosen, ...document }, parameters);
    $('image-status').textContent = '';
    return answered;
  } catch (e) {
    $('image-status').textContent = 'Failed.';
    page.fail(e, 'image-file');
    return null;
  } finally {
    busy = false;
    for (const id of [...ACTIONS, 'image-file']) $(id).disabled = false;
    $(action).removeAttribute('aria-busy');
    $('image-busy').hidden = true;
  }
}

async function caption() {
  const answered = await send('caption-button', '/caption', {}, {}, 'Captioning…');
  if (answered) $('caption').textContent = answered.caption;
}

async function tag() {
  const labels = $('labels').value.split(',').map((label) => label.trim()).filter(Boolean);
  const answered = await send('tags-button', '/tag', {}, labels.length ? { labels } : {}, 'Tagging…');
  if (answered) showTags(answered.tags);
}

function showTags(tags) {
  $('tags').replaceChildren(...[...tags].sort((a, b) => b.score - a.score).map(({ label, score }) => {
    const item = document.createElement('li');
    item.dataset.testid = 'tag';
    item.dataset.score = score;
    const name = document.createElement('span');
    name.textContent = label;
    const bar = document.createElement('meter');
    bar.min = 0;
    bar.max = 1;
    bar.value = score;
    bar.setAttribute('aria-label', `${label}: score`);
    const value = document.createElement('span');
    value.className = 'score';
    value.textContent = score.toFixed(3);
    item.append(name, bar, value);
    return item;
  }));
}

async function restyle() {
  const style = $('prompt').value.trim();
  if (!style) return showError('Type the style in the prompt first, e.g. "as an oil painting".', 'prompt');
  const keys = new Set(await page.restyleKeys);
  const settings = Object.entries(settingValues()).filter(([key]) => keys.has(key) && !SIZE_KEYS.includes(key));
  const parameters = { ...typed(Object.fromEntries(settings)), strength: Number($('strength').value) };
  const answered = await send('restyle', '/restyle', { text: style }, parameters, 'Restyling… (the answer comes when all images are drawn)');
  if (!answered) return;
  const request = `restyle-${Date.now()}`;
  answered.matches.forEach((image, index) => page.addImage({ job: request, index, seed: image.seed, width: image.width,
    height: image.height, parameters: image.parameters, src: image.data_uri }));
  $('image-status').textContent = `Done: ${answered.matches.length} image${answered.matches.length === 1 ? '' : 's'} added below.`;
}

/** Wires the image section; ``pageApi`` is app.js's (see ``page``). */
export function wireImages(pageApi) {
  page = pageApi;
  $('image-file').addEventListener('change', () => choose($('image-file').files[0]));
  dropZone($('image-drop'), choose);
  $('caption-button').addEventListener('click', caption);
  $('tagging').addEventListener('submit', (event) => { event.preventDefault(); tag(); });
  $('restyle').addEventListener('click', restyle);
  $('strength').addEventListener('input', () => { $('strength-value').textContent = Number($('strength').value).toFixed(2); });
}
