import dataclasses

from replicas import base, config


def test_the_base_image_is_named_after_its_recipe(tmp_path):
    cfg = config.from_env({"REPLICAS_CACHE_DIR": str(tmp_path)})
    assert base.base_dir(cfg) == tmp_path / f"base-{base.recipe_id(cfg)}"
    assert base.recipe_id(cfg) == base.recipe_id(config.from_env({"REPLICAS_CACHE_DIR": str(tmp_path)}))


def test_a_changed_recipe_means_a_new_image(tmp_path, monkeypatch):
    cfg = config.from_env({"REPLICAS_CACHE_DIR": str(tmp_path)})
    before = base.recipe_id(cfg)
    assert base.recipe_id(dataclasses.replace(cfg, mirror="http://mirror.example/debian")) != before
    monkeypatch.setattr(base, "PACKAGES", (*base.PACKAGES, "vim-tiny"))
    assert base.recipe_id(cfg) != before


def test_the_recipe_has_what_ansible_and_the_harness_need():
    for package in ("systemd", "dbus", "openssh-server", "python3", "sudo", "ca-certificates", "iproute2"):
        assert package in base.PACKAGES
