"""`m2f dev` comes from the dev-cluster package through the `m2f.commands` entry point; without it, one line."""

from __future__ import annotations

import importlib.metadata

import m2f_trainer.cli as cli


def test_dev_is_found_through_its_entry_point():
    (entry,) = importlib.metadata.entry_points(group=cli.PLUGIN_GROUP).select(name="dev")
    assert entry.value == "m2f_devcluster.cli"
    assert cli.main(["dev", "status", "--data-dir", "/nonexistent/m2f-dev"]) == 3  # 3: not running


def test_dev_without_the_dev_cluster_says_what_to_install(monkeypatch, capsys):
    monkeypatch.setattr(cli, "entry_points", lambda group: importlib.metadata.EntryPoints(()))
    assert cli.main(["dev", "up"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: `m2f dev` is not installed here; install mask2former-devcluster"]
