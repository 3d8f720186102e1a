"""A hypothetical new executor for the tests: it appends a requested style to each prompt.

It shows what adding an executor takes: this folder (config.yml, executor.py, params.py) and a line
in the Flow's YAML; no other executor, and no shared list of keys, changes."""

from typing import Any, Dict, Optional

from docarray import DocList
from jina import Executor, requests

from s2i.contracts.documents import ParameterSchema, PromptDoc, mark_failed
from s2i.contracts.params import PARAMETERS_ENDPOINT, ParameterError, describe_parameters

from params import StyleParams  # config.yml's py_modules loads params.py first, as module "params"


class StyleExecutor(Executor):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.defaults = StyleParams()

    @requests(on=['/generate', '/text2image'])
    def add_style(self, docs: DocList[PromptDoc], parameters: Dict[str, Any], **kwargs) -> DocList[PromptDoc]:
        try:
            params = StyleParams.from_request(self.defaults, parameters)
        except ParameterError as e:
            mark_failed(docs, f'invalid parameters: {e}')
            return docs
        for doc in docs:
            if not doc.error and params.style:
                doc.text += params.style
        return docs

    @requests(on=PARAMETERS_ENDPOINT)
    def describe_parameters(self, docs: DocList[ParameterSchema], parameters: Optional[Dict[str, Any]] = None,
                            **kwargs) -> DocList[ParameterSchema]:
        return describe_parameters(docs, self.metas.name, self.defaults, parameters=parameters)  # only to the gateway
