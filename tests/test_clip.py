"""ClipExecutor on a tiny random-weight CLIP model: tags, interrogation, ranking, caches and errors."""

import base64
import io
import struct
import zlib

import pytest
from docarray import DocList
from PIL import Image

from executors.clip.executor import ClipExecutor
from executors.clip.labels import interrogator_labels
from s2i.contracts.documents import GeneratedImage, ParameterSchema, PromptDoc
from s2i.tiny_clip import write_tiny_clip

from image_files import peak_growth_of_big_images

LABELS = ['a fox', 'a lighthouse', 'a bowl of soup', 'a mountain', 'a violin']
PER_LIST = 12  # the interrogator's lists, cut to their first labels: fast to embed


@pytest.fixture(scope='module')
def tiny_clip_dir(tmp_path_factory) -> str:
    return write_tiny_clip(str(tmp_path_factory.mktemp('tiny-clip')))


@pytest.fixture(scope='module')
def cache(tmp_path_factory):
    """S2I_CACHE for the module's executors: where the interrogator's embeddings are saved."""
    folder = tmp_path_factory.mktemp('s2i-cache')
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv('S2I_CACHE', str(folder))
        yield folder


@pytest.fixture(scope='module')
def clip(tiny_clip_dir, cache) -> ClipExecutor:
    return ClipExecutor(model=tiny_clip_dir, device='cpu', labels=['a cat', 'a dog'], max_labels_per_list=PER_LIST)


class TextModelCalls:
    """Counts calls of a CLIPModel's (or the class's) text tower while in the ``with`` block."""

    def __init__(self, monkeypatch, owner):
        self.count = 0
        original = owner.get_text_features

        def counting(*args, **kwargs):
            self.count += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, 'get_text_features', counting)


def png(color='red', size=(40, 30), mode='RGB') -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, 'PNG')
    return buffer.getvalue()


def image_doc(color='red', **fields) -> PromptDoc:
    return PromptDoc(image=png(color), **fields)


def tag(clip, *docs, **parameters) -> DocList[PromptDoc]:
    return clip.tag(DocList[PromptDoc](docs), parameters)


def scores(doc):
    assert doc.error == ''
    return [(t.label, t.score) for t in doc.tags]


def declared_size_png(width: int, height: int) -> bytes:
    """A small PNG whose header declares ``width`` x ``height`` pixels (a decompression bomb)."""
    def chunk(kind, data):
        return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))
    header = struct.pack('>IIBBBBB', width, height, 1, 0, 0, 0, 0)
    return b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header) + chunk(b'IDAT', zlib.compress(b'\0' * 1000)) + chunk(b'IEND', b'')


def test_single_mode_scores_are_shares_of_one_sorted_best_first(clip):
    (doc,) = tag(clip, image_doc(), labels=LABELS, top_k=len(LABELS))
    found = scores(doc)
    assert sorted(label for label, _ in found) == sorted(LABELS)
    assert sum(score for _, score in found) == pytest.approx(1.0, abs=1e-5)
    assert [score for _, score in found] == sorted((score for _, score in found), reverse=True)


def test_top_k_keeps_the_best_labels(clip):
    (every,) = tag(clip, image_doc(), labels=LABELS, top_k=len(LABELS))
    (best,) = tag(clip, image_doc(), labels=LABELS, top_k=2)
    assert scores(best) == scores(every)[:2]


def test_multi_mode_keeps_exactly_the_labels_above_the_threshold(clip):
    (every,) = tag(clip, image_doc('blue'), labels=LABELS, tag_mode='multi', threshold=0, top_k=len(LABELS))
    all_scores = scores(every)
    assert len(all_scores) == len(LABELS) and all(0 < score < 1 for _, score in all_scores)
    threshold = sorted(score for _, score in all_scores)[2]  # the third lowest: two labels below or at it
    (above,) = tag(clip, image_doc('blue'), labels=LABELS, tag_mode='multi', threshold=threshold, top_k=len(LABELS))
    assert scores(above) == [(label, score) for label, score in all_scores if score > threshold]
    assert len(scores(above)) == len(LABELS) - 3


def test_the_same_image_gets_the_same_scores_from_a_fresh_executor(clip, tiny_clip_dir):
    (first,) = tag(clip, image_doc('green'), labels=LABELS)
    again = ClipExecutor(model=tiny_clip_dir, device='cpu', interrogator_at_startup=False)
    (second,) = tag(again, image_doc('green'), labels=LABELS)
    assert [label for label, _ in scores(first)] == [label for label, _ in scores(second)]
    assert [s for _, s in scores(first)] == pytest.approx([s for _, s in scores(second)], abs=1e-6)


