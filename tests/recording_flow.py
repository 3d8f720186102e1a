"""A Flow of the token gateway in front of RecordingExecutor, in its own process (a fresh interpreter:
Jina forks the Flow's processes, and forking a test process full of threads is not safe).

    S2I_AUTH_TOKEN=... python tests/recording_flow.py LOG GRPC_PORT HTTP_PORT
"""

import sys
import threading

from docarray import DocList
from jina import Executor, Flow, requests

from s2i.docs import PromptDoc
from s2i.gateway import TokenAuthGateway

READY = 'recording flow ready'


class RecordingExecutor(Executor):
    """Appends one line per document it receives to ``log``: proof of what reached an executor."""

    def __init__(self, log: str, **kwargs):
        super().__init__(**kwargs)
        self.log = log

    @requests(on=['/generate', '/text2image'])
    def record(self, docs: DocList[PromptDoc], **kwargs) -> DocList[PromptDoc]:
        with open(self.log, 'a') as file:
            file.writelines(f'{doc.text}\n' for doc in docs)
        return docs


def main(log: str, grpc_port: str, http_port: str) -> None:
    flow = Flow().config_gateway(
        uses=TokenAuthGateway, protocol=['grpc', 'http'], port=[int(grpc_port), int(http_port)], host='127.0.0.1',
    ).add(uses=RecordingExecutor, uses_with={'log': log})
    with flow:
        print(READY, flush=True)
        flow.block(stop_event=threading.Event())


if __name__ == '__main__':
    main(*sys.argv[1:])
