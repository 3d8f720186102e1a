"""A hypothetical new executor for the tests: it appends a requested style to each prompt.

It shows what adding an executor takes: this folder (config.yml, executor.py, params.py) and a line
in the Flow's YAML; no other executor, and no shared list of keys, changes. The executor base
(s2i/executor_base.py) gives it the gateway's key check, its parameters parsed with their errors'
codes, and the /parameters answer that tells the gateway its key."""

from typing import Any, Dict

from docarray import DocList
from jina import requests

from s2i.contracts.documents import PromptDoc
from s2i.executor_base import ServiceExecutor

from params import StyleParams  # config.yml's py_modules loads params.py first, as module "params"


class StyleExecutor(ServiceExecutor):
    params_class = StyleParams

    @requests(on=['/generate', '/text2image'])
    def add_style(self, docs: DocList[PromptDoc], parameters: Dict[str, Any], **kwargs) -> DocList[PromptDoc]:
        params = self.request_params(docs, parameters)
        if params is None:
            return docs
        for doc in docs:
            if not doc.error and params.style:
                doc.text += params.style
        return docs