def test_a_second_request_with_the_same_labels_embeds_no_label(clip, monkeypatch):
    labels = ['a red kite', 'a green kite', 'a blue kite']  # no other test asks for these
    calls = TextModelCalls(monkeypatch, clip.model)
    tag(clip, image_doc(), labels=labels)
    assert calls.count == 1
    tag(clip, image_doc('blue'), image_doc('green'), labels=labels, tag_mode='multi')
    assert calls.count == 1
    tag(clip, image_doc(), labels=labels[:2])  # another list: embedded
    assert calls.count == 2


def test_the_configured_labels_serve_requests_that_give_none(clip):
    (doc,) = tag(clip, image_doc())
    assert sorted(label for label, _ in scores(doc)) == ['a cat', 'a dog']


def test_without_labels_anywhere_every_document_gets_an_error(tiny_clip_dir):
    bare = ClipExecutor(model=tiny_clip_dir, device='cpu', interrogator_at_startup=False)
    docs = tag(bare, image_doc(), image_doc())
    assert all('no labels' in doc.error for doc in docs)
    assert {(doc.error_code, doc.error_param) for doc in docs} == {('invalid_parameter', 'labels')}


@pytest.mark.parametrize('parameters, named', [
    ({'tag_mode': 'all'}, 'tag_mode'),
    ({'threshold': 1.5}, 'threshold'),
    ({'top_k': 0}, 'top_k'),
    ({'labels': []}, 'labels'),
    ({'labels': ['a fox', 'a fox']}, 'labels'),
    ({'labels': ['a fox', '  ']}, 'labels'),
    ({'labels': 'a fox'}, 'labels'),
    ({'labels': ['x' * 201]}, 'max_label_chars'),
    ({'interrogate_mode': 'best'}, 'interrogate_mode'),
    ({'num_images': 0}, 'num_images'),
])
def test_invalid_parameters_fail_every_document_naming_the_key(clip, parameters, named):
    docs = tag(clip, image_doc(), image_doc(), **parameters)
    for doc in docs:
        assert doc.error.startswith('invalid parameters:') and named in doc.error
        assert len(doc.tags) == 0


BAD_IMAGES = {
    'empty': PromptDoc(image=b''),
    'not an image': PromptDoc(image=b'this is not an image'),
    'truncated': PromptDoc(image=png(size=(64, 64))[:60]),
    'bomb': PromptDoc(image=declared_size_png(50_000, 50_000)),
    'no image': PromptDoc(text='only text'),
    'bad data uri': PromptDoc(image_uri='data:image/png;base64,!!!'),
}


@pytest.mark.parametrize('name', BAD_IMAGES)
def test_a_bad_image_is_an_error_of_its_own_document_only(clip, name):
    bad = BAD_IMAGES[name].model_copy(deep=True)
    for endpoint in (clip.tag, clip.interrogate):
        docs = endpoint(DocList[PromptDoc]([image_doc(), bad.model_copy(deep=True), image_doc('blue')]), {})
        assert docs[1].error, f'{name} through {endpoint.__name__}'
        assert not docs[0].error and not docs[2].error
        assert (len(docs[0].tags) > 0) if endpoint == clip.tag else docs[0].interrogated


def test_converted_images_are_tagged(clip):
    rgba = PromptDoc(image=png((255, 0, 0, 0), mode='RGBA'))
    grey16 = PromptDoc(image=png(40000, mode='I;16'))
    data_uri = PromptDoc(image_uri='data:image/png;base64,' + base64.b64encode(png('blue')).decode())
    for doc in tag(clip, rgba, grey16, data_uri):
        assert doc.error == '' and len(doc.tags) == 2


def test_documents_that_already_failed_are_left_alone(clip):
    (doc,) = tag(clip, image_doc(error='failed earlier'))
    assert doc.error == 'failed earlier' and len(doc.tags) == 0


def interrogate(clip, *docs, **parameters) -> DocList[PromptDoc]:
    return clip.interrogate(DocList[PromptDoc](docs), parameters)


def test_classic_interrogation_is_the_caption_then_a_medium_and_artist_from_the_lists(clip):
    lists = interrogator_labels(PER_LIST)
    captioned, bare = interrogate(clip, image_doc(caption='a red square'), image_doc())
    assert captioned.error == '' and bare.error == ''
    assert captioned.interrogated.startswith('a red square, ')
    start = bare.interrogated.split(', ')[0]  # no caption: the prompt starts with "<medium> <artist>"
    assert any(start == f'{medium} {artist}' for medium in lists['mediums'] for artist in lists['artists'])


