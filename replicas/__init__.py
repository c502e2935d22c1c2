"""Local replicas of the topology as systemd-nspawn containers.

Each inventory host becomes a container that boots full systemd and sshd on
its own address of a private bridge, so Ansible reaches it over real SSH the
way it reaches a server. See ``python -m replicas --help``.
"""
