"""bench.watch_apply's canned API answers: paged as nmi's informer lists, every object delivered once."""

import json
import threading

import pytest

from bench.watch_apply import _canned, _counting, _run_informer, world
from nmi.cache import IdentityIndex
from nmi.kube.projection import project_identity


def test_canned_lists_are_pages_naming_the_next_one():
    items = world(pods=0, identities=30, namespaces=3)["azureidentities"]
    list_call = _canned(items, [], started=[], stop=threading.Event(), list_page=7)
    pages, token = [], ""
    while True:
        pages.append(json.loads(list_call(limit=7, **({"_continue": token} if token else {})).data))
        token = pages[-1]["metadata"].get("continue", "")
        if not token:
            break
    assert [len(page["items"]) for page in pages] == [7, 7, 7, 7, 2]
    assert [item for page in pages for item in page["items"]] == items
    with pytest.raises(AssertionError, match="paged by 7"):
        list_call(limit=500)


async def test_an_informer_lists_every_page_into_its_store():
    items = world(pods=0, identities=30, namespaces=3)["azureidentities"]
    counter: list = [0]
    catalog = IdentityIndex(on_change=_counting(counter))
    result = await _run_informer("azureidentities", project_identity, catalog.identity_store, items, [],
                                 changes_expected=0, counter=counter, list_page=7)
    assert result["objects_listed"] == 30 and len(catalog.identity_store) == 30
    assert {(i.namespace, i.name) for i in catalog.identity_store.all()} == {
        (item["metadata"]["namespace"], item["metadata"]["name"]) for item in items}
