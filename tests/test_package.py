import importlib

import lightning_reg


def test_public_api_is_flat_and_importable():
    for name in lightning_reg.__all__:
        assert hasattr(lightning_reg, name), name


def test_py_typed_marker_ships():
    spec = importlib.util.find_spec("lightning_reg")
    from pathlib import Path

    assert (Path(spec.origin).parent / "py.typed").is_file()
