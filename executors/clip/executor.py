"""ClipExecutor: CLIP on images. Zero-shot tags (``/tag``), a prompt from an image (``/interrogate``,
the CLIP Interrogator's recipe) and the ranking of generated images against their prompt (``/rank``).

Documents that already carry an ``error`` pass through untouched. A document whose image cannot
be used gets an error of its own; the other documents of the request still get their results.
Input images are decoded a batch at a time, shrunk to the model's input size (s2i/images.py).
"""

import io
from typing import Any, Dict, List, Optional, Tuple

import torch
from docarray import DocList
from jina import requests
from PIL import Image

from executors.clip.labels import INTERROGATOR_LISTS, LabelCache, LabelTable, cached_table, interrogator_labels, model_key
from executors.clip.settings import ClipSettings
from s2i.contracts.clip import ClipParams
from s2i.contracts.documents import PromptDoc, Tag, mark_failed
from s2i.contracts.errors import CodedError, ErrorCode
from s2i.executor_base import ModelExecutor, fail_all
from s2i.images import ImagePolicy, model_image_batches, model_input_side
from s2i.runtime import ready_on_device, unloadable
from s2i.tiny_clip import TINY_CLIP_NAME, TINY_CLIP_WARNING, tiny_clip_dir
from s2i.tiny_sd import is_tiny_model

TINY_LIST_LABELS = 12  # the tiny model interrogates with the first labels of each list only


