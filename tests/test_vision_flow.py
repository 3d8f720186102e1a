"""Images in, through the real service (tests/front_door.py: tiny SD, tiny BLIP, tiny CLIP, the bundled
Whisper): caption, tag, interrogate and restyle (typed or spoken), and CLIP keeping the best of
``best_of`` candidates; over gRPC and HTTP, and through the client's subcommands.

The tiny models make noise: these tests check the wiring (which executor answers, shapes, order,
errors), not what the words say."""

import io
import json

import pytest
from docarray import DocList
from PIL import Image

from conftest import GERMAN_CLIP
from front_door import TOKEN
from s2i.cli import main
from s2i.client import generate
from s2i.contracts.documents import PromptDoc
from s2i.contracts.errors import ERRORS, ErrorCode
from s2i.encoding import read_png_parameters


def png(size=(96, 64), color=(200, 40, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new('RGB', size, color).save(buffer, format='PNG')
    return buffer.getvalue()


def ask(front_door, protocol: str, endpoint: str, *docs: PromptDoc, **parameters) -> DocList[PromptDoc]:
    return generate(docs=DocList[PromptDoc](docs), parameters=parameters, host=getattr(front_door, protocol),
                    token=TOKEN, endpoint=endpoint)


@pytest.mark.parametrize('protocol', ['grpc', 'http'])
def test_an_image_is_captioned_tagged_and_interrogated(front_door, protocol):
    [captioned] = ask(front_door, protocol, '/caption', PromptDoc(image=png()))
    assert captioned.error == '' and captioned.caption and not captioned.matches

    labels = ['a red square', 'a blue circle', 'a green tree']
    [tagged] = ask(front_door, protocol, '/tag', PromptDoc(image=png()), labels=labels, top_k=3)
    scores = [tag.score for tag in tagged.tags]
    assert sorted(tag.label for tag in tagged.tags) == sorted(labels)
    assert scores == sorted(scores, reverse=True) and sum(scores) == pytest.approx(1, abs=1e-4)

    [asked] = ask(front_door, protocol, '/interrogate', PromptDoc(image=png()), interrogate_mode='fast')
    assert asked.caption and asked.interrogated.startswith(asked.caption)  # the caption executor ran first


def test_a_bad_image_gets_its_error_and_the_good_one_its_answer(front_door):
    bad, good = ask(front_door, 'grpc', '/caption', PromptDoc(image=b'not an image'), PromptDoc(image=png()))
    assert bad.error.startswith('not an image this service reads') and not bad.caption
    assert good.error == '' and good.caption


@pytest.mark.parametrize('protocol', ['grpc', 'http'])
def test_a_typed_style_restyles_the_image_at_its_own_size(front_door, protocol):
    [doc] = ask(front_door, protocol, '/restyle', PromptDoc(image=png((96, 64)), text='as an oil painting'),
                num_images=2, steps=4, strength=0.5, seed=3)
    assert doc.error == '' and len(doc.matches) == 2
    for image, seed in zip(doc.matches, (3, 4)):
        recorded = read_png_parameters(image.png)
        assert Image.open(io.BytesIO(image.png)).size == (96, 64)
        assert recorded['mode'] == 'restyle' and recorded['strength'] == 0.5 and recorded['seed'] == seed
        assert image.url  # the store kept it


def test_a_spoken_style_restyles_with_the_english_of_what_was_said(front_door):
    [doc] = ask(front_door, 'grpc', '/restyle', PromptDoc(image=png(), blob=GERMAN_CLIP.read_bytes()), steps=4, strength=0.5)
    assert doc.error == '' and doc.language == 'de' and 'snow' in doc.text.lower()
    assert read_png_parameters(doc.matches[0].png)['prompt'] == doc.text


def test_best_of_draws_candidates_and_clip_keeps_the_best_first(front_door):
    [doc] = ask(front_door, 'grpc', '/text2image', PromptDoc(text='a lighthouse'), num_images=2, best_of=4,
                steps=2, width=64, height=64, seed=10)
    scores = [image.clip_score for image in doc.matches]
    assert len(doc.matches) == 2 and None not in scores and scores == sorted(scores, reverse=True)
    assert {image.seed for image in doc.matches} <= {10, 11, 12, 13}
    assert read_png_parameters(doc.matches[0].png)['best_of'] == 4


def test_the_client_subcommands_print_one_json_object_per_image(front_door, tmp_path, capsys):
    image = tmp_path / 'square.png'
    image.write_bytes(png())
    (tmp_path / 'broken.png').write_bytes(b'broken')
    common = ['--host', front_door.grpc, '--token', TOKEN, '--json']

    assert main(['tag', str(image), '--labels', 'a red square,a blue circle', *common]) == 0
    [tagged] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert tagged['input'] == str(image) and tagged['error'] == '' and len(tagged['tags']) == 2

    assert main(['restyle', str(image), str(tmp_path / 'broken.png'), '--style-audio', str(GERMAN_CLIP),
                 '--steps', '2', '--out', str(tmp_path / 'out'), *common]) == ERRORS[ErrorCode.IMAGE_UNREADABLE].exit_status
    restyled, broken = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert 'snow' in restyled['text'].lower() and len(restyled['images']) == 1
    assert Image.open(restyled['images'][0]).size == (96, 64)
    assert broken['error'].startswith('not an image this service reads') and broken['images'] == []


def test_a_job_with_best_of_keeps_clip_s_favourites(front_door):
    import requests

    from front_door import auth, events, submitted

    started = submitted(front_door, prompt='a lighthouse', n=1, best_of=3, size='64x64', steps=2, seed=30)
    assert events(front_door, started['id'])[-1]['kind'] == 'succeeded'
    [image] = requests.get(f'{front_door.api}/jobs/{started["id"]}', headers=auth(), timeout=30).json()['images']
    assert image['parameters']['best_of'] == 3 and image['seed'] in (30, 31, 32)