def test_fast_interrogation_adds_labels_of_the_lists_after_the_caption(clip):
    every_label = {label for labels in interrogator_labels(PER_LIST).values() for label in labels}
    (doc,) = interrogate(clip, image_doc(caption='a red square'), interrogate_mode='fast')
    caption, *added = doc.interrogated.split(', ')
    assert caption == 'a red square' and added
    assert set(added) <= every_label


def test_interrogation_is_deterministic(clip):
    first, second = (interrogate(clip, image_doc('purple'), interrogate_mode=mode)[0].interrogated
                     for mode in ('classic', 'classic'))
    assert first == second


def test_the_interrogator_embeddings_are_saved_once_and_loaded_on_the_next_start(tiny_clip_dir, tmp_path, monkeypatch):
    from transformers import CLIPModel

    monkeypatch.setenv('S2I_CACHE', str(tmp_path))
    first = ClipExecutor(model=tiny_clip_dir, device='cpu', max_labels_per_list=PER_LIST)
    saved = sorted(tmp_path.glob('clip/*/*.pt'))
    assert [path.stem for path in saved] == sorted(['mediums', 'artists', 'trendings', 'movements', 'flavors'])
    written = [path.stat().st_mtime_ns for path in saved]

    calls = TextModelCalls(monkeypatch, CLIPModel)
    second = ClipExecutor(model=tiny_clip_dir, device='cpu', max_labels_per_list=PER_LIST)
    assert calls.count == 0
    assert [path.stat().st_mtime_ns for path in saved] == written
    assert interrogate(second, image_doc())[0].interrogated == interrogate(first, image_doc())[0].interrogated


def test_another_slice_of_the_lists_is_embedded_again(tiny_clip_dir, tmp_path, monkeypatch):
    monkeypatch.setenv('S2I_CACHE', str(tmp_path))
    ClipExecutor(model=tiny_clip_dir, device='cpu', max_labels_per_list=4)
    from transformers import CLIPModel

    calls = TextModelCalls(monkeypatch, CLIPModel)
    ClipExecutor(model=tiny_clip_dir, device='cpu', max_labels_per_list=5)
    assert calls.count == 5  # one call per list: the saved ones were made for other labels


def candidates(*colors, text='a red fox') -> PromptDoc:
    return PromptDoc(text=text, matches=DocList[GeneratedImage]([GeneratedImage(png=png(c), seed=i) for i, c in enumerate(colors)]))


def rank(clip, *docs, **parameters) -> DocList[PromptDoc]:
    return clip.rank(DocList[PromptDoc](docs), parameters)


def test_rank_scores_every_image_sorts_best_first_and_keeps_num_images(clip):
    colors = ('red', 'green', 'blue', 'white')
    (every,) = rank(clip, candidates(*colors), num_images=4)
    ranked = [(image.seed, image.clip_score) for image in every.matches]
    assert len(ranked) == 4 and all(-1 <= score <= 1 for _, score in ranked)
    assert [score for _, score in ranked] == sorted((score for _, score in ranked), reverse=True)
    (kept,) = rank(clip, candidates(*colors), num_images=2)
    assert [image.seed for image in kept.matches] == [seed for seed, _ in ranked[:2]]
    assert [image.clip_score for image in kept.matches] == pytest.approx([score for _, score in ranked[:2]], abs=1e-6)


def test_rank_keeps_one_image_by_default_as_stable_diffusion_draws_one(clip):
    (doc,) = rank(clip, candidates('red', 'green', 'blue'))
    assert len(doc.matches) == 1 and doc.matches[0].clip_score is not None


def test_rank_errors_are_per_document(clip):
    broken = candidates('red', 'green')
    broken.matches[1].png = b'not a png'
    docs = rank(clip, candidates('red', text=''), PromptDoc(text='no images'), broken, candidates('red', 'blue'), num_images=2)
    assert 'no text prompt' in docs[0].error
    assert 'no images' in docs[1].error
    assert 'image 1' in docs[2].error
    assert [doc.error_code for doc in docs[:3]] == ['missing_input', 'missing_input', 'image_unreadable']
    assert docs[3].error == '' and len(docs[3].matches) == 2


def test_the_parameters_endpoint_lists_this_executors_keys_and_model(clip, tiny_clip_dir):
    (described,) = clip.describe_parameters(DocList[ParameterSchema]())
    assert set(described.keys) == {'labels', 'tag_mode', 'threshold', 'top_k', 'interrogate_mode', 'flavors', 'num_images'}
    assert described.model == tiny_clip_dir


