// Starting from an image: one image chosen or dropped, then its caption, its tags, or restyled after the prompt.
// The Flow's /caption, /tag and /restyle over Jina's HTTP routes: one request each, answered when done.

import { imageRequest } from './api.js';
import { $, dropZone } from './dom.js';

// What the service says about the image itself (s2i/images.py and the executors): shown beside the image input.
const IMAGE_ERRORS = /^(not an image|empty image|image too large|bad image|truncated or damaged|could not read the image|reading the image failed|no image|nothing to restyle:)/i;
export const NOT_AN_IMAGE = 'This file cannot be read as an image. Choose a PNG, JPEG or WebP file.';
const ACTIONS = ['caption-button', 'tags-button', 'restyle'];


/**
 * Wires the image section. ``page`` is app.js's: showError(message, inputId), clearError(), plainly(error),
 * settings() (the job fields of the settings), addImage(image) (to the gallery), inputFor(parameter).
 */
export function wireImages(page) {
  let chosen = null;  // the image as a data: URI, once the browser could show it
  let busy = false;

  function culprit(error, action) {
    if (error.status === 401) return 'token';
    if (error.status === 413 || IMAGE_ERRORS.test(error.message || '')) return 'image-file';
    const message = (error.message || '').replace(/^invalid parameters: /, '');
    if (/^labels?\b/.test(message)) return 'labels';
    if (/^(strength|steps x strength)\b/.test(message)) return 'strength';
    if (/^(nothing to restyle with|prompt )/.test(message)) return 'prompt';
    const named = /^([a-z_]+)/.exec(message);
    return (named && page.inputFor(named[1])) || action;
  }

  async function choose(file) {
    if (!file || busy) return;
    page.clearError();
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
      page.showError(NOT_AN_IMAGE, 'image-file');
    }
    for (const id of ACTIONS) $(id).disabled = !chosen;
  }

  /** One request for ``action`` (the button's id): busy meanwhile, the error beside its cause if it fails. */
  async function send(action, endpoint, document, parameters, waiting) {
    if (!chosen || busy) return null;
    page.clearError();
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
      page.showError(page.plainly(e), culprit(e, action));
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
    if (!style) return page.showError('Type the style in the prompt first, e.g. "as an oil painting".', 'prompt');
    const fields = page.settings();
    const number = (key) => (fields[key] === undefined ? undefined : Number(fields[key]));
    const parameters = Object.fromEntries(Object.entries({
      strength: Number($('strength').value), num_images: number('n'), steps: number('steps'),
      guidance_scale: number('guidance_scale'), seed: number('seed'), negative_prompt: fields.negative_prompt,
      scheduler: fields.scheduler,
    }).filter(([, value]) => value !== undefined));
    const answered = await send('restyle', '/restyle', { text: style }, parameters, 'Restyling… (the answer comes when all images are drawn)');
    if (!answered) return;
    const request = `restyle-${Date.now()}`;
    answered.matches.forEach((image, index) => page.addImage({ job: request, index, seed: image.seed, width: image.width,
      height: image.height, parameters: image.parameters, src: image.data_uri }));
    $('image-status').textContent = `Done: ${answered.matches.length} image${answered.matches.length === 1 ? '' : 's'} added below.`;
  }

  $('image-file').addEventListener('change', () => choose($('image-file').files[0]));
  dropZone($('image-drop'), choose);
  $('caption-button').addEventListener('click', caption);
  $('tagging').addEventListener('submit', (event) => { event.preventDefault(); tag(); });
  $('restyle').addEventListener('click', restyle);
  $('strength').addEventListener('input', () => { $('strength-value').textContent = Number($('strength').value).toFixed(2); });
}
