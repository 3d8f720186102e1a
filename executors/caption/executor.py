"""CaptionExecutor: what an image shows, in words (``doc.caption``), from an image-to-text model.

``/caption`` captions every document's image. ``/interrogate`` captions the images that have no
caption yet, so that this executor can sit before the CLIP executor, whose ``/interrogate`` starts
its prompt with the caption.

Documents that already carry an ``error`` pass through untouched. A document whose image cannot
be used gets an error of its own; the other documents of the request still get their captions.
Images are decoded a batch at a time, shrunk to the model's input size (s2i/images.py).
"""

import gc
from typing import Any, Dict, List, Optional, Tuple

import torch
from docarray import DocList
from jina import Executor, requests
from PIL import Image

from s2i.contracts.caption import DEFAULT_MODEL, CaptionParams
from s2i.contracts.documents import ParameterSchema, PromptDoc, mark_failed
from s2i.contracts.params import PARAMETERS_ENDPOINT, describe_parameters, request_parameters
from s2i.runtime import (
    DETAILS_LOGGED, UNAUTHENTICATED, LazyModel, from_the_gateway, ready_on_device, refuse_unknown_settings, resolve_device,
    setting, unloadable,
)
from s2i.tiny_sd import is_tiny_model
from s2i.tiny_blip import TINY_BLIP_NAME, TINY_BLIP_WARNING, tiny_blip_dir

from s2i.images import ImagePolicy, model_image_batches, model_input_side

NO_IMAGE = 'no image to caption: send image (bytes) or image_uri'
Captioning = Tuple[PromptDoc, Image.Image]  # a document and its input image, decoded


