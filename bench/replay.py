"""An executor that answers like Stable Diffusion without running a model: what serving alone costs."""

import base64
from typing import Any, Dict

from docarray import DocList
from jina import Executor, requests

from s2i.contracts.documents import GeneratedImage, PromptDoc


class ReplayExecutor(Executor):
    """Gives every document the recorded image: the same bytes on the wire as a real answer."""

    def __init__(self, png_base64: str, width: int, height: int, parameters: Dict[str, Any], **kwargs):
        super().__init__(**kwargs)
        self.image = GeneratedImage(png=base64.b64decode(png_base64), width=width, height=height, parameters=parameters)

    @requests(on=['/generate', '/text2image'])
    def replay(self, docs: DocList[PromptDoc], **kwargs) -> DocList[PromptDoc]:
        for doc in docs:
            doc.matches = DocList[GeneratedImage]([self.image])
        return docs
