// The job API as the page uses it: the token, requests with OpenAI-shaped errors, and a job's events;
// and the Flow's image endpoints.

const TOKEN_KEY = 's2i.token';
export const TERMINAL = new Set(['succeeded', 'failed', 'cancelled']);
const RETRY_MS = [500, 1000, 2000, 4000];  // between reconnections; the last one repeats

export const token = () => sessionStorage.getItem(TOKEN_KEY) || '';
export const setToken = (value) => sessionStorage.setItem(TOKEN_KEY, value.trim());

/** A refused request: its HTTP status and OpenAI's error fields (message, param, code: s2i/contracts/errors.py). */
export class RequestError extends Error {
  constructor(status, message, param = null, code = null) {
    super(message);
    Object.assign(this, { status, param, code });
  }
}

async function call(method, path, body) {
  const headers = token() ? { Authorization: `Bearer ${token()}` } : {};
  if (body && !(body instanceof FormData)) {
    headers['Content-Type'] = 'application/json';
    body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, { method, headers, body });
  } catch (e) {
    throw new RequestError(0, 'the service cannot be reached; is it running?');
  }
  const answer = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = answer.error || { message: typeof answer.detail === 'string' ? answer.detail : response.statusText };
    throw new RequestError(response.status, error.message, error.param, error.code);
  }
  return answer;
}

export const submitJob = (body) => call('POST', '/v1/jobs', body);
export const cancelJob = (id) => call('DELETE', `/v1/jobs/${encodeURIComponent(id)}`);
export const lookUpJob = (id) => call('GET', `/v1/jobs/${encodeURIComponent(id)}`);
export const parameterSchemas = () => call('GET', '/ui/parameters');
export const pageSchema = () => call('GET', '/ui/schema.json');

/**
 * One image through one of the Flow's image endpoints (/caption, /tag, /restyle) over Jina's HTTP route:
 * the answered document (caption, tags, matches with data_uri). An error the executor wrote into the
 * document (error, error_code, error_param) is thrown as a RequestError, like a refused request.
 */
export async function imageRequest(endpoint, document, parameters = {}) {
  const answer = await call('POST', endpoint, { data: [document], parameters });
  const [answered] = answer.data || [];
  if (!answered) throw new RequestError(0, 'the service answered without a document');
  if (answered.error) throw new RequestError(200, answered.error, answered.error_param, answered.error_code);
  return answered;
}

/**
 * Follows a job's events from seq ``after``, calling onEvent with each one in order, until the terminal
 * event. A dropped connection is opened again from the last seq seen (onEvent gets {kind: 'reconnecting'});
 * a job the service no longer knows ends with {kind: 'lost', status, error, error_code}, as a failed job's event.
 */
export function followJob(id, after, onEvent) {
  let last = after;
  let ended = false;
  let attempt = 0;
  let socket = null;

  function open() {
    const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
    const url = `${scheme}://${location.host}/v1/jobs/${encodeURIComponent(id)}/events?after=${last}`;
    socket = new WebSocket(url, token() ? [`bearer.${token()}`] : []);
    socket.onmessage = (message) => {
      const event = JSON.parse(message.data);
      attempt = 0;
      if (event.seq <= last) return;
      last = event.seq;
      if (TERMINAL.has(event.kind)) ended = true;
      onEvent(event);
    };
    socket.onclose = () => { if (!ended) reconnect(); };
  }

  async function reconnect() {
    onEvent({ kind: 'reconnecting', attempt: ++attempt });
    await new Promise((resolve) => setTimeout(resolve, RETRY_MS[Math.min(attempt, RETRY_MS.length) - 1]));
    if (ended) return;
    try {
      await lookUpJob(id);  // a 401 or 404 will not mend itself: say so rather than retry for ever
    } catch (e) {
      if (e.status === 401 || e.status === 404) {
        ended = true;
        onEvent({ kind: 'lost', status: e.status, error: e.message, error_code: e.code });
        return;
      }
    }
    open();
  }

  open();
  return { stop() { ended = true; if (socket) socket.close(); } };
}
