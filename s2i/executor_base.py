"""What every executor of the service does the same way, so that an executor's file holds only its own work.

``ServiceExecutor`` (every executor):

- settings: Jina passes a config.yml's ``with:`` as keyword arguments, and they become ``self.settings``,
  an instance of the class's ``settings_class``: a value given wins over its S2I_ variable, which wins
  over the class's default. A key the class does not have stops the start, naming it; so does a bad
  value, naming its variable. A misspelt S2I_ variable is named in a warning.
- request parameters: ``self.defaults`` (``params_class`` with the configured ``request_defaults``), and
  ``request_params`` at the top of each endpoint: the gateway's key checked, the request's keys parsed
  once, and every document failed, with the error's code, when they are bad.
- ``/parameters``: the executor's keys, their schema with the configured defaults, and its model.
- pass-on (``passes_on = True``): every endpoint the executor does not serve returns its documents
  unchanged, because Jina's Flow check wants each executor to take the endpoints of the ones before it.
- per-document errors (``own_failure``, ``failure``, ``fail_all``): an exception fails the documents it concerns,
  with its code, never the whole request, whose other documents may be other callers' (dynamic batching).

``ModelExecutor`` adds the device and dtype (fp16 on CUDA, fp32 on the CPU) and a model that loads
at start or, with ``load_at_start: false``, at the first request that needs it.
"""

import inspect
import sys
from contextlib import contextmanager
from typing import Any, Callable, ClassVar, Dict, Iterable, Mapping, Optional, Type, TypeVar

from docarray import DocList
from jina import Executor, requests

from s2i.contracts.documents import ParameterSchema, PromptDoc, mark_failed
from s2i.contracts.errors import CodedError, ErrorCode
from s2i.contracts.params import PARAMETERS_ENDPOINT, ParameterError, RequestParams
from s2i.executor_settings import ExecutorSettings
from s2i.runtime import DETAILS_LOGGED, UNAUTHENTICATED, LazyModel, from_the_gateway, resolve_device
from s2i.settings import warn_unknown_variables

EVERY_OTHER_ENDPOINT = '/default'  # Jina's endpoint for the requests no other endpoint of an executor takes
JINAS_OWN = frozenset(inspect.signature(Executor.__init__).parameters) - {'self', 'kwargs'}  # metas, requests, ...
P = TypeVar('P', bound=RequestParams)


def load_settings(executor: Type['ServiceExecutor'], given: Mapping[str, Any]) -> ExecutorSettings:
    """The executor's settings: ``given`` (its config.yml's ``with:``) over the environment over the defaults."""
    return executor.settings_class.load(given, owner=executor.__name__)


def settings_signature(settings_class: Type[ExecutorSettings]) -> inspect.Signature:
    """``(self, *, <each setting>=<its default>, **kwargs)``: the settings, as Jina and help() read a constructor."""
    settings = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=field.default, annotation=field.annotation)
                for name, field in settings_class.model_fields.items()]
    return inspect.Signature([inspect.Parameter('self', inspect.Parameter.POSITIONAL_OR_KEYWORD), *settings,
                              inspect.Parameter('kwargs', inspect.Parameter.VAR_KEYWORD)])


class NoParams(RequestParams):
    """The parameters of an executor that reads none."""


class ServiceExecutor(Executor):
    settings_class: ClassVar[Type[ExecutorSettings]] = ExecutorSettings
    params_class: ClassVar[Type[RequestParams]] = NoParams
    passes_on: ClassVar[bool] = False  # True: every endpoint it does not serve passes its documents on unchanged

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if '__init__' in vars(cls):  # Jina warns about a config.yml key its constructor's signature does not name
            cls.__init__.__signature__ = settings_signature(cls.settings_class)

    def __init__(self, **kwargs):
        jinas = {key: kwargs.pop(key) for key in JINAS_OWN & set(kwargs)}
        self.settings = load_settings(type(self), kwargs)
        if self.passes_on:
            jinas['requests'] = {EVERY_OTHER_ENDPOINT: 'pass_on', **(jinas.get('requests') or {})}
        super().__init__(**jinas)
        warn_about_unknown_variables(self.logger)
        self.defaults = self.configured_defaults()

    def configured_defaults(self) -> RequestParams:
        """The request parameters' defaults, with the configured ``request_defaults`` over the model's own."""
        return self.params_class.with_defaults(self.settings.request_defaults)

    @property
    def model_id(self) -> str:
        """The model this executor serves (a hub id or a folder), as GET /v1/models lists it; '' for none."""
        return getattr(self.settings, 'model', '')

    # --- endpoints ---

    @requests(on=PARAMETERS_ENDPOINT)
    def describe_parameters(self, docs: DocList[ParameterSchema], parameters: Optional[Dict[str, Any]] = None,
                            **kwargs) -> DocList[ParameterSchema]:
        """What came before in the chain, plus this executor's keys, schema and model. Like every
        endpoint, it answers only the gateway: without the gateway's key its caller learns nothing."""
        return answer_parameters(docs, self.parameter_schema(), parameters)

    def parameter_schema(self) -> ParameterSchema:
        """This executor's part of ``/parameters``; an executor with more than one parameter model extends it."""
        return parameter_schema(self.metas.name, self.defaults, self.model_id)

    def pass_on(self, docs: DocList[PromptDoc], parameters: Dict[str, Any], **kwargs) -> DocList[PromptDoc]:
        """An endpoint this executor does not serve: the documents, unchanged (``passes_on``)."""
        if not from_the_gateway(parameters):  # a caller around the gateway learns nothing, even here
            mark_failed(docs, UNAUTHENTICATED, ErrorCode.INVALID_API_KEY)
        return docs

    # --- for the endpoints ---

    def request_params(self, docs: Iterable[PromptDoc], parameters: Mapping[str, Any], defaults: Optional[P] = None,
                       check: Optional[Callable[[P], None]] = None) -> Optional[P]:
        """An endpoint's first step: its parameters for this request (``defaults``, else ``self.defaults``,
        with the request's keys, then ``check``ed against the executor's own limits), or None with every
        document failed: a request that did not come through the gateway, or values of the wrong type
        or out of range."""
        defaults = self.defaults if defaults is None else defaults
        if not from_the_gateway(parameters):  # a caller around the gateway, without the token
            mark_failed(docs, UNAUTHENTICATED, ErrorCode.INVALID_API_KEY)
            return None
        try:
            params = type(defaults).from_request(defaults, parameters)
            if check is not None:
                check(params)
        except ParameterError as e:
            mark_failed(docs, f'invalid parameters: {e}', e.code, e.param)
            return None
        return params

    @contextmanager
    def own_failure(self, doc: PromptDoc, step: str):
        """An exception in one document's ``step`` becomes that document's error (``failure``), unless it has one."""
        try:
            yield
        except Exception as e:
            fail_all([doc], self.failure(f'{step} for document {doc.id}', e, step))

    def failure(self, what: str, error: Exception, step: Optional[str] = None) -> CodedError:
        """What an exception in ``what`` tells the documents it fails: a CodedError as it is; anything else
        logged with its traceback here, and told as "<step> failed: <its type>" with its code. Called in the
        except block; what it returns holds no traceback, so the failed call's tensors can be freed."""
        if isinstance(error, CodedError):
            return CodedError(error.message, error.code, error.param)
        self.logger.error(f'{what} failed', exc_info=True)
        return CodedError(f'{step or what} failed: {type(error).__name__}; {DETAILS_LOGGED}', code_of(error))


