"""CaptionExecutor: what an image shows, in words (``doc.caption``), from an image-to-text model.

``/caption`` captions every document's image. ``/interrogate`` captions the images that have no
caption yet, so that this executor can sit before the CLIP executor, whose ``/interrogate`` starts
its prompt with the caption.

Documents that already carry an ``error`` pass through untouched. A document whose image cannot
be used gets an error of its own; the other documents of the request still get their captions.
Images are decoded a batch at a time, shrunk to the model's input size (s2i/images.py).
"""

from typing import Any, Dict, List, Tuple

import torch
from docarray import DocList
from jina import requests
from PIL import Image

from executors.caption.settings import CaptionSettings
from s2i.contracts.caption import CaptionParams
from s2i.contracts.documents import PromptDoc, fail
from s2i.contracts.errors import ErrorCode
from s2i.executor_base import ModelExecutor, fail_all
from s2i.images import ImagePolicy, model_image_batches, model_input_side
from s2i.runtime import ready_on_device, unloadable
from s2i.tiny_blip import TINY_BLIP_NAME, TINY_BLIP_WARNING, tiny_blip_dir
from s2i.tiny_sd import is_tiny_model

NO_IMAGE = 'no image to caption: send image (bytes) or image_uri'
Captioning = Tuple[PromptDoc, Image.Image]  # a document and its input image, decoded


class CaptionExecutor(ModelExecutor):
    """Any transformers image-to-text model that ``AutoModelForImageTextToText`` loads (BLIP by
    default; a hub id or a local folder), batched, in fp16 on CUDA."""

    settings_class = CaptionSettings
    params_class = CaptionParams
    model_kind = 'captioning'
    passes_on = True  # /generate, /restyle, /tag, ...

    def __init__(self, **settings):
        super().__init__(**settings)
        self.image_policy = ImagePolicy.of(self.settings)  # s2i/images.py
        self.model = self.processor = None  # set once the model is loaded
        self.load_now_or_at_first_use()

    def load_model(self):
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

    def use_model(self, loaded) -> None:
        self.model, self.processor = loaded

    # --- endpoints ---

    @requests(on='/caption')
    def caption(self, docs: DocList[PromptDoc], parameters: Dict[str, Any], **kwargs) -> DocList[PromptDoc]:
        """Each image's caption in ``doc.caption``, replacing any the document came with."""
        params = self.request_params(docs, parameters)
        if params is None:
            return docs
        wanting = [doc for doc in docs if not doc.error]
        if wanting and self.model_ready(wanting):
            self._caption(wanting, params)
        return docs

    @requests(on='/interrogate')
    def caption_to_interrogate(self, docs: DocList[PromptDoc], parameters: Dict[str, Any], **kwargs) -> DocList[PromptDoc]:
        """``/caption`` for the documents that have no caption yet: the start of the CLIP executor's prompt."""
        params = self.request_params(docs, parameters)
        if params is None:
            return docs
        wanting = [doc for doc in docs if not doc.error and not doc.caption]
        if wanting and self.model_ready(wanting):
            self._caption(wanting, params)
        return docs

    # --- steps ---

    def _caption(self, docs: List[PromptDoc], params: CaptionParams) -> None:
        """Captions ``docs``, their images decoded a batch at a time; those without one get an error."""
        for doc in docs:
            if not doc.has_image:
                fail(doc, NO_IMAGE, ErrorCode.MISSING_INPUT, 'image')
        with_images = [doc for doc in docs if not doc.error]
        side = model_input_side(self.processor)
        for batch in model_image_batches(with_images, self.image_policy, self.settings.batch_size, side, self.logger):
            self._caption_batch(batch, params)

    def _caption_batch(self, batch: List[Captioning], params: CaptionParams) -> None:
        """Caption ``batch`` in one ``generate`` call. A failed call is retried one document at a
        time, so that only the documents that fail alone get an error."""
        try:
            captions = self._generate([image for _, image in batch], params)
        except Exception as e:
            failure = self.failure(f'captioning {len(batch)} image(s)', e, 'captioning')
        else:
            for (doc, _), caption in zip(batch, captions):
                doc.caption = caption
            return
        self.release_memory()
        if len(batch) == 1:
            fail_all([batch[0][0]], failure)
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
