// Errors, where their code says (the code table's page place, served in /ui/schema.json): by the token box,
// by the input the request came from, by the settings field its param names, or in the status banner.
// The code decides; the message is shown as the service wrote it, never read.

import { $ } from './dom.js';

// What a person can do about the errors met most; the service's own words follow in brackets.
export const NOT_AN_IMAGE = 'This file cannot be read as an image. Choose a PNG, JPEG or WebP file.';
const ADVICE = {
  invalid_api_key: 'The access token is wrong or missing. Enter the token of this service.',
  no_speech: 'No speech was heard. Speak closer to the microphone, or type a prompt.',
  audio_unreadable: 'This file cannot be read as audio. Try a WAV, MP3, OGG, FLAC or WebM recording.',
  audio_too_long: 'The recording is too long for this service.',
  language_uncertain: 'The spoken language is uncertain. Choose it under Settings.',
  image_unreadable: NOT_AN_IMAGE,
  input_too_large: 'Too large for this service.',
  rate_limited: 'The service is busy. Try again in a moment.',
};
const CONTAINERS = new Set(['banner', 'settings']);  // places that take the error inside, not beside

let places = {};  // code -> place

/** The code table's page places (``{code: {page}}``). */
export function knowPlaces(errors) {
  places = Object.fromEntries(Object.entries(errors).map(([code, kind]) => [code, kind.page]));
}

/** Where ``error`` ({status, code}) shows. Without a code (a refusal of Jina's own routes), a 401 is the token's. */
export function placeOf(error) {
  return places[error.code] || (error.status === 401 ? 'token' : 'banner');
}

/** ``error``'s message for a person: the advice for its code, if any, then the service's words. */
export function plainly(error) {
  const message = error.message || 'something went wrong';
  const advice = ADVICE[error.code] || (error.status === 401 ? ADVICE.invalid_api_key : '');
  return advice ? `${advice} (${message})` : message.charAt(0).toUpperCase() + message.slice(1);
}

/**
 * Shows ``error`` at its place. ``input`` is the id of the input the request came from; ``inputFor(param)``
 * the id of the input that sets a parameter (a settings field, the prompt, the labels…), if the page has one.
 */
export function showFailure(error, input, inputFor) {
  const place = placeOf(error);
  const named = error.param ? inputFor(error.param) : undefined;
  const anchor = { token: 'token', banner: 'banner', input: named || input, settings: named || 'settings' }[place];
  showError(plainly(error), anchor);
}

/** Shows ``message`` beside the input ``anchorId`` (or inside the banner or the settings), marking it invalid. */
export function showError(message, anchorId) {
  clearError();
  const error = $('error');
  const anchor = $(anchorId);
  error.textContent = message;
  error.hidden = false;
  const details = anchor.closest('details');
  if (details) details.open = true;
  if (CONTAINERS.has(anchorId)) {
    anchor.append(error);
    return;
  }
  (anchor.closest('.field, .way') || anchor.parentElement).append(error);
  anchor.setAttribute('aria-invalid', 'true');
  anchor.setAttribute('aria-describedby', 'error');
}

export function clearError() {
  $('error').hidden = true;
  $('error').textContent = '';
  document.querySelectorAll('[aria-invalid]').forEach((element) => {
    element.removeAttribute('aria-invalid');
    element.removeAttribute('aria-describedby');
  });
}

/** Whether the error shown is the token's (a good token then clears it). */
export const tokenErrorShown = () => !$('error').hidden && $('error').parentElement.querySelector('#token') !== null;