class ClipExecutor(ModelExecutor):
    """Any transformers CLIP model (a hub id or a local folder) on images."""

    settings_class = ClipSettings
    params_class = ClipParams
    model_kind = 'CLIP'
    passes_on = True  # /caption, /generate_stream, ...

    def __init__(self, **settings):
        super().__init__(**settings)
        self.labels = ClipParams(labels=self.settings.labels).labels if self.settings.labels else None  # a request's checks
        self.defaults.check_limits(self.settings.max_labels, self.settings.max_label_chars)
        self.max_labels_per_list = self.settings.max_labels_per_list
        if self.max_labels_per_list is None and self.model_id == TINY_CLIP_NAME:
            self.max_labels_per_list = TINY_LIST_LABELS  # a wiring check: 100,000 flavours would only make noise slower
        self.image_policy = ImagePolicy.of(self.settings)  # s2i/images.py
        self.model = self.processor = self.model_path = None  # set once the model is loaded
        self.label_cache = LabelCache(self.settings.label_cache_size)
        self.tables: Optional[Dict[str, LabelTable]] = None  # the interrogator's lists, loaded on first use
        self.merged_table: Optional[LabelTable] = None  # all of them in one, for fast mode
        self.load_now_or_at_first_use()
        if self.settings.load_at_start and self.settings.interrogator_at_startup:
            self._interrogator_tables()

    def load_model(self):
        from transformers import CLIPModel, CLIPProcessor

        path = tiny_clip_dir() if self.model_id == TINY_CLIP_NAME else self.model_id
        try:
            model = CLIPModel.from_pretrained(path, dtype=self.dtype)
            processor = CLIPProcessor.from_pretrained(path)
        except Exception as e:
            raise unloadable('CLIP', self.model_id, 'S2I_CLIP_MODEL', 'transformers CLIP folder', e) from e
        warning = TINY_CLIP_WARNING if is_tiny_model(path) else None
        model = ready_on_device(model, self.model_id, self.device, self.dtype, warning, self.logger)
        return model, processor, path

    def use_model(self, loaded) -> None:
        self.model, self.processor, self.model_path = loaded

    # --- endpoints ---

    @requests(on='/tag')
    def tag(self, docs: DocList[PromptDoc], parameters: Dict[str, Any], **kwargs) -> DocList[PromptDoc]:
        """Each image's ``top_k`` best labels in ``doc.tags``, best first: softmax shares of the labels
        (``single``), or each label's own sigmoid score, above ``threshold`` (``multi``)."""
        params = self.request_params(docs, parameters, check=self._check_limits)
        if params is None or not self.model_ready(docs):
            return docs
        labels = params.labels or self.labels
        if not labels:
            mark_failed(docs, 'invalid parameters: no labels: give labels in the request (or configure the labels setting)',
                        ErrorCode.INVALID_PARAMETER, 'labels')
            return docs
        docs_with_images, features = self._image_features(docs)
        if not docs_with_images:
            return docs
        with torch.inference_mode():
            label_features = self.label_embeddings(labels)
            logits = self.model.logit_scale.exp().float() * (features.float() @ label_features.float().T)
            if params.tag_mode == 'single':
                scores = logits.softmax(dim=-1)
            else:
                scores = (logits - self.model.logit_scale.exp().float() * self.settings.multi_label_offset).sigmoid()
        for doc, row in zip(docs_with_images, scores.tolist()):
            ranked = sorted(zip(labels, row), key=lambda pair: pair[1], reverse=True)
            if params.tag_mode == 'multi':
                ranked = [(label, score) for label, score in ranked if score > params.threshold]
            doc.tags = DocList[Tag]([Tag(label=label, score=score) for label, score in ranked[: params.top_k]])
        return docs

    @requests(on='/interrogate')
    def interrogate(self, docs: DocList[PromptDoc], parameters: Dict[str, Any], **kwargs) -> DocList[PromptDoc]:
        """A prompt for each image in ``doc.interrogated``: its ``caption`` (set by a caption executor
        earlier in the Flow; without one the prompt has no caption) and the labels of the CLIP
        Interrogator's lists that CLIP ranks highest for the image."""
        params = self.request_params(docs, parameters, check=self._check_limits)
        if params is None or not self.model_ready(docs):
            return docs
        docs_with_images, features = self._image_features(docs)
        if not docs_with_images:
            return docs
        try:
            tables = self._interrogator_tables()  # at the first request, unless loaded at start-up
        except Exception as e:
            fail_all(docs_with_images, self.failure("loading the interrogator's label embeddings", e, 'interrogation'))
            return docs
        flavors = params.flavor_count()
        with torch.inference_mode():
            if params.interrogate_mode == 'fast':
                tops = self.merged_table.top(features, flavors)
                prompts = [[doc.caption, *top] for doc, top in zip(docs_with_images, tops)]
            else:
                best = {name: tables[name].top(features, 1) for name in ('mediums', 'artists', 'trendings', 'movements')}
                flavor_tops = tables['flavors'].top(features, flavors)
                prompts = [
                    [classic_start(doc.caption, best['mediums'][i][0], best['artists'][i][0]),
                     best['trendings'][i][0], best['movements'][i][0], *flavor_tops[i]]
                    for i, doc in enumerate(docs_with_images)
                ]
        for doc, parts in zip(docs_with_images, prompts):
            doc.interrogated = self._fit_to_text_encoder([part for part in parts if part])
        return docs

    @requests(on=['/generate', '/text2image', '/restyle'])
    def keep_best_of(self, docs: DocList[PromptDoc], parameters: Dict[str, Any], **kwargs) -> DocList[PromptDoc]:
        """In the Flow, after Stable Diffusion: with ``best_of``, it drew that many candidates per
        document, and this keeps the ``num_images`` best (``/rank``); without, nothing changes."""
        if parameters.get('best_of') is None:
            return self.pass_on(docs, parameters)
        return self.rank(docs, parameters)

    @requests(on='/rank')
    def rank(self, docs: DocList[PromptDoc], parameters: Dict[str, Any], **kwargs) -> DocList[PromptDoc]:
        """Each document's images (``matches``) scored against its English ``text`` (``clip_score``:
        the cosine similarity of their CLIP embeddings), best first, and the ``num_images`` best kept.

        After Stable Diffusion with ``best_of``: it draws the candidates, this keeps the best."""
        params = self.request_params(docs, parameters, check=self._check_limits)
        if params is None or not self.model_ready(docs):
            return docs
        images: List[Tuple[PromptDoc, int, Image.Image]] = []  # (document, index among its matches, pixels)
        ranking = []
        for doc in docs:
            if doc.error:
                continue
            with self.own_failure(doc, 'reading the images'):
                images += [(doc, i, image) for i, image in enumerate(self._match_images(doc))]
                ranking.append(doc)
        if not ranking:
            return docs
        try:
            with torch.inference_mode():
                image_features = self._embed_images([image for _, _, image in images])
                text_features = self.embed_texts([doc.text for doc in ranking])
        except Exception as e:
            fail_all(ranking, self.failure(f'ranking {len(images)} image(s)', e, 'ranking'))
            return docs
        row_of = {id(doc): row for row, doc in enumerate(ranking)}
        for (doc, i, _), features in zip(images, image_features):
            doc.matches[i].clip_score = float(features.float() @ text_features[row_of[id(doc)]].float())
        for doc in ranking:
            best_first = sorted(doc.matches, key=lambda match: match.clip_score, reverse=True)
            doc.matches = type(doc.matches)(best_first[: params.num_images])
        return docs

    # --- embeddings ---

    def label_embeddings(self, labels: List[str]) -> torch.Tensor:
        """The unit-length text embeddings of ``labels`` put into words by ``label_template``,
        from the in-memory cache when this list was embedded before."""
        return self.label_cache.get(tuple(labels), self.settings.label_template, self.embed_texts)

    def embed_texts(self, texts: List[str]) -> torch.Tensor:
        """Unit-length CLIP text embeddings, one row per text; texts beyond 77 tokens are cut."""
        rows = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.settings.text_batch_size):
                tokens = self.processor.tokenizer(
                    texts[start : start + self.settings.text_batch_size], padding=True, truncation=True, return_tensors='pt'
                ).to(self.device)
                rows.append(_features(self.model.get_text_features(**tokens)))
        return _unit_length(torch.cat(rows))

    def _embed_images(self, images: List[Image.Image]) -> torch.Tensor:
        rows = []
        batch_size = self.settings.batch_size
        for start in range(0, len(images), batch_size):
            pixels = self.processor.image_processor(images[start : start + batch_size], return_tensors='pt')
            pixel_values = pixels['pixel_values'].to(self.device, self.dtype)
            rows.append(_features(self.model.get_image_features(pixel_values=pixel_values)))
        return _unit_length(torch.cat(rows))

    def _image_features(self, docs: DocList[PromptDoc]) -> Tuple[List[PromptDoc], Optional[torch.Tensor]]:
        """The documents whose input image could be read and embedded, and its embedding for each; the
        others get an error. The images are decoded a batch at a time, each batch dropped once embedded."""
        readable, rows = [], []
        side = model_input_side(self.processor)
        wanting = [doc for doc in docs if not doc.error]
        for batch in model_image_batches(wanting, self.image_policy, self.settings.batch_size, side, self.logger):
            batch_docs = [doc for doc, _ in batch]
            try:
                with torch.inference_mode():
                    rows.append(self._embed_images([image for _, image in batch]))
                readable += batch_docs
            except Exception as e:
                fail_all(batch_docs, self.failure(f'embedding {len(batch)} image(s)', e, 'embedding the image'))
        if not readable:
            return [], None
        return readable, torch.cat(rows)

    def _interrogator_tables(self) -> Dict[str, LabelTable]:
        if self.tables is None:
            key = model_key(self.model_id, self.model_path)
            lists = interrogator_labels(self.max_labels_per_list)
            self.tables = {}
            for name in INTERROGATOR_LISTS:
                table, _ = cached_table(name, lists[name], self.model_id, key, self.embed_texts, self.logger)
                self.tables[name] = LabelTable(table.labels, table.embeddings.to(self.device, self.dtype))
            self.merged_table = LabelTable.merged([self.tables[name] for name in INTERROGATOR_LISTS])
        return self.tables

    # --- per-document steps ---

    def _check_limits(self, params: ClipParams) -> None:
        params.check_limits(self.settings.max_labels, self.settings.max_label_chars)

    def _match_images(self, doc: PromptDoc) -> List[Image.Image]:
        """The pixels of ``doc``'s images; a CodedError if there are none to rank."""
        if not doc.text.strip():
            raise CodedError('nothing to rank against: the document has no text prompt', ErrorCode.MISSING_INPUT, 'prompt')
        if not doc.matches:
            raise CodedError('nothing to rank: the document has no images (matches)', ErrorCode.MISSING_INPUT)
        images = []
        for i, match in enumerate(doc.matches):
            if not match.png:
                raise CodedError(f'image {i} has no PNG bytes to rank', ErrorCode.MISSING_INPUT)
            try:
                image = Image.open(io.BytesIO(match.png))
                image.load()
            except Exception as e:
                raise CodedError(f'image {i} is not a readable image: {type(e).__name__}', ErrorCode.IMAGE_UNREADABLE) from None
            images.append(image.convert('RGB'))
        return images

    def _fit_to_text_encoder(self, parts: List[str]) -> str:
        """``parts`` joined with ", ", leaving out the trailing ones that would not fit CLIP's 77 tokens."""
        limit = self.processor.tokenizer.model_max_length
        prompt = parts[0] if parts else ''
        for part in parts[1:]:
            longer = f'{prompt}, {part}' if prompt else part
            if len(self.processor.tokenizer(longer, truncation=True, max_length=limit + 1)['input_ids']) > limit:
                break
            prompt = longer
        return prompt


def classic_start(caption: str, medium: str, artist: str) -> str:
    """The start of a classic prompt, as the CLIP Interrogator writes it: "<caption>, <medium> <artist>",
    or "<caption> <artist>" when the caption already starts with the medium."""
    if caption and caption.startswith(medium):
        return f'{caption} {artist}'
    return ', '.join(filter(None, (caption, f'{medium} {artist}')))


def _features(output) -> torch.Tensor:
    """The projected embedding: transformers 5 returns it as the output's ``pooler_output``, 4.x as a tensor."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def _unit_length(features: torch.Tensor) -> torch.Tensor:
    return features / features.norm(dim=-1, keepdim=True)