def fail_all(docs: Iterable[PromptDoc], error: CodedError) -> None:
    """``error`` for each of ``docs`` that has none yet."""
    mark_failed(docs, error.message, error.code, error.param)


class ModelExecutor(ServiceExecutor):
    """An executor with a model: ``device`` and ``dtype`` from its ``device`` setting. One whose model may
    load at its first use (a ``load_at_start`` setting) implements ``load_model``, which returns what it keeps
    (a model, its processor, ...), and ``use_model``, which keeps it; it ends its constructor with
    ``load_now_or_at_first_use`` and calls ``model_ready`` before each use."""

    model_kind: ClassVar[str] = ''  # in the error of a model that cannot load: "the <kind> model could not be loaded"

    def __init__(self, **kwargs):
        import torch

        super().__init__(**kwargs)
        self.device = torch.device(resolve_device(self.settings.device))
        self.dtype = torch.float16 if self.device.type == 'cuda' else torch.float32
        self.lazy_model = LazyModel(self.load_model, self.model_kind, self.logger)

    def load_model(self) -> Any:
        raise NotImplementedError

    def use_model(self, loaded: Any) -> None:
        raise NotImplementedError

    def load_now_or_at_first_use(self) -> None:
        """The end of a lazy executor's constructor: the model now, unless ``load_at_start`` is false."""
        if self.settings.load_at_start:
            self.use_model(self.lazy_model.get())

    def model_ready(self, docs: Iterable[PromptDoc]) -> bool:
        """Whether the model is loaded (loading it now if need be); if it cannot be, each of ``docs`` says why."""
        if not self.lazy_model.ready_for(docs):
            return False
        self.use_model(self.lazy_model.get())
        return True

    def release_memory(self) -> None:
        """After a failed model call, out of its except block (where the traceback holds the call's
        tensors): the memory freed, so that the retry finds it."""
        import gc

        import torch

        gc.collect()
        if self.device.type == 'cuda':
            torch.cuda.empty_cache()


def parameter_schema(executor: str, defaults: RequestParams, model: str = '') -> ParameterSchema:
    """An executor's keys, their JSON schema (each key's default the executor's configured one) and its model."""
    schema = type(defaults).model_json_schema()
    for key, value in defaults.model_dump().items():
        schema['properties'][key]['default'] = value
    return ParameterSchema(executor=executor, keys=sorted(defaults.keys()), json_schema=schema, model=model)


def answer_parameters(docs: DocList[ParameterSchema], schema: ParameterSchema,
                      parameters: Optional[Mapping[str, Any]]) -> DocList[ParameterSchema]:
    """The ``/parameters`` answer: the schemas of the executors before this one in the chain, then ``schema``;
    PermissionError, and nothing learnt, for a caller without the gateway's key."""
    if not from_the_gateway(parameters or {}):
        raise PermissionError(UNAUTHENTICATED)
    described = DocList[ParameterSchema](doc for doc in docs if doc.executor != schema.executor)
    described.append(schema)
    return described


def warn_about_unknown_variables(logger) -> None:
    """s2i.settings.warn_unknown_variables, which imports every component's settings class: one that cannot
    be imported (a partial install) costs this check, not the executor's start."""
    try:
        warn_unknown_variables(logger)
    except ImportError as e:
        logger.warning(f'the S2I_ variables were not checked for typos: {e}')


def code_of(error: Exception) -> ErrorCode:
    """An exception's error code: a CodedError's own, out_of_memory for CUDA's, else internal_error."""
    if isinstance(error, CodedError):
        return error.code
    torch = sys.modules.get('torch')  # never imported here for this: no torch, no CUDA error
    if torch is not None and isinstance(error, torch.cuda.OutOfMemoryError):
        return ErrorCode.OUT_OF_MEMORY
    return ErrorCode.INTERNAL_ERROR