class CaptionExecutor(Executor):
    """Any transformers image-to-text model that ``AutoModelForImageTextToText`` loads (BLIP by
    default; a hub id or a local folder), batched, in fp16 on CUDA."""

    def __init__(
        self,
        model: Optional[str] = None,
        device: Optional[str] = None,
        request_defaults: Optional[Dict[str, Any]] = None,
        batch_size: int = 16,
        load_at_start: bool = True,
        max_image_bytes: int = ImagePolicy.max_bytes,
        max_image_pixels: int = ImagePolicy.max_pixels,
        max_request_pixels: int = ImagePolicy.max_request_pixels,
        input_dir: Optional[str] = None,
        **kwargs,
    ):
        refuse_unknown_settings(type(self), kwargs)
        super().__init__(**kwargs)
        self.model_id = setting(model, 'S2I_CAPTION_MODEL', DEFAULT_MODEL)
        self.device = torch.device(resolve_device(setting(device, 'S2I_DEVICE', 'auto')))
        self.dtype = torch.float16 if self.device.type == 'cuda' else torch.float32
        self.defaults = CaptionParams.with_defaults(request_defaults)
        if batch_size < 1:
            raise ValueError(f'batch_size must be at least 1, got {batch_size}')
        self.batch_size = batch_size
        self.image_policy = ImagePolicy(max_image_bytes, max_image_pixels, input_dir, max_request_pixels)  # s2i/images.py
        self.model = self.processor = None  # set once the model is loaded
        self.lazy_model = LazyModel(self._load_model, 'captioning', self.logger)
        if load_at_start:
            self.model, self.processor = self.lazy_model.get()

    def _ready(self, docs: List[PromptDoc]) -> bool:
        """Whether the model is loaded (at the first request that needs it, with load_at_start: false)."""
        if not self.lazy_model.ready_for(docs):
            return False
        self.model, self.processor = self.lazy_model.get()
        return True

    def _load_model(self):
        try:
            from transformers import AutoModelForImageTextToText as AutoCaptionModel
        except ImportError:  # transformers before 4.46
            from transformers import AutoModelForVision2Seq as AutoCaptionModel
        from transformers import AutoProcessor

        path = tiny_blip_dir() if self.model_id == TINY_BLIP_NAME else self.model_id
        try:
            model = AutoCaptionModel.from_pretrained(path, dtype=self.dtype)
            processor = AutoProcessor.from_pretrained(path)
        except Exception as e:
            raise unloadable('captioning', self.model_id, 'S2I_CAPTION_MODEL',
                             'transformers image-to-text folder (BLIP, GIT, BLIP-2, ...)', e) from e
        warning = TINY_BLIP_WARNING if is_tiny_model(path) else None
        model = ready_on_device(model, self.model_id, self.device, self.dtype, warning, self.logger)
        return model, processor

    # --- endpoints ---

    @requests(on='/caption')
    def caption(self, docs: DocList[PromptDoc], parameters: Dict[str, Any], **kwargs) -> DocList[PromptDoc]:
        """Each image's caption in ``doc.caption``, replacing any the document came with."""
        params = request_parameters(docs, parameters, self.defaults)
        if params is None:
            return docs
        wanting = [doc for doc in docs if not doc.error]
        if wanting and self._ready(wanting):
            self._caption(wanting, params)
        return docs

    @requests(on='/interrogate')
    def caption_to_interrogate(self, docs: DocList[PromptDoc], parameters: Dict[str, Any], **kwargs) -> DocList[PromptDoc]:
        """``/caption`` for the documents that have no caption yet: the start of the CLIP executor's prompt."""
        params = request_parameters(docs, parameters, self.defaults)
        if params is None:
            return docs
        wanting = [doc for doc in docs if not doc.error and not doc.caption]
        if wanting and self._ready(wanting):
            self._caption(wanting, params)
        return docs

    @requests
    def pass_on(self, docs: DocList[PromptDoc], parameters: Dict[str, Any], **kwargs) -> DocList[PromptDoc]:
        """Every other endpoint (/generate, /restyle, /tag, ...) passes through unchanged: Jina's Flow
        check wants each executor to take the endpoints of the ones before it."""
        if not from_the_gateway(parameters):  # a caller around the gateway learns nothing, even here
            mark_failed(docs, UNAUTHENTICATED)
        return docs

    @requests(on=PARAMETERS_ENDPOINT)
    def describe_parameters(self, docs: DocList[ParameterSchema], parameters: Optional[Dict[str, Any]] = None,
                            **kwargs) -> DocList[ParameterSchema]:
        return describe_parameters(docs, self.metas.name, self.defaults, model=self.model_id, parameters=parameters)

    # --- steps ---

    def _caption(self, docs: List[PromptDoc], params: CaptionParams) -> None:
        """Captions ``docs``, their images decoded a batch at a time; those without one get an error."""
        for doc in docs:
            if not doc.has_image:
                doc.error = NO_IMAGE
        with_images = [doc for doc in docs if not doc.error]
        side = model_input_side(self.processor)
        for batch in model_image_batches(with_images, self.image_policy, self.batch_size, side, self.logger):
            self._caption_batch(batch, params)

    def _caption_batch(self, batch: List[Captioning], params: CaptionParams) -> None:
        """Caption ``batch`` in one ``generate`` call. A failed call is retried one document at a
        time, so that only the documents that fail alone get an error."""
        try:
            captions = self._generate([image for _, image in batch], params)
        except Exception as e:
            self.logger.error(f'captioning {len(batch)} image(s) failed', exc_info=True)
            error = f'captioning failed: {type(e).__name__}; {DETAILS_LOGGED}'
        else:
            for (doc, _), caption in zip(batch, captions):
                doc.caption = caption
            return
        self._release_memory()  # out of the except block, where the traceback no longer holds the call's tensors
        if len(batch) == 1:
            mark_failed([batch[0][0]], error)
            return
        self.logger.warning(f'retrying the {len(batch)} images one at a time')
        for captioning in batch:
            self._caption_batch([captioning], params)

    def _generate(self, images: List[Image.Image], params: CaptionParams) -> List[str]:
        """One caption per image, stripped; a conditional caption starts with the prefix as the model returns it."""
        prompts = {'text': [params.caption_prefix] * len(images)} if params.caption_prefix else {}
        inputs = self.processor(images=images, return_tensors='pt', **prompts).to(self.device, dtype=self.dtype)
        with torch.inference_mode():
            output = self.model.generate(
                **inputs, max_new_tokens=params.max_new_tokens, num_beams=params.num_beams, do_sample=False
            )
        return [caption.strip() for caption in self.processor.batch_decode(output, skip_special_tokens=True)]

    def _release_memory(self) -> None:
        gc.collect()  # the failed call's tensors, so the retry finds the memory free
        if self.device.type == 'cuda':
            torch.cuda.empty_cache()
