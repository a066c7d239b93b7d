"""The top-level API is exactly DESIGN.md's, and every name resolves."""

import hafen

EXPECTED = {
    "__version__",
    "Dataset",
    "open_dataset",
    "write_dataset",
    "read_ddf",
    "write_ddf",
    "reshuffle",
    "connect",
    "set_limit",
    "remove_limit",
    "lease",
    "limits",
    "drain",
    "extract",
    "load",
}


def test_all_is_the_design_api():
    assert set(hafen.__all__) == EXPECTED


def test_every_name_resolves():
    for name in hafen.__all__:
        assert getattr(hafen, name) is not None, name