def test_an_unknown_setting_stops_the_start(tiny_clip_dir):
    with pytest.raises(TypeError, match='top_k'):
        ClipExecutor(model=tiny_clip_dir, device='cpu', top_k=3)


@pytest.mark.slow
def test_a_served_executor_tags_interrogates_and_ranks_over_grpc(tiny_clip_dir, cache):
    from jina import Deployment

    from conftest import free_port

    settings = {'model': tiny_clip_dir, 'device': 'cpu', 'max_labels_per_list': PER_LIST}
    with Deployment(uses=ClipExecutor, uses_with=settings, port=free_port(), include_gateway=False) as served:
        docs = DocList[PromptDoc]([image_doc(caption='a red square'), PromptDoc(image=b'junk')])
        tagged = served.post('/tag', inputs=docs, parameters={'labels': LABELS, 'top_k': 2}, return_type=DocList[PromptDoc])
        interrogated = served.post('/interrogate', inputs=docs, return_type=DocList[PromptDoc])
        ranked = served.post('/rank', inputs=DocList[PromptDoc]([candidates('red', 'blue')]), parameters={'num_images': 1},
                             return_type=DocList[PromptDoc])
    assert [len(doc.tags) for doc in tagged] == [2, 0] and tagged[1].error
    assert interrogated[0].interrogated.startswith('a red square') and interrogated[1].error
    assert len(ranked[0].matches) == 1 and ranked[0].matches[0].clip_score is not None


def test_a_missing_clip_model_loaded_lazily_fails_only_the_documents_that_need_it(tmp_path):
    from executors.clip.executor import ClipExecutor

    lazy = ClipExecutor(model=str(tmp_path / 'no-such-model'), device='cpu', load_at_start=False)
    docs = DocList[PromptDoc]([PromptDoc(image=b'not read: the model is missing')])
    lazy.tag(docs, {'labels': ['a dog', 'a cat']})
    assert docs[0].error.startswith('the CLIP model could not be loaded: ') and not docs[0].tags
    assert lazy.keep_best_of(DocList[PromptDoc]([PromptDoc(text='x')]), {})[0].error == ''  # no best_of: nothing to load


@pytest.mark.slow  # 24 big images decoded: about 8 s
def test_a_request_of_big_images_is_decoded_a_batch_at_a_time_and_shrunk(tiny_clip_dir):
    # Eight 6000 x 6000 single-colour PNGs (120 kB each, 108 MB each once decoded), in batches of two.
    # Measured: 1.5 GB when all were decoded before the first batch (issue 21), 138 MB now.
    settings = {'model': tiny_clip_dir, 'device': 'cpu', 'batch_size': 2, 'labels': ['a cat', 'a dog'],
                'interrogator_at_startup': False}
    grown_mb, errors = peak_growth_of_big_images(ClipExecutor, 'tag', settings, {}, count=8)
    assert errors == [''] * 8
    assert grown_mb < 400


def test_an_image_past_max_request_pixels_gets_the_documented_error_and_the_others_their_tags(tiny_clip_dir):
    frugal = ClipExecutor(model=tiny_clip_dir, device='cpu', labels=LABELS, interrogator_at_startup=False,
                          max_request_pixels=2500)
    docs = tag(frugal, image_doc('red'), image_doc('blue'), image_doc('green'))  # 40 x 30 = 1200 pixels each
    assert [len(doc.tags) for doc in docs] == [5, 5, 0]
    assert docs[2].error == (
        'too many image pixels in one request: this image decodes to 40 x 30 pixels, 2400 were decoded before it, '
        'the limit is 2500 pixels per request (max_request_pixels); send it in another request'
    )


def test_an_image_too_elongated_for_clip_gets_the_documented_error_and_the_others_their_tags(clip):
    # CLIP's processor raises the short side to its input size: 200,000 x 2 pixels (a PNG of a few kB)
    # grew the tiny model's process by 983 MB, and would be 22 M x 224 pixels for ViT-L/14
    docs = tag(clip, image_doc(), PromptDoc(image=png('red', (200_000, 2))), image_doc('blue'))
    assert [len(doc.tags) for doc in docs] == [2, 0, 2]
    assert docs[1].error == 'image too elongated: 200000 x 2 pixels, its long side may be at most 20 times its short side; crop it'
    assert (docs[1].error_code, docs[1].error_param) == ('image_unreadable', 'image')
