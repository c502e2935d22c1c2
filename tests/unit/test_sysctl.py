"""The kernel settings the harness raises while its stack runs, and puts back on down."""

from replicas import sysctl


def test_a_setting_is_raised_only_when_lower_and_restored_to_what_it_was(tmp_path):
    setting = tmp_path / "max_user_instances"
    setting.write_text("128\n")
    before = sysctl.raise_to(setting, sysctl.inotify_instances_needed(10))
    assert (before, setting.read_text()) == ("128", "288\n")
    assert sysctl.raise_to(setting, 200) == "288"
    assert setting.read_text() == "288\n"
    sysctl.restore(setting, before)
    assert setting.read_text() == "128\n"
    sysctl.restore(setting, None)  # nothing recorded: left alone
    assert setting.read_text() == "128\n"


def test_a_machine_with_a_higher_limit_keeps_it(tmp_path):
    setting = tmp_path / "max_user_instances"
    setting.write_text("8192\n")
    assert sysctl.raise_to(setting, sysctl.inotify_instances_needed(12)) == "8192"
    assert setting.read_text() == "8192\n"


def test_the_values_before_survive_a_second_raise_and_are_put_back_once(tmp_path, monkeypatch):
    forward, inotify = tmp_path / "ip_forward", tmp_path / "max_user_instances"
    forward.write_text("0\n")
    inotify.write_text("128\n")
    monkeypatch.setattr(sysctl, "SETTINGS", {"net.ipv4.ip_forward": forward, "fs.inotify.max_user_instances": inotify})
    record = tmp_path / "sysctl-before.json"
    wanted = {"net.ipv4.ip_forward": 1, "fs.inotify.max_user_instances": 288}
    sysctl.raise_all(record, wanted)
    sysctl.raise_all(record, wanted)  # up again, after its state file was lost: the first values stay
    assert (forward.read_text(), inotify.read_text()) == ("1\n", "288\n")
    sysctl.restore_all(record)
    assert (forward.read_text(), inotify.read_text()) == ("0\n", "128\n")
    assert not record.exists()
    sysctl.restore_all(record)  # down again: nothing recorded, nothing touched
