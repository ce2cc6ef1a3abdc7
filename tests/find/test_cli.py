"""The command line: errors name what is missing; a config's own settings the finder replaces are said."""

import yaml

from lightning_reg.find.cli import finder_main


def _config(tmp_path, **sections) -> str:
    config = {
        "model": {"class_path": "tests.find.toy.ToyNet"},
        "data": {"class_path": "tests.find.toy.ToyData"},
        "trainer": {"accelerator": "cpu", "max_epochs": 2},
    }
    config.update(sections)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_a_metric_without_its_mode_is_refused(tmp_path, capsys) -> None:
    assert finder_main(["--config", _config(tmp_path), "--metric", "val_acc", "--out", "null"]) == 2
    assert "`mode` is required with metric='val_acc'" in capsys.readouterr().err


def test_a_data_section_without_class_path_is_an_error_naming_it(tmp_path, capsys) -> None:
    assert finder_main(["--config", _config(tmp_path, data={"init_args": {"n_train": 10}})]) == 2
    assert "The finder needs data.class_path" in capsys.readouterr().err


def test_a_run_without_a_known_length_is_refused(tmp_path, capsys) -> None:
    config = _config(tmp_path, trainer={"accelerator": "cpu", "max_epochs": -1})
    assert finder_main(["--config", config, "--out", "null"]) == 2
    assert "must set `max_epochs` (or `max_steps`)" in capsys.readouterr().err


def test_a_search_space_from_the_command_line(tmp_path, capsys) -> None:
    args = ["--config", _config(tmp_path), "--budget", "2", "--space.presets", "[mild, medium, strong]"]
    assert finder_main([*args, "--space.weight_decay", "[0.5, 0.1]"]) == 2
    assert "low <= high" in capsys.readouterr().err
    assert finder_main([*args, "--out", "null"]) == 2  # 3 presets need a budget of 4
    assert "`budget` must be at least 4 full runs" in capsys.readouterr().err
