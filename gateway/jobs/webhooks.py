"""Job callbacks: when a job ends, the gateway POSTs its final record to the job's ``callback_url``, once,
retrying what may pass on a second try (network errors, timeouts, 408, 429, 5xx) with exponential backoff.

Only hosts in ``webhook_hosts`` (gateway/config.yml, or S2I_WEBHOOK_HOSTS, comma-separated ``host`` or
``host:port``) are called: the policy of the Whisper executor's audio URLs (s2i.urls), so that a job cannot
make the server reach its own network. Nothing is allowed by default. Redirects are not followed.

Requests follow Standard Webhooks (https://www.standardwebhooks.com), signed with its library
``standardwebhooks``: ``webhook-id`` (one per delivery, the same on each of its retries, so that a receiver
can drop a duplicate), ``webhook-timestamp`` (Unix seconds, of each attempt) and, with a secret,
``webhook-signature`` over the three: a receiver that verifies with ``standardwebhooks.Webhook(secret)``
rejects a captured request replayed more than 5 minutes later, or with its timestamp changed.
"""

import asyncio
import base64
import binascii
import json
import logging
import time
import uuid
from datetime import datetime, timezone
from typing import Optional, Sequence
from urllib.parse import SplitResult, urlsplit

import aiohttp
from standardwebhooks import Webhook

from s2i.contracts.params import quote
from s2i.urls import host_and_port, host_refusal

ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER = 'webhook-id', 'webhook-timestamp', 'webhook-signature'
SECRET_PREFIX = 'whsec_'
MIN_SECRET_BYTES = 24  # Standard Webhooks: 24 to 64 random bytes
MAKE_A_SECRET = '''python -c "import base64,os;print('whsec_'+base64.b64encode(os.urandom(32)).decode())"'''
ATTEMPTS = 5  # requests per delivery at most, the first included (the gateway's webhook_attempts)
EVENT_HEADER, EVENT = 'X-S2I-Event', 'job.finished'
JOB_HEADER = 'X-S2I-Job'
MAX_DELAY = 60.0  # seconds between attempts, however many there are
RETRIED_STATUSES = {408, 429}  # and 5xx: the receiver may accept the same request later
HOW_TO_ALLOW = (
    'to allow one, list its host (host or host:port) in webhook_hosts in gateway/config.yml, '
    'or in S2I_WEBHOOK_HOSTS (comma-separated)'
)


def signer(secret: Optional[str]) -> Optional[Webhook]:
    """What signs callbacks with ``secret`` (S2I_WEBHOOK_SECRET); None without one: requests are not signed.

    The secret must be a Standard Webhooks one, ``whsec_`` and the base64 of at least 24 random bytes, which
    receivers pass as it is to their Standard Webhooks library. Any other string is refused (ValueError: the
    gateway does not start) rather than turned into a key that every receiver would have to derive the same
    way. The error never repeats the secret.
    """
    if secret is None:
        return None
    secret = secret.strip()  # a Secret made from a file ends with a newline, which the receivers' library skips too
    encoded = secret[len(SECRET_PREFIX):] if secret.startswith(SECRET_PREFIX) else ''
    try:
        padding = '=' * (-len(encoded) % 4)  # padded or not, as the receivers' library takes it
        key = base64.b64decode(encoded + padding, validate=True)
    except binascii.Error:  # not base64
        key = b''
    if len(key) < MIN_SECRET_BYTES:
        raise ValueError(
            f'S2I_WEBHOOK_SECRET must be a Standard Webhooks secret: {SECRET_PREFIX} and the base64 of at least '
            f'{MIN_SECRET_BYTES} random bytes; make one with: {MAKE_A_SECRET}'
        )
    return Webhook(key)


