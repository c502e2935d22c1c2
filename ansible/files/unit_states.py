"""Every service this host starts at boot (what multi-user.target pulls in), and the ones not up.

Run on the host by status.yml; prints JSON {"wanted": N, "down": [{"unit", "state"}]}. A service is
up when active, or when it is a one-shot that ran to success, or when a condition of its unit
skipped it on this machine (a container has no consoles to set up, for instance).
"""

import json
import subprocess


def systemctl(*args: str) -> str:
    return subprocess.run(["systemctl", *args], capture_output=True, text=True, check=True).stdout


tree = systemctl("list-dependencies", "--plain", "--no-legend", "--no-pager", "multi-user.target")
units = sorted({line.strip() for line in tree.splitlines() if line.strip().endswith(".service")})
shown = systemctl("show", "--no-pager", "-p", "Id,ActiveState,SubState,Type,Result,ConditionResult", "--", *units)
down = []
for block in shown.strip().split("\n\n"):
    unit = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
    ran = unit.get("Type") == "oneshot" and unit.get("Result") == "success" and unit["ActiveState"] == "inactive"
    skipped = unit.get("ConditionResult") == "no" and unit["ActiveState"] == "inactive"
    if unit["ActiveState"] != "active" and not ran and not skipped:
        down.append({"unit": unit["Id"], "state": f"{unit['ActiveState']} ({unit['SubState']})"})
print(json.dumps({"wanted": len(units), "down": down}))
