"""The real gateway component (gateway/config.yml) in front of two tiny executors that record what
reaches them, in its own process (tests/servers.py says why):

    [S2I_AUTH_TOKEN=...] python tests/recording_flow.py LOG GRPC_PORT HTTP_PORT [GATEWAY_SETTINGS_JSON]
    python tests/recording_flow.py --executors-only LOG WHISPER_PORT SD_PORT

The second form starts only the two executors, as bare executors named like flow.yml's (whisper,
stable_diffusion) on the given ports, for a gateway started on its own (as the manifests run it).

``tagger`` owns the request key ``tag`` and ``painter`` owns ``size``; each serves /parameters the
way the real executors do. ``painter`` appends one line per document to LOG (proof of what reached
an executor) and gives each document a small PNG, which HTTP answers carry as a data URI; a
document whose text is FAIL makes it raise, with a server path in the message.
"""

import json
import os
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, Optional

from docarray import DocList
from jina import Executor, Flow, requests
from PIL import Image

from s2i.contracts.documents import GeneratedImage, ParameterSchema, PromptDoc
from s2i.encoding import encode_png
from s2i.contracts.params import PARAMETERS_ENDPOINT, Integer, RequestParams, Text
from s2i.executor_base import answer_parameters, parameter_schema
from s2i.serve import FLOW_YML

READY = 'recording flow ready'
FAIL = 'painter, raise'
GATEWAY_CONFIG = FLOW_YML.parent / 'gateway' / 'config.yml'


class TagParams(RequestParams):
    tag: Text = ''  # appended to the text


class PaintParams(RequestParams):
    size: Integer = 8  # width and height of the image


class Tagger(Executor):
    @requests(on=['/generate', '/text2image'])
    def tag(self, docs: DocList[PromptDoc], parameters: dict, **kwargs) -> DocList[PromptDoc]:
        params = TagParams.from_request(TagParams(), parameters)
        for doc in docs:
            doc.text += params.tag
        return docs

    @requests(on=PARAMETERS_ENDPOINT)
    def parameters(self, docs: DocList[ParameterSchema], parameters: Optional[dict] = None, **kwargs) -> DocList[ParameterSchema]:
        return answer_parameters(docs, parameter_schema(self.metas.name, TagParams()), parameters)


class Painter(Executor):
    def __init__(self, log: str, **kwargs):
        super().__init__(**kwargs)
        self.log = log

    @requests(on=['/generate', '/text2image'])
    def paint(self, docs: DocList[PromptDoc], parameters: dict, **kwargs) -> DocList[PromptDoc]:
        params = PaintParams.from_request(PaintParams(), parameters)
        if any(doc.text == FAIL for doc in docs):
            raise RuntimeError(f'asked to fail, in {__file__}')
        with open(self.log, 'a') as file:
            file.writelines(f'{doc.text}\n' for doc in docs)
        for doc in docs:
            png = encode_png(Image.new('RGB', (params.size, params.size)), {'prompt': doc.text})
            doc.matches = DocList[GeneratedImage]([GeneratedImage(png=png, width=params.size, height=params.size)])
        return docs

    @requests(on=PARAMETERS_ENDPOINT)
    def parameters(self, docs: DocList[ParameterSchema], parameters: Optional[dict] = None, **kwargs) -> DocList[ParameterSchema]:
        return answer_parameters(docs, parameter_schema(self.metas.name, PaintParams()), parameters)


def main(log: str, grpc_port: str, http_port: str, gateway_settings: str = '{}') -> None:
    flow = (
        Flow(protocol=['grpc', 'http'], port=[int(grpc_port), int(http_port)], host='127.0.0.1')
        .config_gateway(uses=str(GATEWAY_CONFIG), uses_with=json.loads(gateway_settings))
        .add(name='tagger', uses=Tagger, uses_metas={'name': 'tagger'})
        .add(name='painter', uses=Painter, uses_with={'log': log}, uses_metas={'name': 'painter'})
    )
    with flow:
        print(READY, flush=True)
        flow.block(stop_event=threading.Event())


def executors_only(log: str, whisper_port: str, sd_port: str) -> None:
    from jina import Deployment

    tagger = Deployment(uses=Tagger, name='whisper', uses_metas={'name': 'whisper'}, port=int(whisper_port), include_gateway=False)
    painter = Deployment(uses=Painter, uses_with={'log': log}, name='stable_diffusion', uses_metas={'name': 'stable_diffusion'},
                         port=int(sd_port), include_gateway=False)
    with tagger, painter:
        print(READY, flush=True)
        threading.Event().wait()


@contextmanager
def running_recording_flow(log: Path, token: Optional[str], **gateway_settings) -> Iterator[Dict]:
    """This Flow in a subprocess on free ports, with ``token`` as its S2I_AUTH_TOKEN (None: no token)
    and ``gateway_settings`` over those of gateway/config.yml.

    Yields its hosts ({'grpc': ..., 'http': ...}), its 'log' and its 'server'; ``received(flow)`` reads the log."""
    from conftest import ROOT, free_port
    from servers import Server

    log.touch()
    grpc_port, http_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k != 'S2I_AUTH_TOKEN'}
    if token is not None:
        env['S2I_AUTH_TOKEN'] = token
    command = [sys.executable, __file__, str(log), str(grpc_port), str(http_port), json.dumps(gateway_settings)]
    server = Server(command, env=env, cwd=ROOT)
    try:
        server.wait_for(READY, limit=180)
        yield {'grpc': f'grpc://127.0.0.1:{grpc_port}', 'http': f'http://127.0.0.1:{http_port}', 'log': log, 'server': server}
    finally:
        server.kill()


def received(flow: Dict) -> list:
    """The texts of the documents that reached the executors, one per line, in order."""
    return flow['log'].read_text().splitlines()


if __name__ == '__main__':
    if sys.argv[1] == '--executors-only':
        executors_only(*sys.argv[2:])
    else:
        main(*sys.argv[1:])