class Webhooks:
    """Delivers finished jobs' records to their callback URLs, within the allow-list."""

    def __init__(
        self, allowed_hosts: Sequence[str] = (), secret: Optional[str] = None, attempts: int = ATTEMPTS,
        first_delay: float = 1.0, timeout: float = 10.0, logger=None,
    ):
        if attempts < 1 or first_delay < 0 or timeout <= 0:
            raise ValueError(
                f'webhooks need attempts >= 1, first_delay >= 0 and timeout > 0; got {attempts}, {first_delay} and {timeout}'
            )
        self.allowed_hosts = tuple(allowed_hosts)  # "host" or "host:port"; (): no callbacks at all
        self.signer = signer(secret)  # None: requests are not signed
        self.attempts = attempts  # requests per delivery, the first included
        self.first_delay = first_delay  # seconds before the second attempt; doubled before each next one
        self.timeout = timeout  # seconds per attempt: connecting, sending and the answer's headers
        self.logger = logger or logging.getLogger(__name__)

    def refusal(self, url: str) -> Optional[str]:
        """Why ``url`` may not be a callback URL, or None. Checked when a job is submitted (the client gets a 400)
        and again before delivering, as the configuration may have changed in between."""
        try:
            parts = urlsplit(url)
            if parts.scheme.lower() not in ('http', 'https'):
                return f'callback_url must be an http or https URL, got {quote(url)}'
            if not parts.hostname:
                return f'callback_url names no host: {quote(url)}'
            return self._host_refusal(parts)
        except ValueError as e:  # "http://[::1", a port over 65535
            return f'malformed callback_url {quote(url)}: {e}'

    def _host_refusal(self, parts: SplitResult) -> Optional[str]:
        if not self.allowed_hosts:  # the default: say so, and how to turn callbacks on, before anything else
            host = quote(host_and_port(parts))
            return f'callback_url host {host} is not allowed (webhook_hosts: none): callbacks are off; {HOW_TO_ALLOW}'
        return host_refusal(parts, self.allowed_hosts, subject='callback_url', setting='webhook_hosts')

    async def deliver(self, url: str, record: dict) -> bool:
        """POSTs ``record`` as JSON to ``url``, retrying failures that may pass; whether it was delivered (2xx).
        Never raises (but lets cancellation through): a callback that fails is logged, and the job stays as it is."""
        job = str(record.get('id', ''))
        refusal = self.refusal(url)
        if refusal:  # nothing is resolved or connected to for a refused host
            self.logger.warning(f'job {job}: callback not sent: {refusal}')
            return False
        try:
            body = json.dumps(record, separators=(',', ':'), sort_keys=True).encode('utf-8')
        except (TypeError, ValueError) as e:  # a value JSON cannot hold: a bug in the caller, not the receiver's
            self.logger.warning(f'job {job}: callback not sent: the record is not JSON: {e}')
            return False
        try:
            return await self._post_with_retries(url, body, job)
        except Exception:  # a bug here must not reach the job runner, which called this after the job ended
            self.logger.error(f'job {job}: callback not sent: unexpected error', exc_info=True)
            return False

    def _headers(self, job: str, delivery: str, body: bytes) -> dict:
        """One attempt's headers: the delivery's id, with the time (and signature) of this attempt, not the first."""
        now = int(time.time())
        headers = {
            'Content-Type': 'application/json', EVENT_HEADER: EVENT, JOB_HEADER: job,
            ID_HEADER: delivery, TIMESTAMP_HEADER: str(now),
        }
        if self.signer is not None:
            headers[SIGNATURE_HEADER] = self.signer.sign(delivery, datetime.fromtimestamp(now, timezone.utc), body)
        return headers

    async def _post_with_retries(self, url: str, body: bytes, job: str) -> bool:
        where = host_and_port(urlsplit(url))  # not the whole URL: its path or query may hold a receiver's token
        # trust_env=False: no proxy from the environment, so the host connected to is the host checked
        delivery = f'msg_{uuid.uuid4().hex}'  # the same on every attempt, for the receiver to drop duplicates
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout), trust_env=False) as session:
            for attempt in range(1, self.attempts + 1):
                outcome, retry = await self._post_once(session, url, body, self._headers(job, delivery, body))
                if outcome is None:
                    self.logger.info(f'job {job}: callback delivered to {where} (attempt {attempt})')
                    return True
                if not retry or attempt == self.attempts:
                    self.logger.warning(f'job {job}: callback to {where} failed after {attempt} attempt(s): {outcome}')
                    return False
                delay = self.delay_before(attempt + 1)
                self.logger.warning(f'job {job}: callback to {where}, attempt {attempt}: {outcome}; next in {delay:g} s')
                await asyncio.sleep(delay)
        return False

    async def _post_once(self, session: aiohttp.ClientSession, url: str, body: bytes, headers: dict):
        """(None, _) when delivered, else (what went wrong, whether another attempt may succeed)."""
        try:
            async with session.post(url, data=body, headers=headers, allow_redirects=False) as response:
                status = response.status
        except asyncio.TimeoutError:
            return f'no answer within {self.timeout:g} s', True
        except ValueError as e:  # an invalid URL or header, an untrusted certificate: the same on every try
            return f'{type(e).__name__}: {e}', False
        except (aiohttp.ClientError, OSError) as e:  # refused, reset, DNS, a dropped answer
            return f'{type(e).__name__}: {e}', True
        if 200 <= status < 300:
            return None, False
        if 300 <= status < 400:
            return f'HTTP {status}: a redirect, which is not followed', False
        return f'HTTP {status}', status >= 500 or status in RETRIED_STATUSES

    def delay_before(self, attempt: int) -> float:
        """Seconds to wait before attempt number ``attempt`` (2, 3, ...): first_delay, doubling, at most MAX_DELAY."""
        return min(self.first_delay * 2.0 ** min(attempt - 2, 32), MAX_DELAY)  # 2**32: past any cap, never an overflow
